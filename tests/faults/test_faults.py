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
from dataclasses import dataclass
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


@contextmanager
def _restored(undo: Callable[[], object]) -> Iterator[None]:
    try:
        yield
    finally:
        undo()


@dataclass
class Scene:
    """One scenario's run: the lab, the operator and its migrations, and where the outcome goes."""

    lab: LabInfo
    migrations: Migrations
    operator: OperatorProcess
    cleanup: Cleanup
    record: list[Outcome]

    def vm(self, name: str, *, state: VMState = VMState.RUNNING, dirty_mib: int = 1) -> VMInfo:
        return Lab.create_vm("lab1", self.cleanup(name), state=state, dirty_mib=dirty_mib)

    def outcome(
        self, scenario: str, vm: VMInfo, name: str, counted: Counted, *, restarted: bool = False, **kwargs: Any
    ) -> Outcome:
        """Waits for the final phase, checks the invariants, records the row, then asserts on it."""
        body = _final(self.migrations, name, timeout=kwargs.pop("timeout", 300))
        outcome = examine(self.lab, scenario, vm, body, counted=counted(_phase(body), restarted=restarted), **kwargs)
        self.record.append(outcome)
        assert outcome.ok, outcome.explain()
        return outcome


@pytest.fixture
def scene(
    hosts: LabInfo, migrations: Migrations, operator: OperatorProcess, vm_cleanup: Cleanup, record: list[Outcome]
) -> Scene:
    return Scene(hosts, migrations, operator, vm_cleanup, record)


@runs
def test_operator_killed_in_every_phase_it_is_seen_in(run: int, scene: Scene) -> None:
    name = f"fkill{run}"
    vm = scene.vm(name)
    counted = Counted(scene.operator)
    scene.migrations.create(name, _slow(name))
    killed: list[str] = []
    deadline = time.monotonic() + 300
    body = scene.migrations.get(name)
    while _phase(body) not in FINAL and time.monotonic() < deadline:
        phase = _phase(body)
        if phase in ("Validating", "Transferring", "Switchover", "Finalizing") and phase not in killed:
            scene.operator.kill()
            killed.append(phase)
            time.sleep(1)
            scene.operator.start()
        time.sleep(0.05)
        body = scene.migrations.get(name)
    assert killed, "the operator was killed at least once"
    outcome = scene.outcome("operator SIGKILLed in each phase seen", vm, name, counted, restarted=True,
                            was_running=True, note="killed in " + ", ".join(sorted(set(killed))))  # fmt: skip
    assert outcome.phase == "Succeeded", "a restarted operator finishes the migration it was doing"
    transitions = scene.migrations.get(name)["status"]["phaseTransitions"]
    assert [t["phase"] for t in transitions].count("Transferring") == 1, "one job only"


@runs
def test_operator_killed_right_after_cancel(run: int, scene: Scene) -> None:
    name = f"fcanc{run}"
    vm = scene.vm(name, dirty_mib=4)
    counted = Counted(scene.operator)
    scene.migrations.create(name, _stuck(name))
    _transferring(scene.migrations, name)
    scene.migrations.patch_spec(name, {"action": "Cancel"})
    time.sleep(0.3)
    scene.operator.kill()
    time.sleep(1)
    scene.operator.start()
    outcome = scene.outcome("operator SIGKILLed while cancelling", vm, name, counted, restarted=True, was_running=True)
    assert outcome.phase == "Cancelled"


@runs
def test_link_cut_and_restored_during_transfer(run: int, scene: Scene) -> None:
    name = f"flink{run}"
    vm = scene.vm(name)
    counted = Counted(scene.operator)
    scene.migrations.create(name, _slow(name))
    _transferring(scene.migrations, name)
    with _restored(lambda: Lab.link("lab2", True)):
        Lab.link("lab2", False)
        time.sleep(10)
    scene.outcome("link cut for 10 s during transfer", vm, name, counted, was_running=True)


@runs
def test_link_cut_and_restored_during_switchover(run: int, scene: Scene) -> None:
    name = f"fswit{run}"
    vm = scene.vm(name, dirty_mib=4)
    counted = Counted(scene.operator)
    scene.migrations.create(name, _stuck(name))
    _transferring(scene.migrations, name)
    scene.migrations.patch_spec(name, {"action": "ForceComplete"})
    scene.migrations.wait_phase(name, "Switchover", *FINAL, timeout=60)
    with _restored(lambda: Lab.link("lab2", True)):
        Lab.link("lab2", False)
        time.sleep(10)
    scene.outcome("link cut for 10 s during switchover (ForceComplete)", vm, name, counted, was_running=True)


