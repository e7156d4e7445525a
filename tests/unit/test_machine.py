"""The phase machine as tables: given this stored phase and this observation, the decision is ..."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import pytest

from tests.unit.builders import (
    GIB,
    T0,
    host_facts,
    job,
    later,
    observation,
    running_job,
    spec,
    status_in,
    ve,
)
from vemigrate.api.common import ConditionStatus
from vemigrate.api.host import VEKind
from vemigrate.api.migration import (
    ConditionType,
    Failure,
    MigrationStatus,
    Mode,
    Phase,
    Progress,
    QueueCause,
    SourceDisposition,
)
from vemigrate.core.conditions import find
from vemigrate.core.decision import Action, ActionKind
from vemigrate.core.machine import decide
from vemigrate.core.observation import (
    ErrorClass,
    HostObservation,
    JobState,
    JobStats,
    OtherMigration,
    VEState,
)


@dataclass
class Case:
    name: str
    status: MigrationStatus | None
    obs: dict[str, Any] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=dict)
    now_after: float = 1.0
    phase: Phase = Phase.PENDING
    actions: tuple[Action, ...] = ()
    reason: str | None = None  # failure.reason, or the Succeeded condition's reason
    message: str | None = None  # a piece of the Progressing or failure message
    cause: QueueCause | None = None  # the Progressing condition's reason, when it ends Queued

    def __str__(self) -> str:
        return self.name


def other(phase: Phase, *, source: str = "node-x", target: str = "node-y", ve_name: str = "other", **kw: Any) -> Any:
    data: dict[str, Any] = {
        "uid": f"uid-{phase.value}-{source}-{target}-{ve_name}",
        "created": T0 - timedelta(minutes=5),
        "phase": phase.value,
        "source_host": source,
        "target_host": target,
        "ve_name": ve_name,
    }
    data.update(kw)
    return OtherMigration(**data)


START_LIVE = (Action(ActionKind.START_JOB, mode=Mode.LIVE),)
ABORT = (Action(ActionKind.ABORT_JOB),)
MISSING_HOST = HostObservation(name="node-b", reachable=None, exists=False)
DOWN = HostObservation(name="node-a", reachable=False, error="connection refused")

CASES = [
    # -- Pending and Queued: admission ---------------------------------------------------------
    Case("new migration starts validating", None, phase=Phase.VALIDATING),
    Case(
        "maintenance window not yet open",
        None,
        spec={"notBefore": later(3600).isoformat()},
        phase=Phase.QUEUED,
        message="maintenance window",
        cause=QueueCause.MAINTENANCE_WINDOW,
    ),
    Case(
        "maintenance window open",
        status_in(Phase.QUEUED, attempts=0),
        spec={"notBefore": later(-10).isoformat()},
        phase=Phase.VALIDATING,
    ),
    Case(
        "cluster limit reached",
        None,
        obs={"cluster_limit": 1, "others": (other(Phase.TRANSFERRING),)},
        phase=Phase.QUEUED,
        message="Cluster limit: 1 of 1",
        cause=QueueCause.CONCURRENCY_LIMIT,
    ),
    Case(
        "source outbound limit reached",
        None,
        obs={
            "source": HostObservation(name="node-a", reachable=True, facts=host_facts(), max_outbound=1),
            "others": (other(Phase.TRANSFERRING, source="node-a"),),
        },
        phase=Phase.QUEUED,
        message="'node-a' limit: 1 of 1 outbound",
        cause=QueueCause.CONCURRENCY_LIMIT,
    ),
    Case(
        "target inbound limit reached",
        None,
        obs={
            "target": HostObservation(name="node-b", reachable=True, facts=host_facts(), max_inbound=2),
            "others": (other(Phase.VALIDATING, target="node-b"), other(Phase.FINALIZING, target="node-b")),
        },
        phase=Phase.QUEUED,
        message="'node-b' limit: 2 of 2 inbound",
        cause=QueueCause.CONCURRENCY_LIMIT,
    ),
    Case(
        "finished and younger queued migrations take no slot",
        None,
        obs={
            "cluster_limit": 1,
            "others": (
                other(Phase.SUCCEEDED),
                other(Phase.FAILED),
                other(Phase.QUEUED, created=T0 + timedelta(seconds=1)),
            ),
        },
        phase=Phase.VALIDATING,
    ),
    Case(
        "an older queued migration takes the last slot first",
        None,
        obs={"cluster_limit": 1, "others": (other(Phase.QUEUED, name="early"),)},
        phase=Phase.QUEUED,
        message="Behind early, queued earlier, for a cluster-wide slot (0 of 1 migrations in flight)",
        cause=QueueCause.CONCURRENCY_LIMIT,
    ),
    Case(
        "an older unfinished migration of the same VE wins",
        None,
        obs={"others": (other(Phase.TRANSFERRING, source="node-a", ve_name="web1"),)},
        phase=Phase.FAILED,
        reason="DuplicateMigration",
    ),
    Case(
        "a newer migration of the same VE already under way wins too: two must never run",
        None,
        obs={"others": (other(Phase.VALIDATING, source="node-a", ve_name="web1", created=T0 + timedelta(minutes=5)),)},
        phase=Phase.FAILED,
        reason="DuplicateMigration",
        message="is already under way",
    ),
    Case(
        "a newer migration of the same VE still waiting loses",
        None,
        obs={"others": (other(Phase.QUEUED, source="node-a", ve_name="web1", created=T0 + timedelta(minutes=5)),)},
        phase=Phase.VALIDATING,
    ),
    Case(
        "a finished migration of the same VE is no duplicate",
        None,
        obs={"others": (other(Phase.SUCCEEDED, source="node-a", ve_name="web1"),)},
        phase=Phase.VALIDATING,
    ),
    Case(
        "unknown host: wait for it to be created",
        None,
        obs={"target": MISSING_HOST},
        phase=Phase.QUEUED,
        message="Waiting for HypervisorHost 'node-b'",
        cause=QueueCause.WAITING_FOR_HOST,
    ),
    Case(
        "unknown host for longer than the progress timeout",
        status_in(Phase.QUEUED, attempts=0),
        obs={"target": MISSING_HOST},
        now_after=301,
        phase=Phase.FAILED,
        reason="HostNotFound",
    ),
    Case(
        "retry backoff not over",
        status_in(Phase.QUEUED, next_attempt_time=later(60)),
        phase=Phase.QUEUED,
        message="next attempt at",
        cause=QueueCause.RETRY_BACKOFF,
    ),
    Case(
        "retry backoff over",
        status_in(Phase.QUEUED, next_attempt_time=later(60)),
        now_after=61,
        phase=Phase.VALIDATING,
    ),
    # -- Validating --------------------------------------------------------------------------
    Case("running VE: live", status_in(Phase.VALIDATING), phase=Phase.TRANSFERRING, actions=START_LIVE),
    Case(
        "paused VE: live",
        status_in(Phase.VALIDATING),
        obs={"source_ve": ve(state=VEState.PAUSED)},
        phase=Phase.TRANSFERRING,
        actions=START_LIVE,
    ),
    Case(
        "stopped VE: offline",
        status_in(Phase.VALIDATING),
        obs={"source_ve": ve(state=VEState.STOPPED)},
        phase=Phase.TRANSFERRING,
        actions=(Action(ActionKind.START_JOB, mode=Mode.OFFLINE),),
    ),
    Case(
        "suspended VE: offline",
        status_in(Phase.VALIDATING),
        obs={"source_ve": ve(state=VEState.SUSPENDED)},
        phase=Phase.TRANSFERRING,
        actions=(Action(ActionKind.START_JOB, mode=Mode.OFFLINE),),
    ),
    Case(
        "dry run: checks only",
        status_in(Phase.VALIDATING),
        spec={"dryRun": True},
        phase=Phase.SUCCEEDED,
        reason="DryRun",
    ),
    Case(
        "a failing check fails the migration",
        status_in(Phase.VALIDATING),
        obs={"source_ve": ve(snapshots=2)},
        phase=Phase.FAILED,
        reason="PreflightFailed",
        message="NoSnapshots",
    ),
    Case(
        "dry run with a failing check fails",
        status_in(Phase.VALIDATING),
        spec={"dryRun": True},
        obs={"source_ve": ve(linked_clone=True)},
        phase=Phase.FAILED,
        reason="PreflightFailed",
    ),
    Case(
        "a skipped check does not fail",
        status_in(Phase.VALIDATING),
        spec={"checks": {"skip": ["NoSnapshots"]}},
        obs={"source_ve": ve(snapshots=2)},
        phase=Phase.TRANSFERRING,
        actions=START_LIVE,
    ),
    Case(
        "VE already on the target and gone from the source",
        status_in(Phase.VALIDATING),
        obs={"source_ve": None, "target_ve": ve()},
        phase=Phase.SUCCEEDED,
        reason="AlreadyOnTarget",
    ),
    Case(
        "VE on neither host",
        status_in(Phase.VALIDATING),
        obs={"source_ve": None},
        phase=Phase.FAILED,
        reason="VENotFound",
    ),
    Case(
        "source unreachable: wait",
        status_in(Phase.VALIDATING),
        obs={"source": DOWN, "source_ve": None, "job": None},
        phase=Phase.VALIDATING,
        message="connection refused",
    ),
    Case(
        "source unreachable past the progress timeout",
        status_in(Phase.VALIDATING),
        obs={"source": DOWN, "source_ve": None, "job": None},
        now_after=301,
        phase=Phase.FAILED,
        reason="HostUnreachable",
    ),
    Case(
        "source unreachable past the timeout, retries left",
        status_in(Phase.VALIDATING),
        spec={"retry": {"maxAttempts": 3, "backoffSeconds": 10}},
        obs={"source": DOWN, "source_ve": None, "job": None},
        now_after=301,
        phase=Phase.QUEUED,
        message="Attempt 1 of 3 failed (HostUnreachable)",
        cause=QueueCause.RETRY_BACKOFF,
    ),
    Case(
        "wrong SSH key: fail at once with the specific reason",
        status_in(Phase.VALIDATING),
        obs={
            "target": HostObservation(
                name="node-b",
                reachable=False,
                error="root@192.0.2.2:22 refused the credentials from the Secret",
                error_reason="AuthenticationFailed",
                permanent=True,
            )
        },
        phase=Phase.FAILED,
        reason="AuthenticationFailed",
        message="refused the credentials",
    ),
    Case(
        "a job of ours already runs (restart after start, before status write)",
        status_in(Phase.VALIDATING),
        obs={"job": running_job(bytes_processed=10, bytes_total=100)},
        phase=Phase.TRANSFERRING,
    ),
    # -- Transferring and Switchover ---------------------------------------------------------
    Case(
        "job running: progress",
        status_in(Phase.TRANSFERRING),
        obs={"job": running_job(bytes_processed=GIB, bytes_total=4 * GIB)},
        phase=Phase.TRANSFERRING,
    ),
    Case(
        "job in switchover",
        status_in(Phase.TRANSFERRING),
        obs={"job": job(JobState.SWITCHOVER, stats=JobStats(bytes_processed=GIB, bytes_total=GIB))},
        phase=Phase.SWITCHOVER,
    ),
    Case(
        "source unreachable mid-transfer: wait, never abort",
        status_in(Phase.TRANSFERRING),
        obs={"source": DOWN, "job": None, "source_ve": None},
        now_after=10_000,
        phase=Phase.TRANSFERRING,
        message="Cannot observe the migration job on 'node-a': connection refused",
    ),
    Case(
        "the job's read timed out mid-transfer: said as it is, wait, never abort",
        status_in(Phase.TRANSFERRING),
        obs={
            "source": HostObservation(
                name="node-a", reachable=False, error="reading job statistics on node-a did not finish in 30 s"
            ),
            "job": None,
        },
        phase=Phase.TRANSFERRING,
        message="Cannot observe the migration job on 'node-a': reading job statistics on node-a did not finish in 30 s",
    ),
    Case(
        "no job yet (start not done): start it",
        status_in(Phase.TRANSFERRING),
        obs={"job": job(JobState.NONE)},
        phase=Phase.TRANSFERRING,
        actions=START_LIVE,
    ),
    Case(
        "job completed, target verified: dispose of the source",
        status_in(Phase.TRANSFERRING),
        obs={"job": job(JobState.COMPLETED, stats=JobStats(downtime_ms=80)), "target_verified": True},
        phase=Phase.FINALIZING,
        actions=(Action(ActionKind.DISPOSE_SOURCE, disposition=SourceDisposition.REMOVED),),
    ),
    Case(
        "job failed, retryable",
        status_in(Phase.TRANSFERRING),
        obs={
            "job": job(
                JobState.FAILED, error_reason="ConnectionLost", error_message="EOF", error_class=ErrorClass.RETRYABLE
            )
        },
        phase=Phase.ROLLING_BACK,
        actions=ABORT,
        reason="ConnectionLost",
    ),
    Case(
        "job lost with the VE running on the target and gone from the source: stop, touch nothing",
        status_in(Phase.SWITCHOVER),
        spec={"retry": {"maxAttempts": 3}},
        obs={
            "job": job(JobState.FAILED, error_reason="JobLost", error_class=ErrorClass.RETRYABLE),
            "source_ve": None,
            "target_ve": ve(),
        },
        phase=Phase.FAILED,
        reason="NeedsAttention",
        message="source 'node-a' has no VE 'web1', target 'node-b' has 'web1' running",
    ),
    Case(
        "job failed after post-copy failed: stop at once, no abort, no rollback",
        status_in(Phase.SWITCHOVER),
        obs={
            "job": job(JobState.FAILED, error_reason="MigrationFailed", error_message="post-copy failed"),
            "source_ve": ve(state=VEState.PAUSED, post_copy_failed=True),
            "target_ve": ve(state=VEState.PAUSED, post_copy_failed=True),
        },
        phase=Phase.FAILED,
        reason="NeedsAttention",
        message="'web1' paused after a failed post-copy",
    ),
    Case(
        "live job failed and the source not observed (a read timed out): wait, never roll back unseen",
        status_in(Phase.SWITCHOVER),
        obs={
            "job": job(JobState.FAILED, error_reason="ConnectionLost", error_class=ErrorClass.RETRYABLE),
            "source": DOWN,
            "source_ve": None,
            "target": HostObservation(name="node-b", reachable=False, error="no route to host"),
            "target_ve": None,
        },
        phase=Phase.SWITCHOVER,
        message="waiting to observe the VE before deciding whether a rollback is safe",
    ),
    Case(
        "live job failed, the VE gone from the source and the target not observed: wait",
        status_in(Phase.SWITCHOVER),
        obs={
            "job": job(JobState.FAILED, error_reason="ConnectionLost", error_class=ErrorClass.RETRYABLE),
            "source_ve": None,
            "target": HostObservation(name="node-b", reachable=False, error="no route to host"),
            "target_ve": None,
        },
        phase=Phase.SWITCHOVER,
        message="waiting to observe the VE",
    ),
    Case(
        "live job failed in Switchover, the source seen, the target not observed: wait for both",
        status_in(Phase.SWITCHOVER),
        obs={
            "job": job(JobState.FAILED, error_reason="ConnectionLost", error_class=ErrorClass.RETRYABLE),
            "source_ve": ve(state=VEState.PAUSED),
            "target": HostObservation(name="node-b", reachable=False, error="no route to host"),
            "target_ve": None,
        },
        phase=Phase.SWITCHOVER,
        message="waiting to observe the VE",
    ),
    Case(
        "live job failed, the VE seen running on the source, the target not observed: roll back",
        status_in(Phase.TRANSFERRING),
        obs={
            "job": job(JobState.FAILED, error_reason="ConnectionLost", error_class=ErrorClass.RETRYABLE),
            "target": HostObservation(name="node-b", reachable=False, error="no route to host"),
            "target_ve": None,
        },
        phase=Phase.ROLLING_BACK,
        actions=ABORT,
        reason="ConnectionLost",
    ),
    Case(
        "offline job failed, the source not observed: roll back (a stopped source VE is whole)",
        status_in(Phase.TRANSFERRING, mode="Offline"),
        obs={"job": job(JobState.FAILED, error_reason="NoSpace"), "source": DOWN, "source_ve": None},
        phase=Phase.ROLLING_BACK,
        actions=ABORT,
        reason="NoSpace",
    ),
    Case(
        "job failed with post-copy still under way on the source, the target unreachable: stop, no rollback",
        status_in(Phase.SWITCHOVER),
        obs={
            "job": job(JobState.FAILED, error_reason="ConnectionLost", error_class=ErrorClass.RETRYABLE),
            "source_ve": ve(state=VEState.MIGRATING, in_post_copy=True),
            "target": DOWN,
            "target_ve": None,
        },
        phase=Phase.FAILED,
        reason="NeedsAttention",
        message="source 'node-a' has 'web1' migrating in post-copy",
    ),
    Case(
        "job failed while the target still holds the incoming VE: roll back as usual",
        status_in(Phase.TRANSFERRING),
        obs={"job": job(JobState.FAILED, error_reason="MigrationFailed"), "target_ve": ve(state=VEState.MIGRATING)},
        phase=Phase.ROLLING_BACK,
        actions=ABORT,
        reason="MigrationFailed",
    ),
    Case(
        "no progress for progressSeconds",
        status_in(
            Phase.TRANSFERRING,
            progress=Progress(percent=10, bytes_processed=100, bytes_total=1000, last_progress_time=T0),
        ),
        obs={"job": running_job(bytes_processed=100, bytes_total=1000)},
        now_after=301,
        phase=Phase.ROLLING_BACK,
        actions=ABORT,
        reason="ProgressTimeout",
    ),
    Case(
        "completion deadline passed, no post-copy",
        status_in(Phase.TRANSFERRING),
        obs={"job": running_job(bytes_processed=GIB, bytes_total=2 * GIB)},
        now_after=601,  # 2 GiB at 300 s per GiB
        phase=Phase.ROLLING_BACK,
        actions=ABORT,
        reason="CompletionTimeout",
    ),
    Case(
        "completion deadline not yet passed",
        status_in(Phase.TRANSFERRING),
        obs={"job": running_job(bytes_processed=GIB, bytes_total=2 * GIB)},
        now_after=299,
        phase=Phase.TRANSFERRING,
    ),
    Case(
        "completion deadline passed with post-copy: force completion",
        status_in(Phase.TRANSFERRING),
        spec={"postCopy": True},
        obs={"job": running_job(bytes_processed=GIB, bytes_total=GIB)},
        now_after=301,
        phase=Phase.SWITCHOVER,
        actions=(Action(ActionKind.FORCE_COMPLETE),),
        message="Completion deadline passed: switching to post-copy",
    ),
    Case(
        "ForceComplete requested",
        status_in(Phase.TRANSFERRING),
        spec={"action": "ForceComplete"},
        obs={"job": running_job(bytes_processed=GIB, bytes_total=4 * GIB)},
        phase=Phase.SWITCHOVER,
        actions=(Action(ActionKind.FORCE_COMPLETE),),
        message="ForceComplete requested: pausing the source",
    ),
    Case(
        "ForceComplete already under way: asked again, the phase stays",
        status_in(Phase.SWITCHOVER),
        spec={"action": "ForceComplete"},
        obs={"job": running_job(bytes_processed=GIB, bytes_total=4 * GIB)},
        phase=Phase.SWITCHOVER,
        actions=(Action(ActionKind.FORCE_COMPLETE),),
    ),
    Case(
        "post-copy running: cancel is too late",
        status_in(Phase.SWITCHOVER),
        spec={"action": "Cancel"},
        obs={"job": job(JobState.POST_COPY)},
        phase=Phase.SWITCHOVER,
        message="Cancel ignored",
    ),
    # -- Finalizing --------------------------------------------------------------------------
    Case(
        "verified, VM source not yet removed",
        status_in(Phase.FINALIZING),
        obs={"target_verified": True, "target_ve": ve(), "job": job(JobState.COMPLETED)},
        phase=Phase.FINALIZING,
        actions=(Action(ActionKind.DISPOSE_SOURCE, disposition=SourceDisposition.REMOVED),),
    ),
    Case(
        "verified, container source renamed .migrated",
        status_in(Phase.FINALIZING),
        obs={
            "target_verified": True,
            "source_ve": ve(type=VEKind.CONTAINER, state=VEState.STOPPED),
            "job": job(JobState.COMPLETED),
        },
        phase=Phase.FINALIZING,
        actions=(Action(ActionKind.DISPOSE_SOURCE, disposition=SourceDisposition.RENAMED_MIGRATED),),
    ),
    Case(
        "verified and source removed",
        status_in(Phase.FINALIZING),
        obs={"target_verified": True, "source_disposed": True, "source_ve": None, "target_ve": ve()},
        phase=Phase.SUCCEEDED,
        reason="Migrated",
    ),
    Case(
        "clone: source kept",
        status_in(Phase.FINALIZING),
        spec={"clone": True},
        obs={"target_verified": True, "target_ve": ve(uuid="new-uuid")},
        phase=Phase.SUCCEEDED,
        reason="Migrated",
    ),
    Case(
        "target copy does not verify: both copies left alone",
        status_in(Phase.FINALIZING),
        obs={"target_verified": False},
        phase=Phase.FAILED,
        reason="TargetVerificationFailed",
    ),
    Case(
        "target unreachable while finalizing: wait",
        status_in(Phase.FINALIZING),
        obs={"target_verified": None},
        now_after=10_000,
        phase=Phase.FINALIZING,
    ),
    # -- RollingBack -------------------------------------------------------------------------
    Case(
        "job still running: abort again",
        status_in(Phase.ROLLING_BACK, failure=Failure(phase=Phase.TRANSFERRING, reason="X", retryable=False)),
        obs={"job": running_job()},
        phase=Phase.ROLLING_BACK,
        actions=ABORT,
    ),
    Case(
        "job gone, target has leftovers: clean them",
        status_in(Phase.ROLLING_BACK, failure=Failure(phase=Phase.TRANSFERRING, reason="X", retryable=False)),
        obs={"job": job(JobState.FAILED), "target_leftovers": True},
        phase=Phase.ROLLING_BACK,
        actions=(Action(ActionKind.CLEANUP_TARGET),),
    ),
    Case(
        "rolled back, permanent failure",
        status_in(Phase.ROLLING_BACK, failure=Failure(phase=Phase.TRANSFERRING, reason="X", retryable=False)),
        obs={"job": job(JobState.FAILED)},
        phase=Phase.FAILED,
        reason="X",
    ),
    Case(
        "rolled back, retryable, attempts left",
        status_in(Phase.ROLLING_BACK, failure=Failure(phase=Phase.TRANSFERRING, reason="X", retryable=True)),
        spec={"retry": {"maxAttempts": 2, "backoffSeconds": 30}},
        obs={"job": job(JobState.CANCELLED)},
        phase=Phase.QUEUED,
        message="Attempt 1 of 2 failed (X)",
        cause=QueueCause.RETRY_BACKOFF,
    ),
    Case(
        "rolled back, retryable, no attempts left",
        status_in(
            Phase.ROLLING_BACK, attempts=2, failure=Failure(phase=Phase.TRANSFERRING, reason="X", retryable=True)
        ),
        spec={"retry": {"maxAttempts": 2}},
        obs={"job": job(JobState.CANCELLED)},
        phase=Phase.FAILED,
        reason="X",
    ),
    Case(
        "source copy missing after rollback: never clean the target",
        status_in(Phase.ROLLING_BACK, failure=Failure(phase=Phase.TRANSFERRING, reason="X")),
        obs={"job": job(JobState.FAILED), "source_ve": None, "target_leftovers": True},
        phase=Phase.FAILED,
        reason="RollbackIncomplete",
    ),
    Case(
        "post-copy failed: target runs, source paused: stop, never clean the target",
        status_in(Phase.ROLLING_BACK, failure=Failure(phase=Phase.SWITCHOVER, reason="MigrationFailed")),
        obs={
            "job": job(JobState.FAILED),
            "source_ve": ve(state=VEState.PAUSED, post_copy_failed=True),
            "target_ve": ve(state=VEState.RUNNING),
            "target_leftovers": True,
        },
        phase=Phase.FAILED,
        reason="NeedsAttention",
        message="source 'node-a' has 'web1' paused after a failed post-copy, target 'node-b' has 'web1' running",
    ),
    Case(
        "an abort raced completion: the VE runs on the target, the source is shut off: stop",
        status_in(Phase.ROLLING_BACK, failure=Failure(phase=Phase.TRANSFERRING, reason="Cancelled")),
        spec={"action": "Cancel"},
        obs={
            "job": job(JobState.CANCELLED),
            "source_ve": ve(state=VEState.STOPPED),
            "target_ve": ve(state=VEState.RUNNING),
            "target_leftovers": True,
        },
        phase=Phase.FAILED,
        reason="NeedsAttention",
        message="Nothing was stopped or removed",
    ),
    Case(
        "the target still holds the paused incoming VE: wait, never clean it",
        status_in(Phase.ROLLING_BACK, failure=Failure(phase=Phase.TRANSFERRING, reason="X")),
        obs={"job": job(JobState.FAILED), "target_ve": ve(state=VEState.MIGRATING), "target_leftovers": True},
        now_after=30,
        phase=Phase.ROLLING_BACK,
        message="still paused for the stopped migration",
    ),
    Case(
        "a short progressSeconds still gives libvirt a minute to remove the paused incoming VE",
        status_in(Phase.ROLLING_BACK, failure=Failure(phase=Phase.TRANSFERRING, reason="X")),
        obs={"job": job(JobState.FAILED), "target_ve": ve(state=VEState.MIGRATING), "target_leftovers": True},
        spec={"timeouts": {"progressSeconds": 10}},
        now_after=45,
        phase=Phase.ROLLING_BACK,
        message="still paused for the stopped migration",
    ),
    Case(
        "the target's incoming VE stays paused past a minute when progressSeconds is shorter: stop",
        status_in(Phase.ROLLING_BACK, failure=Failure(phase=Phase.TRANSFERRING, reason="X")),
        obs={"job": job(JobState.FAILED), "target_ve": ve(state=VEState.MIGRATING), "target_leftovers": True},
        spec={"timeouts": {"progressSeconds": 10}},
        now_after=61,
        phase=Phase.FAILED,
        reason="NeedsAttention",
        message="stayed paused for the migration 61 s",
    ),
    Case(
        "the target's incoming VE stays paused past progressSeconds: stop",
        status_in(Phase.ROLLING_BACK, failure=Failure(phase=Phase.TRANSFERRING, reason="X")),
        obs={"job": job(JobState.FAILED), "target_ve": ve(state=VEState.MIGRATING), "target_leftovers": True},
        now_after=301,
        phase=Phase.FAILED,
        reason="NeedsAttention",
        message="stayed paused for the migration 301 s",
    ),
    Case(
        "failed pre-copy: source runs, target copy defined but inactive: clean it",
        status_in(Phase.ROLLING_BACK, failure=Failure(phase=Phase.TRANSFERRING, reason="X")),
        obs={"job": job(JobState.FAILED), "target_ve": ve(state=VEState.STOPPED), "target_leftovers": True},
        phase=Phase.ROLLING_BACK,
        actions=(Action(ActionKind.CLEANUP_TARGET),),
    ),
    Case(
        "completed before the abort arrived: finish",
        status_in(Phase.ROLLING_BACK, failure=Failure(phase=Phase.TRANSFERRING, reason="X")),
        obs={"job": job(JobState.COMPLETED), "target_verified": True, "source_disposed": False},
        phase=Phase.FINALIZING,
        actions=(Action(ActionKind.DISPOSE_SOURCE, disposition=SourceDisposition.REMOVED),),
    ),
    Case(
        "rolling back with the source unreachable: wait",
        status_in(Phase.ROLLING_BACK, failure=Failure(phase=Phase.TRANSFERRING, reason="X")),
        obs={"job": None, "source": DOWN, "source_ve": None, "target_leftovers": True},
        now_after=10_000,
        phase=Phase.ROLLING_BACK,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_transition(case: Case) -> None:
    obs = observation(**case.obs)
    decision = decide(spec(**case.spec), case.status, obs, later(case.now_after))
    status = decision.status
    assert status.phase == case.phase
    assert decision.actions == case.actions
    if case.reason is not None:
        if status.phase == Phase.SUCCEEDED:
            succeeded = find(status.conditions, ConditionType.SUCCEEDED)
            assert succeeded is not None and succeeded.reason == case.reason
        else:
            assert status.failure is not None and status.failure.reason == case.reason
    if case.message is not None:
        texts = [c.message for c in status.conditions] + [status.queued_reason or ""]
        texts += [status.failure.message if status.failure else ""]
        assert any(case.message in t for t in texts), texts
    if status.phase == Phase.QUEUED:
        progressing = find(status.conditions, ConditionType.PROGRESSING)
        assert case.cause is not None, "a Queued case names its cause"
        assert progressing is not None and (progressing.status, progressing.reason) == ("False", case.cause)
    if status.phase != (case.status.phase if case.status else Phase.PENDING):
        assert decision.events, "every phase change is announced with an Event"
        assert status.phase_transitions[-1].phase == status.phase


NON_FINAL = [p for p in Phase if not p.final]


@pytest.mark.parametrize("phase", NON_FINAL, ids=str)
@pytest.mark.parametrize("by", ["action", "deletion"])
def test_cancel_in_every_non_final_phase(phase: Phase, by: str) -> None:
    """Cancel never removes anything: it ends Cancelled, or rolls back first, or (too late) finishes."""
    stored = status_in(phase, failure=Failure(phase=Phase.TRANSFERRING, reason="Cancelled"))
    obs = observation(
        job=running_job(bytes_processed=1, bytes_total=10)
        if phase in (Phase.TRANSFERRING, Phase.SWITCHOVER)
        else job(JobState.FAILED if phase == Phase.ROLLING_BACK else JobState.NONE),
        target_verified=True if phase == Phase.FINALIZING else None,
        deleting=by == "deletion",
    )
    decision = decide(spec(action="Cancel") if by == "action" else spec(), stored, obs, later(5))
    kinds = {a.kind for a in decision.actions}
    assert ActionKind.START_JOB not in kinds
    assert ActionKind.CLEANUP_TARGET not in kinds  # nothing left on the target in this observation
    expected = {
        Phase.PENDING: Phase.CANCELLED,
        Phase.QUEUED: Phase.CANCELLED,
        Phase.VALIDATING: Phase.CANCELLED,
        Phase.TRANSFERRING: Phase.ROLLING_BACK,
        Phase.SWITCHOVER: Phase.ROLLING_BACK,
        Phase.FINALIZING: Phase.FINALIZING,  # the copy is complete: finishing is the safe way out
        Phase.ROLLING_BACK: Phase.CANCELLED,
    }[phase]
    assert decision.status.phase == expected
    if expected == Phase.ROLLING_BACK:
        assert kinds == {ActionKind.ABORT_JOB}
    if expected == Phase.FINALIZING:
        assert kinds == {ActionKind.DISPOSE_SOURCE}
        progressing = find(decision.status.conditions, ConditionType.PROGRESSING)
        assert progressing is not None and "Cancel ignored" in progressing.message
    if expected == Phase.CANCELLED:
        assert decision.status.failure is not None and decision.status.failure.reason == "Cancelled"
        assert decision.release_finalizer == (by == "deletion")


def test_needs_attention_keeps_the_cause_and_is_never_retried() -> None:
    stored = status_in(
        Phase.ROLLING_BACK,
        failure=Failure(phase=Phase.SWITCHOVER, reason="MigrationFailed", message="EOF", retryable=True),
    )
    obs = observation(
        job=job(JobState.FAILED),
        source_ve=ve(state=VEState.PAUSED, post_copy_failed=True),
        target_ve=ve(state=VEState.PAUSED, post_copy_failed=True),
        target_leftovers=True,
    )
    decision = decide(spec(retry={"maxAttempts": 3}), stored, obs, later(5))
    failure = decision.status.failure
    assert decision.status.phase == Phase.FAILED and decision.actions == ()
    assert failure is not None and (failure.phase, failure.reason, failure.retryable) == (
        Phase.SWITCHOVER,
        "NeedsAttention",
        False,
    )
    assert "Rolling back after MigrationFailed: EOF" in failure.message
    assert "virsh migrate --postcopy --postcopy-resume" in failure.message
    assert "docs/runbooks/NeedsAttention.md" in failure.message
    assert decision.status.next_attempt_time is None


@pytest.mark.parametrize("phase", [Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED], ids=str)
def test_deleting_a_final_migration_touches_nothing(phase: Phase) -> None:
    stored = status_in(phase)
    decision = decide(spec(), stored, observation(deleting=True, source_ve=None, target_ve=ve()), later(1))
    assert decision.status == stored
    assert decision.actions == ()
    assert decision.events == ()
    assert decision.release_finalizer


def test_full_live_migration_walk() -> None:
    """One migration from creation to Succeeded, each pass fed the previous pass's status."""
    s = spec()
    status: MigrationStatus | None = None
    passes = [
        (observation(), Phase.VALIDATING),
        (observation(), Phase.TRANSFERRING),
        (observation(job=running_job(bytes_processed=GIB, bytes_total=2 * GIB)), Phase.TRANSFERRING),
        (observation(job=job(JobState.SWITCHOVER, stats=JobStats(bytes_processed=2 * GIB))), Phase.SWITCHOVER),
        (
            observation(job=job(JobState.COMPLETED, stats=JobStats(downtime_ms=90)), target_verified=None),
            Phase.FINALIZING,
        ),
        (observation(job=job(JobState.NONE), target_verified=True, source_disposed=False), Phase.FINALIZING),
        (
            observation(
                job=job(JobState.NONE), target_verified=True, source_disposed=True, source_ve=None, target_ve=ve()
            ),
            Phase.SUCCEEDED,
        ),
    ]
    for i, (obs, expected) in enumerate(passes):
        status = decide(s, status, obs, later(i * 10)).status
        assert status.phase == expected, f"pass {i}"
    assert status is not None
    assert [t.phase for t in status.phase_transitions] == [
        Phase.VALIDATING,
        Phase.TRANSFERRING,
        Phase.SWITCHOVER,
        Phase.FINALIZING,
        Phase.SUCCEEDED,
    ]
    assert status.downtime_ms == 90
    assert status.progress is not None and status.progress.percent == 100
    assert status.result is not None and status.result.source_disposition == SourceDisposition.REMOVED
    assert status.completion_time == later(60)
    conditions = {c.type: c for c in status.conditions}
    assert conditions[ConditionType.SUCCEEDED].status == ConditionStatus.TRUE
    assert conditions[ConditionType.PREFLIGHT_PASSED].status == ConditionStatus.TRUE
    assert conditions[ConditionType.PROGRESSING].status == ConditionStatus.FALSE
    assert conditions[ConditionType.FAILED].status == ConditionStatus.FALSE


