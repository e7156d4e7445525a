"""QEMU migration TLS for lab hosts: one CA per lab (kept in <cache>/lab/tls, reused across runs)
and, per host, the server and client certificates libvirt hands to QEMU for `virsh migrate --tls`
(memory and, with --copy-storage-all, the NBD disk copy)."""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vemigrate.devenv.lab.state import HostState, lab_dir

# Where a host's files appear inside its mount namespace: <host dir>/etc is bound on /etc/libvirt.
# A path inside the host (not the cache path) is what the operator's host probe reads from qemu.conf.
CERT_DIR = "/etc/libvirt/pki/qemu"
_CERT_SUBDIR = Path("etc/pki/qemu")
_VALID = datetime.timedelta(days=3650)
# Clock skew is impossible here (one machine), but QEMU rejects a certificate "not yet active".
_BACKDATE = datetime.timedelta(hours=1)


def ca_dir() -> Path:
    return lab_dir() / "tls"


def host_cert_dir(host: HostState) -> Path:
    """The host's certificate directory as seen from the root namespace."""
    return host.dir / _CERT_SUBDIR


def _new_key() -> ec.EllipticCurvePrivateKey:
    # P-256 rather than RSA: generated in milliseconds, and GnuTLS (QEMU) accepts it.
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    # Created 0600 from the start, never briefly readable by others. QEMU reads it unencrypted.
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.chmod(0o644)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vemigrate lab"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def ensure_ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The lab's CA, created on first use and kept (like the lab's SSH key) so hosts of every run
    trust each other; it lives in the cache, never in the repository."""
    d = ca_dir()
    cert_path, key_path = d / "ca-cert.pem", d / "ca-key.pem"
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        now = datetime.datetime.now(datetime.UTC)
        if isinstance(key, ec.EllipticCurvePrivateKey) and cert.not_valid_after_utc - now > datetime.timedelta(days=30):
            return cert, key
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    d.chmod(0o700)
    key = _new_key()
    now = datetime.datetime.now(datetime.UTC)
    name = _name("vemigrate lab CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALID)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    return cert, key


def _leaf(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], host: HostState, purpose: x509.ObjectIdentifier
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert, ca_key = ca
    key = _new_key()
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(host.name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALID)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # QEMU insists on both bits when key usage is critical, whatever the key type.
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
        # The source's QEMU checks the target's certificate against the address in the migration
        # URI (qemu.conf migration_host is the host's IP); the name covers `virsh ... --tls-destination`.
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host.address)), x509.DNSName(host.name)]),
            critical=False,
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def write_host_certs(host: HostState) -> Path:
    """ca-cert.pem, server-cert/key.pem (target side) and client-cert/key.pem (source side) for
    one host, in the directory its qemu.conf names; returns that directory (root-namespace path)."""
    ca = ensure_ca()
    d = host_cert_dir(host)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_cert(d / "ca-cert.pem", ca[0])
    for role, purpose in (("server", ExtendedKeyUsageOID.SERVER_AUTH), ("client", ExtendedKeyUsageOID.CLIENT_AUTH)):
        cert, key = _leaf(ca, host, purpose)
        _write_key(d / f"{role}-key.pem", key)
        _write_cert(d / f"{role}-cert.pem", cert)
    return d
