"""When the phase machine asks to be woken by the job's end, and when it asks to observe its own action's
result at once (one pass for Finalizing). Pure: decisions only, no driver."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from tests.unit.builders import GIB, job, later, observation, running_job, spec, status_in, ve
from vemigrate.api.migration import Phase
from vemigrate.core.decision import ActionKind
from vemigrate.core.machine import decide
from vemigrate.core.observation import JobState, JobStats


@pytest.mark.parametrize(
    ("status", "obs", "spec_"),
    [
        (status_in(Phase.VALIDATING), {}, {}),  # the job is started this pass
        (status_in(Phase.TRANSFERRING), {"job": job(JobState.NONE)}, {}),  # started again (never began)
        (status_in(Phase.TRANSFERRING), {"job": running_job(bytes_processed=GIB, bytes_total=2 * GIB)}, {}),
        (status_in(Phase.SWITCHOVER), {"job": job(JobState.SWITCHOVER)}, {}),
        (status_in(Phase.SWITCHOVER), {"job": job(JobState.POST_COPY)}, {"postCopy": True}),
        (status_in(Phase.TRANSFERRING), {"job": running_job()}, {"action": "Cancel"}),  # aborted: wait for it
        (status_in(Phase.ROLLING_BACK), {"job": running_job()}, {}),  # the abort has not landed yet
        (status_in(Phase.ROLLING_BACK), {"job": job(JobState.POST_COPY)}, {}),  # too late to abort: finishing
        # The job's read failed this pass (a timeout under load): it may still end, and that wakes a pass.
        (status_in(Phase.TRANSFERRING), {"job": None}, {}),
        (status_in(Phase.ROLLING_BACK), {"job": None}, {}),
    ],
    ids=[
        "job-started",
        "job-restarted",
        "running",
        "switchover",
        "post-copy",
        "cancel-aborts",
        "abort-pending",
        "post-copy-rolling-back",
        "job-unknown",
        "job-unknown-rolling-back",
    ],
)
def test_a_pass_waiting_on_a_running_job_asks_to_be_woken_by_its_end(
    status: Any, obs: dict[str, Any], spec_: dict[str, Any]
) -> None:
    decision = decide(spec(**spec_), status, observation(**obs), later(1))
    assert decision.wake_on_job_end
    # The poll stays: progress is sampled on it, and it is the safety net for a lost wake-up.
    assert decision.requeue_after is not None and decision.requeue_after > 0


@pytest.mark.parametrize(
    ("status", "obs"),
    [
        (None, {}),  # Pending -> Validating: no job yet
        (status_in(Phase.FINALIZING), {"target_verified": True, "source_disposed": False}),
        (status_in(Phase.ROLLING_BACK), {"job": job(JobState.CANCELLED), "target_leftovers": True}),
        (status_in(Phase.VALIDATING), {"source_ve": None}),  # Failed: final
    ],
    ids=["pending", "finalizing", "cleaning-up", "final"],
)
def test_no_job_wake_up_when_no_job_runs(status: Any, obs: dict[str, Any]) -> None:
    assert not decide(spec(), status, observation(**obs), later(1)).wake_on_job_end


def test_finalizing_observes_its_disposal_at_once_and_only_its_result_ends_it() -> None:
    """The job ends -> verified -> source disposed (acted) -> disposed -> Succeeded: the pass that acts asks
    to decide again at once, and Succeeded comes only from the disposal's result."""
    s = spec()
    ended = observation(job=job(JobState.COMPLETED, stats=JobStats(downtime_ms=80)), target_verified=True)
    first = decide(s, status_in(Phase.TRANSFERRING), ended, later(1))
    assert first.status.phase == Phase.FINALIZING
    assert [a.kind for a in first.actions] == [ActionKind.DISPOSE_SOURCE]
    assert first.observe_again and not first.wake_on_job_end

    # Not disposed (a later pass observes the source still there): no Succeeded, the disposal is asked for again.
    again = decide(s, first.status, replace(ended, source_disposed=False), later(2))
    assert again.status.phase == Phase.FINALIZING
    assert [a.kind for a in again.actions] == [ActionKind.DISPOSE_SOURCE]
    # Disposal not observable (source unreachable): wait, never Succeeded, nothing acted.
    blind = decide(s, first.status, replace(ended, source_disposed=None), later(2))
    assert blind.status.phase == Phase.FINALIZING and not blind.actions and not blind.observe_again

    done = decide(s, first.status, replace(ended, source_disposed=True, source_ve=None, target_ve=ve()), later(2))
    assert done.status.phase == Phase.SUCCEEDED and not done.actions
    assert not done.observe_again and not done.wake_on_job_end
    assert [t.phase for t in done.status.phase_transitions][-3:] == [
        Phase.TRANSFERRING,
        Phase.FINALIZING,
        Phase.SUCCEEDED,
    ]


def test_a_kept_source_succeeds_in_the_pass_that_sees_the_job_end() -> None:
    """A clone keeps its source: nothing to dispose of, nothing to observe again."""
    ended = observation(job=job(JobState.COMPLETED), target_verified=True, source_disposed=True)
    decision = decide(spec(clone=True), status_in(Phase.TRANSFERRING), ended, later(1))
    assert decision.status.phase == Phase.SUCCEEDED and not decision.actions and not decision.observe_again


@pytest.mark.parametrize("kind", [ActionKind.START_JOB, ActionKind.ABORT_JOB])
def test_actions_that_take_time_are_never_observed_again_at_once(kind: ActionKind) -> None:
    """Starting or aborting a job completes later, on the host: the job's end wakes the next pass."""
    status, obs = (
        (status_in(Phase.VALIDATING), observation())
        if kind == ActionKind.START_JOB
        else (status_in(Phase.TRANSFERRING), observation(job=running_job()))
    )
    decision = decide(spec(action="Cancel") if kind == ActionKind.ABORT_JOB else spec(), status, obs, later(1))
    assert [a.kind for a in decision.actions] == [kind]
    assert not decision.observe_again and decision.wake_on_job_end
