"""Keys and X.509 certificates for the local environment: the control plane's CA and client/serving
certificates and the lab's QEMU migration TLS. Throwaway PKI for this machine, never production's."""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def new_key() -> ec.EllipticCurvePrivateKey:
    # P-256 rather than RSA: generated in milliseconds, and both Go (kube-apiserver) and GnuTLS
    # (QEMU) accept it.
    return ec.generate_private_key(ec.SECP256R1())


def name(common_name: str, organization: str | None = None, *, organization_first: bool = False) -> x509.Name:
    """CN, then O if given (kube-apiserver reads O as the group); `organization_first` keeps the
    lab's certificates as they have always been issued (O, then CN)."""
    cn = x509.NameAttribute(NameOID.COMMON_NAME, common_name)
    if not organization:
        return x509.Name([cn])
    o = x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)
    return x509.Name([o, cn] if organization_first else [cn, o])


def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    # Created 0600 from the start, never briefly readable by others. Unencrypted: kube-apiserver
    # and QEMU read it without a passphrase.
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.chmod(0o644)  # public, and readable whatever the umask


def issue(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    validity: datetime.timedelta,
    backdate: datetime.timedelta,
    ca: bool = False,
    path_length: int | None = None,
    digital_signature: bool = True,
    usage: x509.ObjectIdentifier | None = None,
    sans: Sequence[x509.GeneralName] = (),
    extensions: Sequence[x509.ExtensionType] = (),
) -> x509.Certificate:
    """A certificate for `key`, signed by `issuer_key` (the same key for a self-signed CA), valid
    from `backdate` ago for `validity`. A CA may sign certificates and CRLs; a leaf may sign and
    encipher keys (QEMU insists on both bits when key usage is critical, whatever the key type).
    `usage` is the leaf's one extended key usage; `extensions` are appended, non-critical."""
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - backdate)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=digital_signature,
                content_commitment=False,
                key_encipherment=not ca,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())
