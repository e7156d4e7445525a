"""The migration's plan (core/plan.py): resolved once from the spec, the VE and the target's facts, and
recorded when its job starts, so that later passes act on what the job was started with."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.unit.builders import T0, host_facts, observation, spec, status_in, ve
from vemigrate.api.host import VEKind
from vemigrate.api.migration import Mode, Phase, PlanStatus, SourceDisposition
from vemigrate.core.decision import ActionKind
from vemigrate.core.machine import decide
from vemigrate.core.observation import HostObservation, JobObservation, JobState, VEState
from vemigrate.core.plan import clone_uuid, resolve

pytestmark = pytest.mark.unit
UID = "0b7c9f6e-1111-4222-8333-444455556666"


@pytest.mark.parametrize(
    ("requested", "state", "mode"),
    [
        (Mode.AUTO, VEState.RUNNING, Mode.LIVE),
        (Mode.AUTO, VEState.PAUSED, Mode.LIVE),
        (Mode.AUTO, VEState.STOPPED, Mode.OFFLINE),
        (Mode.AUTO, VEState.SUSPENDED, Mode.OFFLINE),
        (Mode.LIVE, VEState.STOPPED, Mode.LIVE),  # the VeState check fails it, with why
        (Mode.OFFLINE, VEState.RUNNING, Mode.OFFLINE),
    ],
)
def test_the_mode_is_the_requested_one_or_follows_the_ves_state(requested: Mode, state: VEState, mode: Mode) -> None:
    assert resolve(UID, spec(mode=requested.value), ve(state=state), host_facts(), None).mode == mode


def test_the_target_path_is_the_specs_else_the_targets_default_for_the_kind() -> None:
    facts = host_facts(default_path="/vz/vmprivate", default_container_path="/vz/private")
    assert resolve(UID, spec(), ve(), facts, None).target_path == "/vz/vmprivate"
    container = ve(type=VEKind.CONTAINER)
    assert resolve(UID, spec(), container, facts, None).target_path == "/vz/private"
    assert resolve(UID, spec(), container, host_facts(), None).target_path == "/var/lib/libvirt/images"
    given = spec(target={"host": "node-b", "path": "/srv/ves"})
    assert resolve(UID, given, container, facts, None).target_path == "/srv/ves"
    assert resolve(UID, spec(), ve(), host_facts(default_path=None), None).target_path is None
    assert resolve(UID, spec(), ve(), None, None).target_path is None


def test_the_copy_keeps_the_ves_uuid_and_a_clone_gets_one_of_its_own_every_pass_alike() -> None:
    assert resolve(UID, spec(), ve(), host_facts(), None).copy_uuid == ve().uuid
    cloned = resolve(UID, spec(clone=True), ve(state=VEState.STOPPED), host_facts(), None).copy_uuid
    assert cloned == clone_uuid(UID) and cloned != ve().uuid
    assert resolve(UID, spec(clone=True), None, None, None).copy_uuid == cloned, "the same without the VE in sight"
    assert clone_uuid("another-migration") != cloned


@pytest.mark.parametrize(
    ("clone", "kind", "disposition"),
    [
        (False, VEKind.VM, SourceDisposition.REMOVED),
        (False, VEKind.CONTAINER, SourceDisposition.RENAMED_MIGRATED),
        (True, VEKind.VM, SourceDisposition.KEPT),
        (True, VEKind.CONTAINER, SourceDisposition.KEPT),
    ],
)
def test_the_source_is_removed_renamed_or_kept(clone: bool, kind: VEKind, disposition: SourceDisposition) -> None:
    assert resolve(UID, spec(clone=clone), ve(type=kind), host_facts(), None).disposition == disposition


def test_a_recorded_plan_stands_whatever_the_facts_say_since() -> None:
    """The host's default directory changed, the VE is gone from the source: the plan is the recorded one."""
    stored = status_in(
        Phase.ROLLING_BACK,
        mode="Offline",
        plan=PlanStatus(target_path="/pool-a", copy_uuid="c0c0", source_disposition=SourceDisposition.RENAMED_MIGRATED),
    )
    now = resolve(UID, spec(), None, host_facts(default_path="/pool-b"), stored)
    assert (now.mode, now.target_path, now.copy_uuid, now.disposition) == (
        Mode.OFFLINE,
        "/pool-a",
        "c0c0",
        SourceDisposition.RENAMED_MIGRATED,
    )


def test_the_job_starts_with_the_plan_the_checks_judged_and_records_it() -> None:
    """Validating resolves the plan once: the TargetDisk check measures the very directory the job is started
    with, and status keeps it for every later pass."""
    facts = host_facts(default_path="/var/lib/libvirt/images")
    stopped = ve(state=VEState.STOPPED)
    obs = observation(source_ve=stopped, target=HostObservation(name="node-b", reachable=True, facts=facts))
    decision = decide(spec(clone=True), status_in(Phase.VALIDATING), obs, T0 + timedelta(seconds=1))
    assert [a.kind for a in decision.actions] == [ActionKind.START_JOB]
    assert decision.status.mode == Mode.OFFLINE
    assert decision.status.plan == PlanStatus(
        target_path="/var/lib/libvirt/images", copy_uuid=clone_uuid("uid-1"), source_disposition=SourceDisposition.KEPT
    )
    disk = next(c for c in decision.status.checks if c.name.value == "TargetDiskSpace")
    assert "/var/lib/libvirt/images" in disk.message


def test_finalizing_disposes_of_the_source_as_planned_when_the_ves_kind_is_no_longer_in_sight() -> None:
    """A container renamed on the source and not seen on the target this pass: without the recorded plan
    its kind, and so its disposition, would be guessed (a VM's: Removed)."""
    stored = status_in(
        Phase.FINALIZING,
        mode="Offline",
        plan=PlanStatus(
            target_path="/vz/private", copy_uuid="c0c0", source_disposition=SourceDisposition.RENAMED_MIGRATED
        ),
    )
    obs = observation(
        source_ve=None,
        target_ve=None,
        target_verified=True,
        source_disposed=False,
        job=JobObservation(JobState.COMPLETED),
    )
    decision = decide(spec(), stored, obs, T0 + timedelta(seconds=1))
    assert [(a.kind, a.disposition) for a in decision.actions] == [
        (ActionKind.DISPOSE_SOURCE, SourceDisposition.RENAMED_MIGRATED)
    ]


def test_a_new_attempt_resolves_its_plan_afresh() -> None:
    stored = status_in(
        Phase.QUEUED,
        mode="Offline",
        plan=PlanStatus(target_path="/old", copy_uuid="c0c0", source_disposition=SourceDisposition.REMOVED),
        next_attempt_time=T0,
    )
    decision = decide(spec(), stored, observation(), T0 + timedelta(seconds=1))
    assert decision.status.phase == Phase.VALIDATING and decision.status.plan is None
