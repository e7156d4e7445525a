"""Faults injected into real migrations between lab hosts, each run checked against DESIGN.md's
invariants from outside the operator (tests/faults/invariants.py): no VE lost, never two copies
running, a running VE running again afterwards, nothing left on the target unless the migration
succeeded, a final phase with a specific reason, and the outcome counted in the metrics.

Guests: a "slow" migration (4 MiB/s while the guest dirties 1 MiB/s: some 20 s, then it converges)
leaves time to hit it mid-transfer; a "stuck" one (1 MiB/s against 4 MiB/s dirtied) never converges
on its own."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.faults.conftest import RUNS
from tests.faults.invariants import FINAL, Outcome, examine, md5
from tests.fixtures.operator import Migrations, OperatorProcess
from vemigrate.devenv.controlplane import ControlPlane, ControlPlaneInfo
from vemigrate.devenv.lab import Lab, LabInfo, VMState
from vemigrate.devenv.lab.vm import VMInfo

Cleanup = Callable[[str], str]
runs = pytest.mark.parametrize("run", range(RUNS), ids=lambda r: f"run{r + 1}")


def _spec(name: str, **extra: Any) -> dict[str, Any]:
    return {"source": {"host": "lab1", "name": name}, "target": {"host": "lab2"}, "tunnel": False, **extra}


def _slow(name: str, **extra: Any) -> dict[str, Any]:
    return _spec(name, bandwidthMiBps=4, **extra)


def _stuck(name: str, **extra: Any) -> dict[str, Any]:
    return _spec(name, bandwidthMiBps=1, **extra)


def _phase(body: dict[str, Any]) -> str:
    return str((body.get("status") or {}).get("phase", ""))


def _transferring(migrations: Migrations, name: str) -> None:
    migrations.wait(
        name,
        lambda b: (
            _phase(b) == "Transferring" and (((b["status"].get("progress") or {}).get("bytesProcessed") or 0) > 0)
        ),
        timeout=120,
    )


def _final(migrations: Migrations, name: str, timeout: float = 300) -> dict[str, Any]:
    return migrations.wait_phase(name, *FINAL, timeout=timeout)


class Counted:
    """Whether the operator's vemigrate_migrations_total counted an outcome (from zero again after a
    restart of the operator)."""

    def __init__(self, operator: OperatorProcess) -> None:
        self.operator = operator
        self.before = {r: operator.metric("vemigrate_migrations_total", result=r) for r in FINAL}

    def __call__(self, phase: str, *, restarted: bool = False) -> bool:
        if phase not in FINAL:
            return False
        want = 1 if restarted else self.before[phase] + 1
        # The operator counts an outcome just after it writes the status: allow it a moment.
        deadline = time.monotonic() + 10
        while self.operator.metric("vemigrate_migrations_total", result=phase) < want:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True


def _check(record: list[Outcome], outcome: Outcome) -> None:
    record.append(outcome)
    assert outcome.ok, outcome.explain()


@contextmanager
def _restored(undo: Callable[[], object]) -> Iterator[None]:
    try:
        yield
    finally:
        undo()


def _running_vm(name: str, dirty_mib: int = 1) -> VMInfo:
    vm = Lab.create_vm("lab1", name, state=VMState.RUNNING, dirty_mib=dirty_mib)
    Lab.heartbeats("lab1", name)
    return vm


@runs
def test_operator_killed_in_every_phase_it_is_seen_in(
    run: int,
    hosts: LabInfo,
    migrations: Migrations,
    operator: OperatorProcess,
    vm_cleanup: Cleanup,
    record: list[Outcome],
) -> None:
    name = vm_cleanup(f"fkill{run}")
    vm = _running_vm(name)
    migrations.create(name, _slow(name))
    killed: list[str] = []
    deadline = time.monotonic() + 300
    body = migrations.get(name)
    while _phase(body) not in FINAL and time.monotonic() < deadline:
        phase = _phase(body)
        if phase in ("Validating", "Transferring", "Switchover", "Finalizing") and phase not in killed:
            operator.kill()
            killed.append(phase)
            time.sleep(1)
            operator.start()
        time.sleep(0.05)
        body = migrations.get(name)
    body = _final(migrations, name)
    assert killed, "the operator was killed at least once"
    outcome = examine(
        hosts,
        "operator SIGKILLed in each phase seen",
        vm,
        body,
        was_running=True,
        counted=Counted(operator)(_phase(body), restarted=True),
        note="killed in " + ", ".join(sorted(set(killed))),
    )
    _check(record, outcome)
    assert outcome.phase == "Succeeded", "a restarted operator finishes the migration it was doing"
    assert [t["phase"] for t in body["status"]["phaseTransitions"]].count("Transferring") == 1, "one job only"


@runs
def test_operator_killed_right_after_cancel(
    run: int,
    hosts: LabInfo,
    migrations: Migrations,
    operator: OperatorProcess,
    vm_cleanup: Cleanup,
    record: list[Outcome],
) -> None:
    name = vm_cleanup(f"fcanc{run}")
    vm = _running_vm(name, dirty_mib=4)
    migrations.create(name, _stuck(name))
    _transferring(migrations, name)
    migrations.patch_spec(name, {"action": "Cancel"})
    time.sleep(0.3)
    operator.kill()
    time.sleep(1)
    operator.start()
    body = _final(migrations, name)
    outcome = examine(
        hosts,
        "operator SIGKILLed while cancelling",
        vm,
        body,
        was_running=True,
        counted=Counted(operator)(_phase(body), restarted=True),
    )
    _check(record, outcome)
    assert outcome.phase == "Cancelled"


@runs
def test_link_cut_and_restored_during_transfer(
    run: int,
    hosts: LabInfo,
    migrations: Migrations,
    operator: OperatorProcess,
    vm_cleanup: Cleanup,
    record: list[Outcome],
) -> None:
    name = vm_cleanup(f"flink{run}")
    vm = _running_vm(name)
    counted = Counted(operator)
    migrations.create(name, _slow(name))
    _transferring(migrations, name)
    with _restored(lambda: Lab.link("lab2", True)):
        Lab.link("lab2", False)
        time.sleep(10)
    body = _final(migrations, name)
    _check(record, examine(hosts, "link cut for 10 s during transfer", vm, body, was_running=True,
                           counted=counted(_phase(body))))  # fmt: skip


@runs
def test_link_cut_and_restored_during_switchover(
    run: int,
    hosts: LabInfo,
    migrations: Migrations,
    operator: OperatorProcess,
    vm_cleanup: Cleanup,
    record: list[Outcome],
) -> None:
    name = vm_cleanup(f"fswit{run}")
    vm = _running_vm(name, dirty_mib=4)
    counted = Counted(operator)
    migrations.create(name, _stuck(name))
    _transferring(migrations, name)
    migrations.patch_spec(name, {"action": "ForceComplete"})
    migrations.wait_phase(name, "Switchover", *FINAL, timeout=60)
    with _restored(lambda: Lab.link("lab2", True)):
        Lab.link("lab2", False)
        time.sleep(10)
    body = _final(migrations, name)
    _check(record, examine(hosts, "link cut for 10 s during switchover (ForceComplete)", vm, body,
                           was_running=True, counted=counted(_phase(body))))  # fmt: skip


@runs
def test_target_libvirtd_killed_during_transfer(
    run: int,
    hosts: LabInfo,
    migrations: Migrations,
    operator: OperatorProcess,
    vm_cleanup: Cleanup,
    record: list[Outcome],
) -> None:
    name = vm_cleanup(f"flvd{run}")
    vm = _running_vm(name)
    counted = Counted(operator)
    migrations.create(name, _slow(name))
    _transferring(migrations, name)
    with _restored(lambda: Lab.start("lab2", "libvirtd")):
        Lab.kill("lab2", "libvirtd")
        time.sleep(5)
    body = _final(migrations, name)
    _check(record, examine(hosts, "target libvirtd killed during transfer, restarted after 5 s", vm, body,
                           was_running=True, counted=counted(_phase(body))))  # fmt: skip


@runs
def test_source_sshd_killed_during_transfer(
    run: int,
    hosts: LabInfo,
    migrations: Migrations,
    operator: OperatorProcess,
    vm_cleanup: Cleanup,
    record: list[Outcome],
) -> None:
    name = vm_cleanup(f"fssh{run}")
    vm = _running_vm(name)
    counted = Counted(operator)
    migrations.create(name, _slow(name))
    _transferring(migrations, name)
    with _restored(lambda: Lab.start("lab1", "sshd")):
        Lab.kill("lab1", "sshd")
        time.sleep(10)
    body = _final(migrations, name)
    _check(record, examine(hosts, "source sshd killed during transfer, restarted after 10 s", vm, body,
                           was_running=True, counted=counted(_phase(body))))  # fmt: skip


@runs
def test_target_disk_full_during_offline_copy(
    run: int,
    hosts: LabInfo,
    migrations: Migrations,
    operator: OperatorProcess,
    vm_cleanup: Cleanup,
    record: list[Outcome],
) -> None:
    name = vm_cleanup(f"ffull{run}")
    vm = Lab.create_vm("lab1", name, state=VMState.STOPPED)
    before = md5("lab1", vm.disk)
    counted = Counted(operator)
    with _restored(lambda: (Lab.netem("lab2"), Lab.free_disk("lab2"))):
        Lab.netem("lab2", rate="2mbit")  # a few MiB take some 20 s: time to fill the disk under it
        migrations.create(name, {**_spec(name), "tunnel": True})
        _transferring(migrations, name)
        Lab.fill_disk("lab2", leave_mib=0)
        body = _final(migrations, name)
    outcome = examine(hosts, "target disk filled during an offline copy", vm, body, was_running=False,
                      source_md5=before, counted=counted(_phase(body)))  # fmt: skip
    _check(record, outcome)
    assert outcome.phase == "Failed"


@runs
def test_very_slow_link_times_out(
    run: int,
    hosts: LabInfo,
    migrations: Migrations,
    operator: OperatorProcess,
    vm_cleanup: Cleanup,
    record: list[Outcome],
) -> None:
    name = vm_cleanup(f"fslow{run}")
    vm = _running_vm(name)
    counted = Counted(operator)
    # Bytes still trickle through at 64 kbit/s, so it is the completion deadline (90 s: one GiB's worth)
    # that ends it, unless nothing moves for progressSeconds first.
    timeouts = {"progressSeconds": 10, "completionPerGiBSeconds": 90}
    with _restored(lambda: Lab.netem("lab2")):
        migrations.create(name, _slow(name, timeouts=timeouts))
        _transferring(migrations, name)
        Lab.netem("lab2", rate="64kbit")
        body = _final(migrations, name, timeout=240)
    outcome = examine(hosts, "link slowed to 64 kbit/s mid-transfer", vm, body, was_running=True,
                      counted=counted(_phase(body)))  # fmt: skip
    _check(record, outcome)
    assert outcome.phase == "Failed" and outcome.reason in ("ProgressTimeout", "CompletionTimeout")


@runs
def test_api_server_restarted_mid_migration(
    run: int,
    hosts: LabInfo,
    migrations: Migrations,
    operator: OperatorProcess,
    control_plane: ControlPlaneInfo,
    vm_cleanup: Cleanup,
    record: list[Outcome],
) -> None:
    name = vm_cleanup(f"fapi{run}")
    vm = _running_vm(name)
    counted = Counted(operator)
    migrations.create(name, _slow(name))
    _transferring(migrations, name)
    ControlPlane(control_plane.state_dir).restart_apiserver()
    body = _final(migrations, name)
    outcome = examine(hosts, "kube-apiserver restarted mid-transfer", vm, body, was_running=True,
                      counted=counted(_phase(body)))  # fmt: skip
    _check(record, outcome)
    assert outcome.phase == "Succeeded"


@runs
def test_two_migrations_of_one_ve_at_once(
    run: int,
    hosts: LabInfo,
    migrations: Migrations,
    operator: OperatorProcess,
    vm_cleanup: Cleanup,
    record: list[Outcome],
) -> None:
    name = vm_cleanup(f"ftwin{run}")
    vm = _running_vm(name)
    counted = Counted(operator)
    migrations.create(f"{name}-a", _spec(name))
    migrations.create(f"{name}-b", _spec(name))
    a, b = _final(migrations, f"{name}-a"), _final(migrations, f"{name}-b")
    phases = sorted([(_phase(a), a), (_phase(b), b)], key=lambda p: p[0] != "Succeeded")
    winner, loser = phases[0][1], phases[1][1]
    assert _phase(loser) == "Failed" and loser["status"]["failure"]["reason"] == "DuplicateMigration", loser["status"]
    _check(record, examine(hosts, "two migrations of one VE created at once", vm, winner, was_running=True,
                           counted=counted(_phase(winner)), note="the other: Failed DuplicateMigration"))  # fmt: skip


@runs
def test_target_name_already_taken(
    run: int,
    hosts: LabInfo,
    migrations: Migrations,
    operator: OperatorProcess,
    vm_cleanup: Cleanup,
    record: list[Outcome],
) -> None:
    name = vm_cleanup(f"fname{run}")
    vm = Lab.create_vm("lab1", name, state=VMState.STOPPED)
    other = Lab.create_vm("lab2", name, state=VMState.STOPPED)  # same name, another VE
    before, theirs = md5("lab1", vm.disk), md5("lab2", other.disk)
    counted = Counted(operator)
    migrations.create(name, _spec(name))
    body = _final(migrations, name)
    outcome = examine(hosts, "the VE's name already taken on the target", vm, body, was_running=False,
                      source_md5=before, counted=counted(_phase(body)), foreign=(other.disk,))  # fmt: skip
    _check(record, outcome)
    assert outcome.phase == "Failed"
    assert md5("lab2", other.disk) == theirs, "the VE already on the target is untouched"