@pytest.mark.parametrize(
    ("evidence", "recorded"),
    [
        (later(4), later(4)),  # what the job recorded
        (T0 - timedelta(seconds=5), later(1)),  # a source clock behind: not before Transferring began
        (later(30), later(10)),  # a source clock ahead: not after this pass
    ],
    ids=["as-recorded", "clock-behind", "clock-ahead"],
)
def test_a_switchover_no_pass_saw_is_recorded_from_the_job(evidence: Any, recorded: Any) -> None:
    """The pause lasts milliseconds, a pass comes every 2 s: the switchover is taken from the job's record,
    its time kept between the transitions around it."""
    stored = status_in(Phase.TRANSFERRING, since=later(1))
    done = job(JobState.COMPLETED, stats=JobStats(downtime_ms=42, switchover_time=evidence))
    decision = decide(spec(), stored, observation(job=done, target_verified=None), later(10))
    transitions = decision.status.phase_transitions
    assert [(t.phase, t.time) for t in transitions[-3:]] == [
        (Phase.TRANSFERRING, later(1)),
        (Phase.SWITCHOVER, recorded),
        (Phase.FINALIZING, later(10)),
    ]
    said = [e.message for e in decision.events if e.reason == "Switchover"]
    assert len(said) == 1 and "42 ms" in said[0], said


