"""The control plane's keys and certificates: a CA, the apiserver's serving certificate, an admin
client certificate (group system:masters) and the service-account signing key. Generated per `up`
into the state directory in the cache; never into the repository."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from vemigrate_dev import pki

# Long enough that a forgotten dev control plane never expires under someone; short enough to be a
# throwaway. The state is regenerated on every `up` anyway.
_VALIDITY = datetime.timedelta(days=30)
_BACKDATE = datetime.timedelta(minutes=5)  # tolerate small clock skew


@dataclass(frozen=True)
class Pki:
    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def serving_cert(self) -> Path:
        return self.directory / "apiserver.crt"

    @property
    def serving_key(self) -> Path:
        return self.directory / "apiserver.key"

    @property
    def admin_cert(self) -> Path:
        return self.directory / "admin.crt"

    @property
    def admin_key(self) -> Path:
        return self.directory / "admin.key"

    @property
    def service_account_key(self) -> Path:
        return self.directory / "sa.key"

    @property
    def service_account_public_key(self) -> Path:
        return self.directory / "sa.pub"


def generate(directory: Path) -> Pki:
    """Write a fresh CA, serving and admin certificates and the service-account key pair."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    paths = Pki(directory)

    ca_key = pki.new_key()
    ca_name = pki.name("vemigrate-controlplane-ca")
    pki.write_key(paths.ca_key, ca_key)
    ca_cert = pki.issue(ca_name, ca_key, ca_name, ca_key, ca=True, validity=_VALIDITY, backdate=_BACKDATE)
    pki.write_cert(paths.ca_cert, ca_cert)

    serving_key = pki.new_key()
    sans: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.DNSName("localhost"),
        # In-cluster names, so a client that follows the `kubernetes` Service's name still verifies.
        x509.DNSName("kubernetes"),
        x509.DNSName("kubernetes.default"),
        x509.DNSName("kubernetes.default.svc"),
        # The `kubernetes` Service's ClusterIP: a Pod on the node reaches the apiserver there.
        x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
    ]
    serving = pki.issue(
        pki.name("kube-apiserver"),
        serving_key,
        ca_name,
        ca_key,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        sans=sans,
        validity=_VALIDITY,
        backdate=_BACKDATE,
    )
    pki.write_key(paths.serving_key, serving_key)
    pki.write_cert(paths.serving_cert, serving)

    admin_key = pki.new_key()
    # system:masters is bound to cluster-admin by the apiserver's bootstrap RBAC policy.
    admin = pki.issue(
        pki.name("vemigrate-admin", "system:masters"),
        admin_key,
        ca_name,
        ca_key,
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        validity=_VALIDITY,
        backdate=_BACKDATE,
    )
    pki.write_key(paths.admin_key, admin_key)
    pki.write_cert(paths.admin_cert, admin)

    sa_key = pki.new_key()
    pki.write_key(paths.service_account_key, sa_key)
    paths.service_account_public_key.write_bytes(
        sa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return paths
