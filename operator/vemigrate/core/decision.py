"""What `decide` returns: the next status, the side effects to perform, and the Events to emit."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from vemigrate.api.migration import MigrationStatus, Mode, Phase, SourceDisposition
from vemigrate.api.reasons import Reason


class ActionKind(StrEnum):
    START_JOB = "StartJob"  # start the migration job keyed by the migration UID (idempotent)
    ABORT_JOB = "AbortJob"  # ask the job to stop; the source keeps running
    FORCE_COMPLETE = "ForceComplete"  # finish now: pause for switchover, or start post-copy
    CLEANUP_TARGET = "CleanupTarget"  # remove what this migration built on the target
    DISPOSE_SOURCE = "DisposeSource"  # remove or rename the source; only after the target is verified

    @property
    def failed(self) -> Reason:
        """The reason of the Warning Event when this action's driver call fails."""
        return _FAILED[self]


_FAILED = {
    ActionKind.START_JOB: Reason.START_JOB_FAILED,
    ActionKind.ABORT_JOB: Reason.ABORT_JOB_FAILED,
    ActionKind.FORCE_COMPLETE: Reason.FORCE_COMPLETE_FAILED,
    ActionKind.CLEANUP_TARGET: Reason.CLEANUP_TARGET_FAILED,
    ActionKind.DISPOSE_SOURCE: Reason.DISPOSE_SOURCE_FAILED,
}


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    mode: Mode | None = None  # START_JOB: Live or Offline
    disposition: SourceDisposition | None = None  # DISPOSE_SOURCE: Removed or RenamedMigrated


class EventType(StrEnum):
    NORMAL = "Normal"
    WARNING = "Warning"


@dataclass(frozen=True)
class Event:
    type: EventType
    reason: Reason | Phase  # a phase's name when it enters that phase
    message: str


@dataclass(frozen=True)
class Decision:
    status: MigrationStatus
    actions: tuple[Action, ...] = ()
    events: tuple[Event, ...] = ()
    requeue_after: float | None = None  # seconds until the next pass is useful; None: on the next change
    # A job runs and this migration waits for it: a pass is useful the moment it ends (the driver watches
    # its record on the host), whatever requeue_after says; requeue_after stays as the safety net.
    wake_on_job_end: bool = False
    # This pass's actions are complete when their calls return (the source disposed of): decide again at
    # once from their result, in the same pass, rather than after requeue_after. (A disposal's returning
    # is its result: reconcile folds it into the observation instead of looking again.)
    observe_again: bool = False
    release_finalizer: bool = False  # deletion may proceed: nothing of this migration is in flight
