"""How to reach one host: the HypervisorHost spec with its Secrets resolved. Plain data."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class HostAccess:
    name: str  # the HypervisorHost's name
    namespace: str
    address: str
    port: int = 22
    user: str = "root"
    driver: str = "libvirt"
    private_key: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    known_hosts: str = field(default="", repr=False)  # known_hosts lines; never empty when connecting
    # Where the credentials and known_hosts came from ("Secret ns/name key k", "spec.hostKey"): what a
    # message names instead of quoting the text, which may be any Secret's.
    credentials_origin: str = ""
    known_hosts_origin: str = ""
    libvirt_uri: str | None = None
    migration_address: str | None = None
    max_inbound: int = 2
    max_outbound: int = 2
    version: str = ""  # changes whenever the host or its Secrets change: cached connections are renewed

    @property
    def data_address(self) -> str:
        """Where migration data for this host goes."""
        return self.migration_address or self.address
