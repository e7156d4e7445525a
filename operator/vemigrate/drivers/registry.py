"""Which driver serves a host: `spec.driver` of its HypervisorHost."""

from __future__ import annotations

from vemigrate.core.access import HostAccess
from vemigrate.drivers.prlctl import PrlctlDriver
from vemigrate.drivers.protocol import HypervisorDriver
from vemigrate.drivers.unavailable import UnavailableDriver

# libvirt-python is the `libvirt` extra (the image has it): an installation for prlctl hosts only
# needs neither it nor libvirt's headers to build it.
LIBVIRT_MISSING = (
    "driver libvirt needs libvirt-python, which is not installed with this ve-migrate "
    "(pip install 've-migrate[libvirt]'; the operator's image has it)"
)


def driver_for(access: HostAccess) -> HypervisorDriver:
    if access.driver == "libvirt":
        try:
            from vemigrate.drivers.libvirt import LibvirtDriver
        except ModuleNotFoundError as exc:
            if exc.name != "libvirt":
                raise
            return UnavailableDriver(access, LIBVIRT_MISSING)
        return LibvirtDriver(access)
    if access.driver == "prlctl":
        return PrlctlDriver(access)
    return UnavailableDriver(access, f"no driver named {access.driver!r} in this build of ve-migrate")
