"""QEMU migration TLS for lab hosts: one CA per lab (kept in <cache>/lab/tls, reused across runs)
and, per host, the server and client certificates libvirt hands to QEMU for `virsh migrate --tls`
(memory and, with --copy-storage-all, the NBD disk copy)."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from vemigrate_dev import pki
from vemigrate_dev.lab.state import HostState, lab_dir

# Where a host's files appear inside its mount namespace: <host dir>/etc is bound on /etc/libvirt.
# A path inside the host (not the cache path) is what the operator's host probe reads from qemu.conf.
CERT_DIR = "/etc/libvirt/pki/qemu"
_CERT_SUBDIR = Path("etc/pki/qemu")
_VALID = datetime.timedelta(days=3650)
# Clock skew is impossible here (one machine), but QEMU rejects a certificate "not yet active".
_BACKDATE = datetime.timedelta(hours=1)
_ORG = "vemigrate lab"


def ca_dir() -> Path:
    return lab_dir() / "tls"


def host_cert_dir(host: HostState) -> Path:
    """The host's certificate directory as seen from the root namespace."""
    return host.dir / _CERT_SUBDIR


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
    key = pki.new_key()
    name = pki.name("vemigrate lab CA", _ORG, organization_first=True)
    # Signs certificates only (no digital signature bit), and no intermediate CAs below it.
    cert = pki.issue(
        name,
        key,
        name,
        key,
        ca=True,
        path_length=0,
        digital_signature=False,
        extensions=[x509.SubjectKeyIdentifier.from_public_key(key.public_key())],
        validity=_VALID,
        backdate=_BACKDATE,
    )
    pki.write_key(key_path, key)
    pki.write_cert(cert_path, cert)
    return cert, key


def _leaf(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], host: HostState, purpose: x509.ObjectIdentifier
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert, ca_key = ca
    key = pki.new_key()
    cert = pki.issue(
        pki.name(host.name, _ORG, organization_first=True),
        key,
        ca_cert.subject,
        ca_key,
        usage=purpose,
        # The source's QEMU checks the target's certificate against the address in the migration
        # URI (qemu.conf migration_host is the host's IP); the name covers `virsh ... --tls-destination`.
        sans=[x509.IPAddress(ipaddress.ip_address(host.address)), x509.DNSName(host.name)],
        extensions=[x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())],
        validity=_VALID,
        backdate=_BACKDATE,
    )
    return cert, key


def write_host_certs(host: HostState) -> Path:
    """ca-cert.pem, server-cert/key.pem (target side) and client-cert/key.pem (source side) for
    one host, in the directory its qemu.conf names; returns that directory (root-namespace path)."""
    ca = ensure_ca()
    d = host_cert_dir(host)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    pki.write_cert(d / "ca-cert.pem", ca[0])
    for role, purpose in (("server", ExtendedKeyUsageOID.SERVER_AUTH), ("client", ExtendedKeyUsageOID.CLIENT_AUTH)):
        cert, key = _leaf(ca, host, purpose)
        pki.write_key(d / f"{role}-key.pem", key)
        pki.write_cert(d / f"{role}-cert.pem", cert)
    return d
