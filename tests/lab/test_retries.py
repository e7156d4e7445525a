"""spec.retry on real faults (issue: a lost network link is a transient failure): a job that failed on
a dropped connection is retried with a job of its own and moves the VE; a refusal that will not change
by itself is not retried. Through the operator, on real libvirt lab hosts; each fault is checked to
have landed while attempt 1's job still ran."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import libvirt

from tests.fixtures.lab import restored
from tests.fixtures.operator import Migrations, events_for
from tests.lab.evidence import beating_on, domain, first_beat
from vemigrate.drivers.hostjob import JOBS_DIR
from vemigrate_dev.lab import Lab, LabInfo, VMState

Cleanup = Callable[[str], str]


def _spec(name: str, **extra: Any) -> dict[str, Any]:
    # 4 MiB/s of a 256 MiB guest: attempt 1 is still copying when the fault comes, 3 s in.
    return {
        "source": {"host": "lab1", "name": name},
        "target": {"host": "lab2"},
        "tunnel": False,
        "bandwidthMiBps": 4,
        "retry": {"maxAttempts": 2, "backoffSeconds": 5},
        # Above the faults' length: the job's own failure decides, never the operator's progress
        # timeout (attempt 2 on a loaded machine may take a while to report its first bytes).
        "timeouts": {"progressSeconds": 90},
        **extra,
    }


def _attempt_one_running(migrations: Migrations, name: str, uid: str) -> None:
    """Attempt 1 is Transferring, bytes are moving, and its job on the source has not ended."""
    migrations.wait(
        name,
        lambda b: (
            (b.get("status") or {}).get("phase") == "Transferring"
            and (((b["status"].get("progress") or {}).get("bytesProcessed")) or 0) > 0
        ),
        timeout=120,
    )
    time.sleep(3)
    job = f"{JOBS_DIR}/{uid}/1"
    assert Lab.exec("lab1", ["test", "-e", f"{job}/exit"]).returncode != 0, "attempt 1 ended before the fault"
    assert migrations.get(name)["status"]["phase"] == "Transferring", "the fault must land in Transferring"


def _moved_by_attempt_two(
    hosts: LabInfo, migrations: Migrations, name: str, kube_admin: Any, why: tuple[str, ...]
) -> None:
    """Attempt 1 failed for one of `why` (the job's own failure, classified, not an operator timeout),
    and attempt 2 moved the VE."""
    status = migrations.wait_phase(name, "Succeeded", "Failed", timeout=600)["status"]
    assert status["phase"] == "Succeeded", status
    assert status["attempts"] == 2
    phases = [t["phase"] for t in status["phaseTransitions"]]
    assert phases.count("Transferring") == 2 and "RollingBack" in phases and "Queued" in phases, phases
    rolled = [e.message for e in events_for(kube_admin, migrations.namespace, name) if e.reason == "RollingBack"]
    assert any(m.startswith(why) for m in rolled), rolled
    assert domain(hosts, "lab1", name) is None, "the source is removed after attempt 2 verified the copy"
    moved = domain(hosts, "lab2", name)
    assert moved is not None and moved.state()[0] == libvirt.VIR_DOMAIN_RUNNING, "runs on the target only"


def test_a_link_cut_for_30_s_is_retried_and_attempt_two_moves_the_vm(
    hosts: LabInfo, migrations: Migrations, vm_cleanup: Cleanup, kube_admin: Any
) -> None:
    Lab.create_vm("lab1", vm_cleanup("rlink1"), state=VMState.RUNNING, dirty_mib=1)
    boot, _ = first_beat("lab1", "rlink1")
    uid = migrations.create("rlink1", _spec("rlink1"))["metadata"]["uid"]
    _attempt_one_running(migrations, "rlink1", uid)
    with restored(lambda: Lab.link("lab2", True)):
        Lab.link("lab2", False)
        time.sleep(30)
    _moved_by_attempt_two(hosts, migrations, "rlink1", kube_admin, ("ConnectionLost", "Timeout"))
    assert beating_on("lab2", "rlink1", boot, timeout=90) > 0, "the same boot goes on on the target"


def test_the_target_libvirtd_killed_mid_transfer_is_retried_and_attempt_two_moves_the_vm(
    hosts: LabInfo, migrations: Migrations, vm_cleanup: Cleanup, kube_admin: Any
) -> None:
    Lab.create_vm("lab1", vm_cleanup("rlvd1"), state=VMState.RUNNING, dirty_mib=1)
    uid = migrations.create("rlvd1", _spec("rlvd1"))["metadata"]["uid"]
    _attempt_one_running(migrations, "rlvd1", uid)
    with restored(lambda: Lab.start("lab2", "libvirtd")):
        Lab.kill("lab2", "libvirtd")
        time.sleep(5)
    _moved_by_attempt_two(hosts, migrations, "rlvd1", kube_admin, ("ConnectionLost", "PeerUnavailable"))


def test_a_refusal_is_not_retried_while_attempts_remain(
    hosts: LabInfo, migrations: Migrations, vm_cleanup: Cleanup
) -> None:
    vm = Lab.create_vm("lab1", vm_cleanup("rnot1"), state=VMState.STOPPED)
    directory = f"/var/lib/libvirt/images/{vm.uuid}"
    Lab.exec("lab2", ["mkdir", "-p", directory])  # someone else's directory at <path>/<UUID>
    try:
        migrations.create("rnot1", {**_spec("rnot1"), "retry": {"maxAttempts": 3, "backoffSeconds": 1}})
        status = migrations.wait_phase("rnot1", "Succeeded", "Failed", timeout=300)["status"]
        assert status["phase"] == "Failed" and status["attempts"] == 1, status
        assert status["failure"]["reason"] == "TargetPathInUse" and status["failure"]["retryable"] is False
        assert Lab.exec("lab2", ["test", "-d", directory]).returncode == 0, "the directory in the way stays"
    finally:
        Lab.exec("lab2", ["rmdir", directory])