def test_no_second_switchover_when_a_pass_saw_it_and_none_for_offline_jobs() -> None:
    done = job(JobState.COMPLETED, stats=JobStats(downtime_ms=42, switchover_time=later(4)))
    seen = decide(spec(), status_in(Phase.SWITCHOVER, since=later(3)), observation(job=done), later(10)).status
    assert [t.phase for t in seen.phase_transitions].count(Phase.SWITCHOVER) == 1
    offline = status_in(Phase.TRANSFERRING, mode="Offline")
    moved = decide(spec(), offline, observation(job=done), later(10)).status
    assert Phase.SWITCHOVER not in [t.phase for t in moved.phase_transitions]


def test_status_reason_is_that_of_the_final_condition_that_is_true() -> None:
    """`kubectl get vem -o wide` shows status.reason: a printer column cannot pick the True condition."""
    succeeded = decide(
        spec(), status_in(Phase.VALIDATING), observation(source_ve=None, target_ve=ve()), later(1)
    ).status
    assert succeeded.phase == Phase.SUCCEEDED and succeeded.reason == "AlreadyOnTarget"
    failed = decide(spec(), status_in(Phase.VALIDATING), observation(source_ve=None), later(1)).status
    assert failed.phase == Phase.FAILED and failed.reason == "VENotFound"
    cancelled = decide(spec(action="Cancel"), status_in(Phase.QUEUED), observation(), later(1)).status
    assert cancelled.phase == Phase.CANCELLED and cancelled.reason == "Cancelled"
    moving = decide(spec(), status_in(Phase.VALIDATING), observation(), later(1)).status
    assert moving.phase == Phase.TRANSFERRING and moving.reason is None


