"""Where a live migration puts a running VM's disks, through the operator on real libvirt lab hosts:
with spec.target.path in `<path>/<UUID>/vda.qcow2`; on storage both hosts share (the lab's shared
directory, bound at the same path in every host, as NFS would be) nowhere: the target runs from the
very same file, which no rollback or disposal removes; and target.path with shared storage is refused
before anything moves."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import libvirt

from tests.fixtures.operator import Migrations
from tests.lab.evidence import beating_on, domain, first_beat
from vemigrate.drivers.hostjob import JOBS_DIR
from vemigrate_dev.lab import Lab, LabInfo, VMState
from vemigrate_dev.lab.guest import DISK_EVERY
from vemigrate_dev.lab.host import POOL_PATH

Cleanup = Callable[[str], str]
LIVE_PATH = "/var/lib/libvirt/ves-live"


def _run(host: str, script: str, *args: str) -> str:
    out = Lab.exec(host, ["sh", "-c", script, "sh", *args], capture=True)
    assert out.returncode == 0, out.stderr
    return str(out.stdout)


def _exists(host: str, path: str) -> bool:
    return Lab.exec(host, ["test", "-e", path]).returncode == 0


def _identity(host: str, path: str) -> str:
    """Device, inode and birth time: the same file, not a copy of it."""
    return _run(host, 'stat -c %d:%i:%W -- "$1"', path).strip()


def _checks(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in status["checks"]}


def _disk_reads_payload(host: str, name: str, payload_md5: str) -> None:
    """The guest reads its disk again (caches dropped) on `host` after now, and finds its payload."""
    seen = len(Lab.heartbeats(host, name).disk_md5s)
    deadline = time.monotonic() + DISK_EVERY * 6 + 30
    while len(Lab.heartbeats(host, name).disk_md5s) <= seen:
        assert time.monotonic() < deadline, f"{name} did not read its disk on {host}"
        time.sleep(1)
    assert Lab.heartbeats(host, name).disk_md5s[-1] == payload_md5, "the guest's payload is intact"


def _source_disk(hosts: LabInfo, host: str, name: str) -> str:
    dom = domain(hosts, host, name)
    assert dom is not None
    return str(dom.XMLDesc(0).split("<source file='", 1)[1].split("'", 1)[0])


def test_a_running_vm_lands_in_target_path_uuid(hosts: LabInfo, migrations: Migrations, vm_cleanup: Cleanup) -> None:
    name = vm_cleanup("livepath1")
    vm = Lab.create_vm("lab1", name, state=VMState.RUNNING)
    directory = f"{LIVE_PATH}/{vm.uuid}"
    try:
        boot, counter = first_beat("lab1", name)
        spec = {"source": {"host": "lab1", "name": name}, "target": {"host": "lab2", "path": LIVE_PATH}}
        uid = migrations.create(name, spec)["metadata"]["uid"]
        status = migrations.wait_phase(name, "Succeeded", "Failed", timeout=300)["status"]
        assert status["phase"] == "Succeeded", status
        assert status["mode"] == "Live"

        moved = domain(hosts, "lab2", name)
        assert moved is not None and moved.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert _source_disk(hosts, "lab2", name) == f"{directory}/vda.qcow2", "the running definition"
        inactive = moved.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        assert f"<source file='{directory}/vda.qcow2'/>" in inactive, "and the persistent one"
        assert moved.isPersistent()
        # The same guest runs on from the new file: same boot, counter growing, its payload read back.
        assert beating_on("lab2", name, boot) > counter
        _disk_reads_payload("lab2", name, vm.payload_md5)
        assert _exists("lab2", f"{directory}/vda.qcow2")
        assert not _exists("lab2", vm.disk), "nothing at the source's path on the target"
        assert _run("lab2", 'ls -A -- "$1"', directory).split() == ["vda.qcow2"], "no temporary file left"
        assert not _exists("lab2", f"{JOBS_DIR}/{uid}"), "the job's record is gone with the job"
        assert domain(hosts, "lab1", name) is None and not _exists("lab1", vm.disk), "the source is removed"

        checks = _checks(status)
        assert LIVE_PATH in checks["TargetDiskSpace"]["message"], checks["TargetDiskSpace"]
        assert f"copied into {directory}/" in checks["SharedStorage"]["message"], checks["SharedStorage"]
    finally:
        Lab.remove_vm("lab2", name)
        _run("lab2", 'rm -rf -- "$1"', directory)


def test_a_running_vm_on_shared_storage_moves_without_its_disk_being_copied(
    hosts: LabInfo, migrations: Migrations, vm_cleanup: Cleanup
) -> None:
    shared = Lab.shared_storage()
    name = vm_cleanup("shared1")
    vm = Lab.create_vm("lab1", name, state=VMState.RUNNING, disk_dir=shared)
    try:
        assert _identity("lab1", vm.disk) == _identity("lab2", vm.disk), "the lab's shared directory"
        before = _identity("lab1", vm.disk)
        boot, counter = first_beat("lab1", name)
        spec = {"source": {"host": "lab1", "name": name}, "target": {"host": "lab2"}}
        migrations.create(name, spec)
        status = migrations.wait_phase(name, "Succeeded", "Failed", timeout=300)["status"]
        assert status["phase"] == "Succeeded", status
        checks = _checks(status)
        assert checks["SharedStorage"]["result"] == "Passed"
        assert f"{vm.disk} of VM {name!r} is on storage both hosts share" in checks["SharedStorage"]["message"]

        moved = domain(hosts, "lab2", name)
        assert moved is not None and moved.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert _source_disk(hosts, "lab2", name) == vm.disk
        assert beating_on("lab2", name, boot) > counter
        # Not a copy: the very file, still there after the source was disposed of, and read intact.
        assert domain(hosts, "lab1", name) is None, "the source is removed"
        assert _identity("lab2", vm.disk) == before
        _disk_reads_payload("lab2", name, vm.payload_md5)
        assert not [f for f in _run("lab2", 'ls -A -- "$1"', shared).split() if f.startswith(".vemigrate")]
    finally:
        Lab.remove_vm("lab2", name)
        _run("lab2", 'rm -f -- "$1"', vm.disk)


def test_a_shared_disk_survives_a_rollback(hosts: LabInfo, migrations: Migrations, vm_cleanup: Cleanup) -> None:
    """The migration fails after its job started (the completion deadline passes on a copy held to
    1 MiB/s): the rollback removes nothing of the disk both hosts share, and the guest runs on."""
    shared = Lab.shared_storage()
    name = vm_cleanup("shared2")
    vm = Lab.create_vm("lab1", name, state=VMState.RUNNING, disk_dir=shared)
    try:
        before = _identity("lab1", vm.disk)
        boot, counter = first_beat("lab1", name)
        spec = {
            "source": {"host": "lab1", "name": name},
            "target": {"host": "lab2"},
            "tunnel": False,
            "bandwidthMiBps": 1,
            "timeouts": {"completionPerGiBSeconds": 10},
        }
        migrations.create(name, spec)
        status = migrations.wait_phase(name, "Failed", "Succeeded", "Cancelled", timeout=240)["status"]
        assert status["phase"] == "Failed", status
        assert status["failure"]["reason"] == "CompletionTimeout", status["failure"]
        phases = [t["phase"] for t in status["phaseTransitions"]]
        assert "Transferring" in phases and "RollingBack" in phases, phases
        assert _identity("lab1", vm.disk) == _identity("lab2", vm.disk) == before, "the same file, kept"
        assert beating_on("lab1", name, boot) > counter, "the same guest runs on, on the source"
        _disk_reads_payload("lab1", name, vm.payload_md5)
        assert domain(hosts, "lab1", name).state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert domain(hosts, "lab2", name) is None, "nothing left on the target"
    finally:
        Lab.remove_vm("lab1", name)
        _run("lab1", 'rm -f -- "$1"', vm.disk)


def test_target_path_with_shared_storage_is_refused_before_anything_moves(
    hosts: LabInfo, migrations: Migrations, vm_cleanup: Cleanup
) -> None:
    shared = Lab.shared_storage()
    name = vm_cleanup("shared3")
    vm = Lab.create_vm("lab1", name, state=VMState.RUNNING, disk_dir=shared)
    try:
        before = _identity("lab1", vm.disk)
        spec = {"source": {"host": "lab1", "name": name}, "target": {"host": "lab2", "path": LIVE_PATH}}
        uid = migrations.create(name, spec)["metadata"]["uid"]
        status = migrations.wait_phase(name, "Failed", "Succeeded", timeout=180)["status"]
        assert status["phase"] == "Failed", status
        assert status["failure"]["reason"] == "PreflightFailed", status["failure"]
        check = _checks(status)["SharedStorage"]
        assert check["result"] == "Failed" and "spec.target.path" in check["message"], check
        assert vm.disk in check["message"]
        assert "Transferring" not in [t["phase"] for t in status["phaseTransitions"]], "no job ran"
        assert not _exists("lab1", f"{JOBS_DIR}/{uid}") and not _exists("lab2", f"{JOBS_DIR}/{uid}")
        assert not _exists("lab2", f"{LIVE_PATH}/{vm.uuid}"), "nothing made on the target"
        assert _identity("lab1", vm.disk) == before
        assert domain(hosts, "lab1", name).state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert domain(hosts, "lab2", name) is None
        assert not _exists("lab2", f"{POOL_PATH}/{name}.qcow2")
    finally:
        Lab.remove_vm("lab1", name)
        _run("lab1", 'rm -f -- "$1"', vm.disk)
