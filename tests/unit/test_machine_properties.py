"""Properties of the phase machine over arbitrary observations (hypothesis)."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.builders import GIB, T0, host_facts, observation, spec, status_in, ve
from vemigrate.api.migration import MigrationSpec, MigrationStatus, Phase
from vemigrate.core.decision import ActionKind
from vemigrate.core.machine import decide
from vemigrate.core.observation import (
    ErrorClass,
    HostObservation,
    JobObservation,
    JobState,
    JobStats,
    Observation,
    VEFacts,
    VEState,
)

hosts = st.builds(
    HostObservation,
    name=st.sampled_from(["node-a", "node-b"]),
    reachable=st.sampled_from([True, True, True, False, None]),
    facts=st.just(host_facts()),
)
stats = st.builds(
    JobStats,
    bytes_processed=st.none() | st.integers(0, 8 * GIB),
    bytes_remaining=st.none() | st.integers(0, 8 * GIB),
    bytes_total=st.none() | st.integers(0, 8 * GIB),
    dirty_rate_bytes_per_second=st.none() | st.integers(0, GIB),
    iteration=st.none() | st.integers(0, 50),
    downtime_ms=st.none() | st.integers(0, 5000),
)
jobs = st.none() | st.builds(
    JobObservation,
    state=st.sampled_from(list(JobState)),
    stats=stats,
    error_class=st.none() | st.sampled_from(list(ErrorClass)),
)
ves = st.none() | st.builds(
    lambda state, post_copy_failed, in_post_copy: ve(
        state=state, post_copy_failed=post_copy_failed, in_post_copy=in_post_copy
    ),
    st.sampled_from(list(VEState)),
    st.booleans(),
    st.booleans(),
)
# A target copy that a rollback must never remove: running, paused or migrating, or split by a failed post-copy.
active_ves = st.builds(
    lambda state, post_copy_failed: ve(state=state, post_copy_failed=post_copy_failed),
    st.sampled_from([s for s in VEState if s.live]),
    st.booleans(),
) | st.builds(lambda state: ve(state=state, post_copy_failed=True), st.sampled_from(list(VEState)))
tri = st.sampled_from([None, True, False])

observations = st.builds(
    observation,
    source=hosts,
    target=hosts,
    source_ve=ves,
    target_ve=ves,
    job=jobs,
    target_verified=tri,
    source_disposed=tri,
    target_leftovers=tri,
    deleting=st.booleans(),
)
specs = st.builds(
    lambda action, clone, post_copy, dry_run, attempts: spec(
        action=action, clone=clone, postCopy=post_copy, dryRun=dry_run, retry={"maxAttempts": attempts}
    ),
    st.sampled_from([None, "Cancel", "ForceComplete"]),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.integers(1, 3),
)
phases = st.sampled_from(list(Phase))
seconds = st.integers(0, 4000)


def _safe(obs: Observation, kinds: set[ActionKind]) -> None:
    if ActionKind.DISPOSE_SOURCE in kinds:
        assert obs.target_verified is True, "the source is only removed after the target is verified"
    if ActionKind.CLEANUP_TARGET in kinds:
        assert obs.source_ve is not None, "the target is only cleaned while the source copy is there"
        assert obs.source is not None and obs.source.reachable is True
    if ActionKind.DISPOSE_SOURCE in kinds or ActionKind.CLEANUP_TARGET in kinds:
        assert obs.source is not None and obs.source.reachable is True
    if obs.job is None:
        # The job's state is unknown (source unreachable): never abort it, never clean the target.
        assert not kinds & {ActionKind.ABORT_JOB, ActionKind.CLEANUP_TARGET}
    if ActionKind.CLEANUP_TARGET in kinds:
        target, source = obs.target_ve, obs.source_ve
        assert target is None or not (target.state.live or target.post_copy_failed), "the target copy is active"
        assert source is not None and not source.post_copy_failed, "the source copy is split by a failed post-copy"
        assert not source.in_post_copy, "the source copy is split by a post-copy still under way"


@settings(max_examples=400, deadline=None)
@given(s=specs, phase=phases, obs=observations, dt=seconds)
def test_one_pass_is_safe(s: MigrationSpec, phase: Phase, obs: Observation, dt: int) -> None:
    stored = status_in(phase)
    decision = decide(s, stored, obs, T0 + timedelta(seconds=dt))
    kinds = {a.kind for a in decision.actions}
    _safe(obs, kinds)
    if phase.final:
        assert decision.status == stored, "a final phase is never left"
        assert not kinds
    if s.dry_run and phase in (Phase.PENDING, Phase.QUEUED, Phase.VALIDATING):
        assert not kinds & {ActionKind.START_JOB, ActionKind.DISPOSE_SOURCE}, "a dry run moves nothing"


@settings(max_examples=200, deadline=None)
@given(s=specs, run=st.lists(st.tuples(observations, st.integers(1, 120)), min_size=1, max_size=25))
def test_any_sequence_of_passes(s: MigrationSpec, run: list[tuple[Observation, int]]) -> None:
    """Over a whole life: percent never goes backwards, final phases stick, and every pass is safe."""
    status: MigrationStatus | None = None
    now = T0
    percent = 0
    final: Phase | None = None
    for obs, step in run:
        now += timedelta(seconds=step)
        decision = decide(s, status, obs, now)
        status = decision.status
        _safe(obs, {a.kind for a in decision.actions})
        if status.progress is not None:
            assert status.progress.percent >= percent
            percent = status.progress.percent
        if final is not None:
            assert status.phase == final
        if status.phase.final:
            final = status.phase
        assert status.attempts <= s.retry.max_attempts


@settings(max_examples=300, deadline=None)
@given(
    s=specs,
    phase=st.sampled_from([Phase.TRANSFERRING, Phase.SWITCHOVER, Phase.ROLLING_BACK]),
    job_state=st.sampled_from(list(JobState)),
    source_ve=ves,
    target_ve=active_ves,
    dt=seconds,
)
def test_cleanup_target_is_never_decided_while_the_target_ve_is_active(
    s: MigrationSpec, phase: Phase, job_state: JobState, source_ve: VEFacts | None, target_ve: VEFacts, dt: int
) -> None:
    """Both hosts answer and this migration left something on the target, the most tempting case for a
    cleanup; whatever the job says, two passes in a row never remove an active target copy."""
    obs = observation(
        job=JobObservation(state=job_state), source_ve=source_ve, target_ve=target_ve, target_leftovers=True
    )
    status: MigrationStatus | None = status_in(phase)
    for n in range(2):
        decision = decide(s, status, obs, T0 + timedelta(seconds=dt + n))
        assert ActionKind.CLEANUP_TARGET not in {a.kind for a in decision.actions}, decision.status.phase
        _safe(obs, {a.kind for a in decision.actions})
        status = decision.status
