"""Which driver serves a host: `spec.driver` of its HypervisorHost."""

from __future__ import annotations

from vemigrate.core.access import HostAccess
from vemigrate.drivers.libvirt import LibvirtDriver
from vemigrate.drivers.prlctl import PrlctlDriver
from vemigrate.drivers.protocol import HypervisorDriver
from vemigrate.drivers.unavailable import UnavailableDriver


def driver_for(access: HostAccess) -> HypervisorDriver:
    if access.driver == "libvirt":
        return LibvirtDriver(access)
    if access.driver == "prlctl":
        return PrlctlDriver(access)
    return UnavailableDriver(access, f"no driver named {access.driver!r} in this build of ve-migrate")