@runs
def test_target_libvirtd_killed_during_transfer(run: int, scene: Scene) -> None:
    name = f"flvd{run}"
    vm = scene.vm(name)
    counted = Counted(scene.operator)
    scene.migrations.create(name, _slow(name))
    _transferring(scene.migrations, name)
    with _restored(lambda: Lab.start("lab2", "libvirtd")):
        Lab.kill("lab2", "libvirtd")
        time.sleep(5)
    scene.outcome("target libvirtd killed during transfer, restarted after 5 s", vm, name, counted, was_running=True)


@runs
def test_source_sshd_killed_during_transfer(run: int, scene: Scene) -> None:
    name = f"fssh{run}"
    vm = scene.vm(name)
    counted = Counted(scene.operator)
    scene.migrations.create(name, _slow(name))
    _transferring(scene.migrations, name)
    with _restored(lambda: Lab.start("lab1", "sshd")):
        Lab.kill("lab1", "sshd")
        time.sleep(10)
    scene.outcome("source sshd killed during transfer, restarted after 10 s", vm, name, counted, was_running=True)


@runs
def test_target_disk_full_during_offline_copy(run: int, scene: Scene) -> None:
    name = f"ffull{run}"
    vm = scene.vm(name, state=VMState.STOPPED)
    before = md5("lab1", vm.disk)
    counted = Counted(scene.operator)
    with _restored(lambda: (Lab.netem("lab2"), Lab.free_disk("lab2"))):
        Lab.netem("lab2", rate="2mbit")  # a few MiB take some 20 s: time to fill the disk under it
        scene.migrations.create(name, {**_spec(name), "tunnel": True})
        _transferring(scene.migrations, name)
        Lab.fill_disk("lab2", leave_mib=0)
        outcome = scene.outcome("target disk filled during an offline copy", vm, name, counted,
                                was_running=False, source_md5=before)  # fmt: skip
    assert outcome.phase == "Failed"


@runs
def test_very_slow_link_times_out(run: int, scene: Scene) -> None:
    name = f"fslow{run}"
    vm = scene.vm(name)
    counted = Counted(scene.operator)
    # Bytes still trickle through at 64 kbit/s, so it is the completion deadline (90 s: one GiB's worth)
    # that ends it, unless nothing moves for progressSeconds first.
    timeouts = {"progressSeconds": 10, "completionPerGiBSeconds": 90}
    with _restored(lambda: Lab.netem("lab2")):
        scene.migrations.create(name, _slow(name, timeouts=timeouts))
        _transferring(scene.migrations, name)
        Lab.netem("lab2", rate="64kbit")
        outcome = scene.outcome("link slowed to 64 kbit/s mid-transfer", vm, name, counted, was_running=True,
                                timeout=240)  # fmt: skip
    assert outcome.phase == "Failed" and outcome.reason in ("ProgressTimeout", "CompletionTimeout")


@runs
def test_api_server_restarted_mid_migration(run: int, scene: Scene, control_plane: ControlPlaneInfo) -> None:
    name = f"fapi{run}"
    vm = scene.vm(name)
    counted = Counted(scene.operator)
    scene.migrations.create(name, _slow(name))
    _transferring(scene.migrations, name)
    ControlPlane(control_plane.state_dir).restart_apiserver()
    outcome = scene.outcome("kube-apiserver restarted mid-transfer", vm, name, counted, was_running=True)
    assert outcome.phase == "Succeeded"


@runs
def test_two_migrations_of_one_ve_at_once(run: int, scene: Scene) -> None:
    name = f"ftwin{run}"
    vm = scene.vm(name)
    counted = Counted(scene.operator)
    scene.migrations.create(f"{name}-a", _spec(name))
    scene.migrations.create(f"{name}-b", _spec(name))
    finals = {n: _final(scene.migrations, n) for n in (f"{name}-a", f"{name}-b")}
    winner = next((n for n, b in finals.items() if _phase(b) == "Succeeded"), f"{name}-a")
    loser = finals[f"{name}-b" if winner == f"{name}-a" else f"{name}-a"]["status"]
    assert loser["phase"] == "Failed" and loser["failure"]["reason"] == "DuplicateMigration", loser
    scene.outcome("two migrations of one VE created at once", vm, winner, counted, was_running=True,
                  note="the other: Failed DuplicateMigration")  # fmt: skip


@runs
def test_target_name_already_taken(run: int, scene: Scene) -> None:
    name = f"fname{run}"
    vm = scene.vm(name, state=VMState.STOPPED)
    other = Lab.create_vm("lab2", name, state=VMState.STOPPED)  # same name, another VE
    before, theirs = md5("lab1", vm.disk), md5("lab2", other.disk)
    counted = Counted(scene.operator)
    scene.migrations.create(name, _spec(name))
    outcome = scene.outcome("the VE's name already taken on the target", vm, name, counted, was_running=False,
                            source_md5=before, foreign=(other.disk,))  # fmt: skip
    assert outcome.phase == "Failed"
    assert md5("lab2", other.disk) == theirs, "the VE already on the target is untouched"
