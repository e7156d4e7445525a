"""A VM with storage the copy cannot move is refused before anything moves, against the real lab
hosts: the MovableStorage check names what would be left behind, and the VM stays exactly as it was
(its definition, and its disk byte for byte)."""

from __future__ import annotations

from collections.abc import Callable

import libvirt

from tests.fixtures.operator import Migrations
from tests.lab.evidence import domain
from vemigrate_dev.lab import Lab, LabInfo, VMState

_BLOCK_DISK = (
    "<disk type='block' device='disk'><driver name='qemu' type='raw'/>"
    "<source dev='/dev/vemigrate-no-such-disk'/><target dev='vdb' bus='virtio'/></disk>"
)
_INACTIVE = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE


def _disk_md5(host: str, path: str) -> str:
    out = Lab.exec(host, ["md5sum", path], capture=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()[0]


def _inactive_xml(hosts: LabInfo, host: str, name: str) -> str:
    conn = hosts.host(host).connect()
    try:
        return str(conn.lookupByName(name).XMLDesc(_INACTIVE))
    finally:
        conn.close()


def test_a_block_disk_the_copy_cannot_move_is_refused_and_nothing_changes(
    hosts: LabInfo, migrations: Migrations, vm_cleanup: Callable[[str], str]
) -> None:
    """The copy moves file disks only: a VM with a second disk on a block device would arrive without
    it, so MovableStorage refuses it by name, and neither host changes."""
    name = vm_cleanup("blockdisk1")
    vm = Lab.create_vm("lab1", name, state=VMState.STOPPED)
    conn = hosts.host("lab1").connect()
    try:
        xml = conn.lookupByName(name).XMLDesc(_INACTIVE)
        conn.defineXML(xml.replace("</devices>", f"{_BLOCK_DISK}</devices>", 1))  # not opened while stopped
    finally:
        conn.close()
    before = _inactive_xml(hosts, "lab1", name)
    assert "vemigrate-no-such-disk" in before
    disk_before = _disk_md5("lab1", vm.disk)

    migrations.create(name, {"source": {"host": "lab1", "name": name}, "target": {"host": "lab2"}})
    status = migrations.wait_phase(name, "Failed", "Succeeded", "Cancelled", timeout=120)["status"]
    assert status["phase"] == "Failed" and status["failure"]["reason"] == "PreflightFailed", status
    failed = {c["name"]: c["message"] for c in status["checks"] if c["result"] == "Failed"}
    assert list(failed) == ["MovableStorage"], failed
    assert "vdb: block device /dev/vemigrate-no-such-disk" in failed["MovableStorage"], failed
    assert "MovableStorage" in status["failure"]["message"], status["failure"]

    assert _inactive_xml(hosts, "lab1", name) == before, "the source domain is unchanged"
    assert _disk_md5("lab1", vm.disk) == disk_before, "the source disk is unchanged, byte for byte"
    assert domain(hosts, "lab2", name) is None, "nothing was made on the target"
