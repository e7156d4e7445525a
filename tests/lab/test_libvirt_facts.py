"""What the libvirt driver reads of a VE while libvirt migrates it: plain libvirt-python against lab
hosts, the migration started by hand as `virsh migrate` would, no operator involved."""

from __future__ import annotations

import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable

import libvirt

from tests.lab.test_migration import LIVE_FLAGS
from vemigrate.drivers.libvirt.facts import _disk_bytes, _disks
from vemigrate_dev.lab import Lab, LabInfo, VMState


def test_disk_sizes_are_read_without_waiting_on_a_migration_job(lab: LabInfo, vm_cleanup: Callable[[str], str]) -> None:
    """Mid-migration, the target's incoming domain holds libvirt's state change lock: `blockInfo` on it
    waits 30 s and then fails ("cannot acquire state change lock"), and every pass of the migration
    with it. The sizes come from the block stats read without waiting: the allocated size `blockInfo`
    reports of an idle domain, and unknown (None) of the incoming one at once, not 0 after 30 s."""
    src, dst = lab.hosts[0], lab.hosts[1]
    name = vm_cleanup("facts-busy")
    Lab.create_vm(src.name, name, state=VMState.RUNNING, dirty_mib=1)
    idle = vm_cleanup("facts-idle")
    Lab.create_vm(src.name, idle, state=VMState.STOPPED)
    sconn, dconn = libvirt.open(src.uri), libvirt.open(dst.uri)
    failed: list[libvirt.libvirtError] = []
    try:
        dom = sconn.lookupByName(name)
        paths = [d.path for d in _disks(ET.fromstring(dom.XMLDesc(0)))]
        assert paths, "the guest has a local disk"
        # Not migrating, they are known: for a stopped VE exactly what blockInfo says; for a running one
        # QEMU's figure, which follows the guest's writes.
        stopped = sconn.lookupByName(idle)
        idle_paths = [d.path for d in _disks(ET.fromstring(stopped.XMLDesc(0)))]
        assert _disk_bytes(sconn, stopped, idle_paths) == sum(stopped.blockInfo(p)[2] for p in idle_paths)
        assert (_disk_bytes(sconn, dom, paths) or 0) > 0

        def migrate() -> None:  # about a minute at 4 MiB/s: aborted below, long before it ends
            try:
                dom.migrateToURI3(dst.ssh_uri, {libvirt.VIR_MIGRATE_PARAM_BANDWIDTH: 4}, LIVE_FLAGS)
            except libvirt.libvirtError as exc:
                failed.append(exc)

        mover = threading.Thread(target=migrate, name="migrate", daemon=True)
        mover.start()
        incoming = _incoming(dconn, name)
        assert incoming.state() == [libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_MIGRATION]

        assert _disk_bytes(dconn, incoming, paths) is None, "the target cannot say without waiting"
        assert incoming.state()[1] == libvirt.VIR_DOMAIN_PAUSED_MIGRATION, "read while it was still migrating"

        dom.abortJob()
        mover.join(60)
        assert not mover.is_alive() and failed, "the aborted migration returned an error"
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING, "the guest runs on where it was"
    finally:
        sconn.close()
        dconn.close()


def _incoming(conn: libvirt.virConnect, name: str, timeout: float = 60) -> libvirt.virDomain:
    """The domain libvirt creates on the target for an incoming migration, once it is there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            dom = conn.lookupByName(name)
            if dom.state()[1] == libvirt.VIR_DOMAIN_PAUSED_MIGRATION:
                return dom
        except libvirt.libvirtError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"no incoming domain {name} on the target in {timeout:.0f} s")
