"""The operator's scenarios on real lab hosts: offline to a path, suspended, clone, cancel, delete,
restart, GitOps re-apply. Each asserts from outside: libvirt on both hosts, disk checksums, the
guest's own heartbeat and disk reports, and the object's status."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import libvirt
import pytest

from tests.fixtures.operator import Migrations, OperatorProcess
from tests.lab.evidence import beating_on, domain, first_beat, handshakes
from vemigrate_dev.lab import Lab, LabInfo, VMState

Cleanup = Callable[[str], str]


def _md5(host: str, path: str) -> str:
    out = Lab.exec(host, ["md5sum", path], capture=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()[0]


def _disk_path(lab: LabInfo, host: str, name: str) -> str:
    dom = domain(lab, host, name)
    assert dom is not None, f"{name} is not on {host}"
    xml = dom.XMLDesc(0)
    start = xml.index("<source file='") + len("<source file='")
    return str(xml[start : xml.index("'", start)])


def _spec(name: str, **extra: Any) -> dict[str, Any]:
    return {"source": {"host": "lab1", "name": name}, "target": {"host": "lab2"}, **extra}


def _nothing_on_target(lab: LabInfo, name: str, disk: str) -> None:
    assert domain(lab, "lab2", name) is None, "no domain left on the target"
    assert Lab.exec("lab2", ["test", "-e", disk]).returncode != 0, f"no disk left on the target: {disk}"


def test_offline_migration_of_a_stopped_vm_to_a_custom_path(
    hosts: LabInfo, migrations: Migrations, vm_cleanup: Cleanup
) -> None:
    vm = Lab.create_vm("lab1", vm_cleanup("off1"), state=VMState.STOPPED)
    disk = _disk_path(hosts, "lab1", "off1")
    before = _md5("lab1", disk)
    # A second disk of 24 MiB that does not compress, and the copy capped at 2 MiB/s: 12 s at least.
    data = "/var/lib/libvirt/images/off1-data.raw"
    make = 'head -c 24M /dev/urandom >"$2" && virsh -q -c qemu:///system attach-disk "$1" "$2" vdb --config'
    assert Lab.exec("lab1", ["sh", "-c", make + " --driver qemu --subdriver raw", "sh", "off1", data]).returncode == 0
    data_md5 = _md5("lab1", data)
    cap = {"bandwidthMiBps": 2}
    logins = handshakes(hosts, "lab1", "lab2")
    migrations.create("off1", _spec("off1", target={"host": "lab2", "path": "/var/lib/libvirt/custom"}, **cap))
    status = migrations.wait_phase("off1", "Succeeded", "Failed", timeout=300)["status"]
    assert status["phase"] == "Succeeded", status
    # From the source to the target: one connection, made by Validating's reach check, for its storage
    # probe, the job's directory, two disks, their names, the define and the record's removal.
    assert handshakes(hosts, "lab1", "lab2") - logins == 1
    assert status["mode"] == "Offline"
    # How long the data disk took to arrive: from its file's birth on the target to its last write.
    copy = f"/var/lib/libvirt/custom/{vm.uuid}/vdb.raw"
    born, written = map(float, Lab.exec("lab2", ["stat", "-c", "%.9W %.9Y", copy], capture=True).stdout.split())
    # A floor, not a speed goal: the copy may be slower than the cap, never faster.
    assert born > 0 and written - born >= 11, f"24 MiB at 2 MiB/s in {written - born:.1f} s"
    assert _md5("lab2", copy) == data_md5
    moved = _disk_path(hosts, "lab2", "off1")
    assert moved == f"/var/lib/libvirt/custom/{vm.uuid}/vda.qcow2", "lands in <path>/<VE_UUID>/<device>.<format>"
    assert _md5("lab2", moved) == before, "the disk arrived bit for bit"
    assert domain(hosts, "lab1", "off1") is None
    assert Lab.exec("lab1", ["test", "-e", disk]).returncode != 0, "the source disk is removed after verification"
    # The guest boots on the target and reads its disk payload intact.
    dom = domain(hosts, "lab2", "off1")
    dom.create()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not Lab.heartbeats("lab2", "off1").disk_md5s:
        time.sleep(1)
    assert Lab.heartbeats("lab2", "off1").disk_md5s[-1] == vm.payload_md5


def test_offline_migration_of_a_suspended_vm_keeps_its_memory(
    hosts: LabInfo, migrations: Migrations, vm_cleanup: Cleanup
) -> None:
    Lab.create_vm("lab1", vm_cleanup("susp1"), state=VMState.RUNNING)
    boot, _ = first_beat("lab1", "susp1")
    assert domain(hosts, "lab1", "susp1").managedSave(0) == 0
    migrations.create("susp1", _spec("susp1", target={"host": "lab2", "path": "/var/lib/libvirt/suspended"}))
    status = migrations.wait_phase("susp1", "Succeeded", "Failed", timeout=300)["status"]
    assert status["phase"] == "Succeeded", status
    assert status["mode"] == "Offline"
    assert _disk_path(hosts, "lab2", "susp1").startswith("/var/lib/libvirt/suspended/")
    target = domain(hosts, "lab2", "susp1")
    assert target.hasManagedSaveImage(0) == 1, "still suspended on the target"
    target.create()  # resumes from the saved memory: the same boot, not a new one
    assert beating_on("lab2", "susp1", boot, timeout=90) > 0


def test_clone_keeps_the_source_and_gets_a_new_identity(
    hosts: LabInfo, migrations: Migrations, vm_cleanup: Cleanup
) -> None:
    vm = Lab.create_vm("lab1", vm_cleanup("cln1"), state=VMState.STOPPED)
    source_xml = domain(hosts, "lab1", "cln1").XMLDesc(0)
    migrations.create("cln1", _spec("cln1", clone=True))
    status = migrations.wait_phase("cln1", "Succeeded", "Failed", timeout=300)["status"]
    assert status["phase"] == "Succeeded", status
    assert status["result"]["sourceDisposition"] == "Kept"
    clone = domain(hosts, "lab2", "cln1")
    assert domain(hosts, "lab1", "cln1") is not None, "the source is kept"
    assert clone.UUIDString() != vm.uuid and status["result"]["targetUUID"] == clone.UUIDString()
    source_mac = source_xml.split("<mac address='")[1].split("'")[0]
    assert source_mac not in clone.XMLDesc(0), "the clone gets a new MAC address"


def _slow_live(name: str) -> dict[str, Any]:
    # 1 MiB/s while the guest dirties 4 MiB/s: this migration never converges on its own.
    return _spec(name, tunnel=False, bandwidthMiBps=1)


def _transferring(migrations: Migrations, name: str) -> None:
    migrations.wait(
        name,
        lambda b: (
            (b.get("status") or {}).get("phase") == "Transferring"
            and ((b["status"].get("progress") or {}).get("bytesProcessed") or 0) > 0
        ),
        timeout=120,
    )


@pytest.mark.parametrize("how", ["cancel", "delete"])
def test_cancel_or_delete_mid_transfer_leaves_the_guest_on_the_source(
    how: str, hosts: LabInfo, migrations: Migrations, operator: OperatorProcess, vm_cleanup: Cleanup
) -> None:
    cancelled = operator.metric("vemigrate_migrations_total", result="Cancelled")
    name = vm_cleanup(f"stop-{how}")
    Lab.create_vm("lab1", name, state=VMState.RUNNING)
    boot, counter = first_beat("lab1", name)
    disk = _disk_path(hosts, "lab1", name)
    migrations.create(name, _slow_live(name))
    _transferring(migrations, name)
    if how == "cancel":
        migrations.patch_spec(name, {"action": "Cancel"})
        status = migrations.wait_phase(name, "Cancelled", "Failed", "Succeeded", timeout=120)["status"]
        assert status["phase"] == "Cancelled", status
        assert [t["phase"] for t in status["phaseTransitions"]][-2:] == ["RollingBack", "Cancelled"]
    else:
        migrations.delete(name)
        migrations.gone(name, timeout=120)
    assert beating_on("lab1", name, boot) > counter, "the same guest keeps running on the source"
    assert domain(hosts, "lab1", name).state()[0] == libvirt.VIR_DOMAIN_RUNNING
    _nothing_on_target(hosts, name, disk)
    assert operator.metric_reaches("vemigrate_migrations_total", cancelled + 1, result="Cancelled") == cancelled + 1


def test_progress_timeout_rolls_back(hosts: LabInfo, migrations: Migrations, vm_cleanup: Cleanup) -> None:
    name = vm_cleanup("stall1")
    Lab.create_vm("lab1", name, state=VMState.RUNNING)
    boot, _ = first_beat("lab1", name)
    disk = _disk_path(hosts, "lab1", name)
    migrations.create(name, {**_slow_live(name), "timeouts": {"progressSeconds": 10}})
    _transferring(migrations, name)
    Lab.link("lab2", False)  # nothing moves any more
    try:
        migrations.wait(
            name, lambda b: ((b.get("status") or {}).get("failure") or {}).get("reason") == "ProgressTimeout"
        )
    finally:
        Lab.link("lab2", True)
    status = migrations.wait_phase(name, "Failed", timeout=180)["status"]
    assert status["failure"]["reason"] == "ProgressTimeout"
    assert "progressSeconds" in status["failure"]["message"]
    assert beating_on("lab1", name, boot) > 0
    _nothing_on_target(hosts, name, disk)


def test_operator_killed_mid_transfer_finishes_the_same_job(
    hosts: LabInfo,
    migrations: Migrations,
    operator: OperatorProcess,
    vm_cleanup: Cleanup,
    kube_admin: Any,
    namespace: str,
) -> None:
    name = vm_cleanup("kill1")
    # About 75 MiB to send at 4 MiB/s while the guest dirties 1 MiB/s: some 20 s, then it converges.
    Lab.create_vm("lab1", name, state=VMState.RUNNING, dirty_mib=1)
    boot, _ = first_beat("lab1", name)
    migrations.create(name, _spec(name, tunnel=False, bandwidthMiBps=4))
    _transferring(migrations, name)
    operator.kill()
    time.sleep(2)
    operator.start()
    status = migrations.wait_phase(name, "Succeeded", "Failed", timeout=300)["status"]
    assert status["phase"] == "Succeeded", status
    assert status["attempts"] == 1
    assert [t["phase"] for t in status["phaseTransitions"]].count("Transferring") == 1, "one job, never a second"
    assert beating_on("lab2", name, boot) > 0, "the same guest, live, on the target"
    assert domain(hosts, "lab1", name) is None, "exactly one copy"


def test_gitops_delete_then_reapply_moves_nothing(hosts: LabInfo, migrations: Migrations, vm_cleanup: Cleanup) -> None:
    name = vm_cleanup("git1")
    Lab.create_vm("lab1", name, state=VMState.RUNNING)
    boot, _ = first_beat("lab1", name)
    migrations.create(name, _spec(name, tunnel=False))
    assert migrations.wait_phase(name, "Succeeded", "Failed", timeout=300)["status"]["phase"] == "Succeeded"
    migrations.delete(name)  # pruned by Argo CD, say
    migrations.gone(name)
    assert domain(hosts, "lab2", name).state()[0] == libvirt.VIR_DOMAIN_RUNNING, "deleting touches no VE"
    migrations.create(name, _spec(name, tunnel=False))  # and synced again from Git
    status = migrations.wait_phase(name, "Succeeded", "Failed", timeout=120)["status"]
    assert {c["type"]: c["reason"] for c in status["conditions"]}["Succeeded"] == "AlreadyOnTarget"
    assert "Transferring" not in [t["phase"] for t in status["phaseTransitions"]]
    assert beating_on("lab2", name, boot) > 0, "still the same guest, never moved again"


def _fails_check(migrations: Migrations, name: str, spec: dict[str, Any], check: str) -> str:
    migrations.create(name, spec)
    status = migrations.wait_phase(name, "Failed", "Succeeded", timeout=120)["status"]
    assert status["phase"] == "Failed" and status["failure"]["reason"] == "PreflightFailed", status
    failed = {c["name"]: c["message"] for c in status["checks"] if c["result"] == "Failed"}
    assert check in failed, failed
    return str(failed[check])


def test_each_seed_check_fails_on_a_guest_built_to_fail_it(
    hosts: LabInfo, migrations: Migrations, operator: OperatorProcess, vm_cleanup: Cleanup
) -> None:
    before = operator.metric("vemigrate_preflight_failures_total", check="NoLinkedClones")
    Lab.create_vm("lab1", vm_cleanup("base1"), state=VMState.STOPPED)
    Lab.linked_clone("lab1", "base1", vm_cleanup("lc1"))
    message = _fails_check(migrations, "lc1", _spec("lc1"), "NoLinkedClones")
    assert "linked clone" in message
    assert (
        operator.metric_reaches("vemigrate_preflight_failures_total", before + 1, check="NoLinkedClones") == before + 1
    )

    Lab.create_vm("lab1", vm_cleanup("br1"), state=VMState.STOPPED)
    message = _fails_check(migrations, "br1", _spec("br1", target={"host": "lab3"}), "BridgeNames")
    assert "vmbr0" in message and "vmbr9" in message, "names what is missing and what the target has"

    Lab.create_vm("lab1", vm_cleanup("big1"), state=VMState.STOPPED, memory_mib=1024 * 1024)
    message = _fails_check(migrations, "big1", _spec("big1"), "TargetMemory")
    assert "1 TiB" in message or "1024 GiB" in message, message

    Lab.create_vm("lab1", vm_cleanup("full1"), state=VMState.STOPPED)
    Lab.fill_disk("lab2", leave_mib=1)
    try:
        message = _fails_check(migrations, "full1", _spec("full1"), "TargetDiskSpace")
    finally:
        Lab.free_disk("lab2")
    assert "free" in message and "MiB" in message, message
    assert operator.metric_reaches("vemigrate_migration_failures_total", 4, reason="PreflightFailed") >= 4


def test_operator_killed_while_finalizing_finishes(
    hosts: LabInfo, migrations: Migrations, operator: OperatorProcess, vm_cleanup: Cleanup
) -> None:
    """Finalizing runs inside the pass that sees the job end (verify, write Finalizing, dispose of the
    source, write Succeeded): the operator is killed the moment the source's definition is gone, between
    the disposal and the status that records it."""
    name = vm_cleanup("kill2")
    Lab.create_vm("lab1", name, state=VMState.RUNNING)
    boot, _ = first_beat("lab1", name)
    config = hosts.host("lab1").path(f"/etc/libvirt/qemu/{name}.xml")
    assert config.exists(), f"no definition of {name} at {config}"
    migrations.create(name, _spec(name, tunnel=False))
    deadline = time.monotonic() + 300
    while config.exists():
        assert time.monotonic() < deadline, f"the source was never undefined: {migrations.get(name)}"
        time.sleep(0.001)
    operator.kill()
    seen = migrations.get(name)["status"]["phase"]
    assert seen == "Finalizing", f"Finalizing is written before the disposal, Succeeded after it; not {seen}"
    time.sleep(1)
    operator.start()
    status = migrations.wait_phase(name, "Succeeded", "Failed", timeout=120)["status"]
    assert status["phase"] == "Succeeded", status
    assert beating_on("lab2", name, boot) > 0
    assert domain(hosts, "lab1", name) is None, "exactly one copy"
    assert status["result"]["sourceDisposition"] == "Removed"