def test_restart_safety_status_round_trips_through_the_api() -> None:
    """decide depends on stored status plus observation only: a status read back from the API server
    (camelCase JSON) gives the same decision as the in-memory one."""
    obs = observation(job=running_job(bytes_processed=GIB, bytes_total=4 * GIB))
    stored = status_in(Phase.TRANSFERRING)
    first = decide(spec(), stored, obs, later(30))
    reread = MigrationStatus.model_validate(stored.to_wire())
    again = decide(spec(), reread, obs, later(30))
    assert again == first
    # And a pass on the new status with the same observation is stable (no flapping, no new actions).
    settled = decide(spec(), MigrationStatus.model_validate(first.status.to_wire()), obs, later(30))
    assert settled.status.phase == first.status.phase
    assert settled.actions == ()
    assert settled.events == ()


def test_conditions_keep_transition_time_until_status_flips() -> None:
    obs = observation(job=running_job(bytes_processed=1, bytes_total=100))
    one = decide(spec(), status_in(Phase.TRANSFERRING), obs, later(10)).status
    progressing = find(one.conditions, ConditionType.PROGRESSING)
    assert progressing is not None and progressing.status == ConditionStatus.TRUE
    two = decide(
        spec(), one, replace(obs, generation=2, job=running_job(bytes_processed=5, bytes_total=100)), later(20)
    ).status
    again = find(two.conditions, ConditionType.PROGRESSING)
    assert again is not None
    assert again.last_transition_time == progressing.last_transition_time
    assert again.observed_generation == 2 and two.observed_generation == 2
    # The source drops off: Progressing flips to Unknown, and its time moves.
    three = decide(spec(), two, replace(obs, job=None, source=DOWN), later(30)).status
    unknown = find(three.conditions, ConditionType.PROGRESSING)
    assert unknown is not None and unknown.status == ConditionStatus.UNKNOWN
    assert unknown.last_transition_time == later(30)
