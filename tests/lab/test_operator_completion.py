"""Live migrations that never converge on their own (1 MiB/s link, the guest dirtying 4 MiB/s): how
they end. ForceComplete pauses the source so the last copy finishes; postCopy switches to post-copy
when the completion timeout passes; without either, the completion timeout rolls back. The guest's
own heartbeat tells from outside where it runs afterwards, and that it never rebooted."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import libvirt

from tests.fixtures.operator import Migrations, events_for
from tests.lab.evidence import beating_on, domain, first_beat
from vemigrate_dev.lab import Lab, LabInfo, VMState

Cleanup = Callable[[str], str]
# The disk is copied first, at the same 1 MiB/s: 8 MiB keep that short; memory is what never converges.
DISK_MIB = 8


def _never_converges(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "source": {"host": "lab1", "name": name},
        "target": {"host": "lab2"},
        "tunnel": False,
        "bandwidthMiBps": 1,
        **extra,
    }


def _transferring(migrations: Migrations, name: str) -> None:
    migrations.wait(
        name,
        lambda b: (
            (b.get("status") or {}).get("phase") == "Transferring"
            and ((b["status"].get("progress") or {}).get("bytesProcessed") or 0) > 0
        ),
        timeout=120,
    )


def _switchover_said(kube_admin: Any, namespace: str, name: str, status: dict[str, Any], why: str) -> None:
    phases = [t["phase"] for t in status["phaseTransitions"]]
    assert phases[-3:] == ["Switchover", "Finalizing", "Succeeded"], phases
    said = [e.message for e in events_for(kube_admin, namespace, name) if e.reason == "Switchover"]
    assert any(why in m for m in said), said


def _runs_only_on_target(lab: LabInfo, name: str, boot: str) -> None:
    assert beating_on("lab2", name, boot) > 0, "the same guest (no reboot) runs on the target"
    target = domain(lab, "lab2", name)
    assert target.state()[0] == libvirt.VIR_DOMAIN_RUNNING, "running, not left paused"
    assert domain(lab, "lab1", name) is None, "exactly one copy"


def test_force_complete_finishes_a_migration_that_never_converges(
    hosts: LabInfo, migrations: Migrations, vm_cleanup: Cleanup, kube_admin: Any, namespace: str
) -> None:
    name = vm_cleanup("force1")
    # 4 MiB/s against 16 MiB/s dirtied: still never converges, and the paused final copy (the
    # guest's memory not sent yet, at the spec's bandwidth) takes some 40 s rather than 150.
    Lab.create_vm("lab1", name, state=VMState.RUNNING, disk_mib=DISK_MIB, dirty_mib=16)
    boot, _ = first_beat("lab1", name)
    migrations.create(name, _never_converges(name, bandwidthMiBps=4))
    _transferring(migrations, name)
    migrations.patch_spec(name, {"action": "ForceComplete"})
    status = migrations.wait_phase(name, "Succeeded", "Failed", "Cancelled", timeout=240)["status"]
    assert status["phase"] == "Succeeded", status
    _switchover_said(kube_admin, namespace, name, status, "ForceComplete requested: pausing the source")
    _runs_only_on_target(hosts, name, boot)
    # The source was paused for the final copy: that pause is the downtime, and it is reported.
    assert status["downtimeMs"] > 0


def test_post_copy_takes_over_when_the_completion_timeout_passes(
    hosts: LabInfo, migrations: Migrations, vm_cleanup: Cleanup, kube_admin: Any, namespace: str
) -> None:
    name = vm_cleanup("postc1")
    Lab.create_vm("lab1", name, state=VMState.RUNNING, disk_mib=DISK_MIB)
    boot, _ = first_beat("lab1", name)
    spec = _never_converges(name, postCopy=True, timeouts={"completionPerGiBSeconds": 15})
    migrations.create(name, spec)
    status = migrations.wait_phase(name, "Succeeded", "Failed", "Cancelled", timeout=240)["status"]
    assert status["phase"] == "Succeeded", status
    _switchover_said(kube_admin, namespace, name, status, "Completion deadline passed: switching to post-copy")
    _runs_only_on_target(hosts, name, boot)


def test_completion_timeout_without_post_copy_rolls_back(
    hosts: LabInfo, migrations: Migrations, vm_cleanup: Cleanup
) -> None:
    name = vm_cleanup("ctime1")
    Lab.create_vm("lab1", name, state=VMState.RUNNING, disk_mib=DISK_MIB)
    boot, counter = first_beat("lab1", name)
    migrations.create(name, _never_converges(name, timeouts={"completionPerGiBSeconds": 10}))
    status = migrations.wait_phase(name, "Failed", "Succeeded", "Cancelled", timeout=180)["status"]
    assert status["phase"] == "Failed", status
    assert status["failure"]["reason"] == "CompletionTimeout"
    assert "completionPerGiBSeconds" in status["failure"]["message"]
    assert beating_on("lab1", name, boot) > counter, "the same guest keeps running on the source"
    assert domain(hosts, "lab1", name).state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert domain(hosts, "lab2", name) is None, "nothing left on the target"
