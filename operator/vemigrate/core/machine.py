"""The phase machine: `decide(spec, status, observation, now) -> Decision`.

Pending -> Queued -> Validating -> Transferring -> Switchover (live) -> Finalizing -> Succeeded, and
from any phase RollingBack -> Failed, or Cancelled. The decision depends only on the stored status,
the spec and this pass's observation, so any pass may be the first after an operator restart.

What keeps the VE safe (DESIGN.md invariants):
- nothing is aborted, cleaned or removed on an unknown observation: the pass waits;
- DISPOSE_SOURCE is only decided once the target copy is verified;
- CLEANUP_TARGET is only decided while the complete source copy is observed, and never while the
  target copy is active (running, paused, migrating) or either copy is split by a failed post-copy:
  then the migration stops with NeedsAttention and touches nothing;
- a final phase is never left.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from vemigrate.api.checks import CheckResult
from vemigrate.api.common import ConditionStatus
from vemigrate.api.host import HostStatus
from vemigrate.api.migration import (
    Action as SpecAction,
)
from vemigrate.api.migration import (
    ConditionType,
    Failure,
    MigrationSpec,
    MigrationStatus,
    Mode,
    Phase,
    PhaseTransition,
    QueueCause,
    Result,
    SourceDisposition,
)
from vemigrate.api.reasons import Reason
from vemigrate.core import admission, deadlines, plan, progress
from vemigrate.core import checks as preflight
from vemigrate.core.conditions import find, set_condition
from vemigrate.core.decision import Action, ActionKind, Decision, Event, EventType
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

# Phases in which a migration holds a slot on its hosts.
ACTIVE_PHASES = frozenset(
    {Phase.VALIDATING, Phase.TRANSFERRING, Phase.SWITCHOVER, Phase.FINALIZING, Phase.ROLLING_BACK}
)
# Other migrations' phases arrive as plain strings (from the kopf index).
_ACTIVE_NAMES = frozenset(p.value for p in ACTIVE_PHASES)
_FINAL_NAMES = frozenset(p.value for p in Phase if p.final)
_MAX_TRANSITIONS = 64

# How soon another pass is useful, per situation (seconds).
POLL_JOB = 2.0
POLL_WAIT = 5.0
POLL_QUEUE = 10.0
# The least time a stopped migration's paused incoming VE is waited for before a person is asked: when the
# source's call that ends it on the target is lost (a slow or cut link), the target's libvirtd removes it
# only once its keepalive gives the connection up (5 probes 5 s apart by default).
SETTLE_SECONDS = 60


_QUEUE_CAUSES = frozenset(c.value for c in QueueCause)


class _Pass:
    """One decision in the making: the status being built, the actions and the Events."""

    def __init__(self, spec: MigrationSpec, status: MigrationStatus, obs: Observation, now: datetime) -> None:
        self.spec = spec
        self.status = status
        self.obs = obs
        self.now = now
        self.actions: list[Action] = []
        self.events: list[Event] = []
        self.requeue_after: float | None = None
        self.waiting_reason: tuple[Reason, str] | None = None  # (reason, message) while observing only
        self.success_reason: Reason = Reason.MIGRATED
        self.success_message = ""  # the Succeeded condition's message: what was done, without the reason
        self.phase_message: str | None = None  # why the phase changed this pass
        self.queue_cause: QueueCause | None = None  # why it waits, when it entered or stays in Queued
        self.wake_on_job_end = False
        self.observe_again = False

    # -- small verbs ---------------------------------------------------------------------------
    @property
    def cancelling(self) -> bool:
        return self.spec.action == SpecAction.CANCEL or self.obs.deleting

    def act(self, kind: ActionKind, **kwargs: object) -> None:
        self.actions.append(Action(kind, **kwargs))  # type: ignore[arg-type]

    def event(self, type_: EventType, reason: Reason | Phase, message: str) -> None:
        self.events.append(Event(type_, reason, message))

    def poll(self, seconds: float) -> None:
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)

    def until_job_ends(self) -> None:
        """The job runs: the next pass is due when it ends, or at the latest after POLL_JOB (progress)."""
        self.wake_on_job_end = True
        self.poll(POLL_JOB)

    def wait(self, reason: Reason, message: str, seconds: float = POLL_WAIT) -> None:
        """Nothing can be decided this pass: keep the phase, say why, look again later."""
        self.waiting_reason = (reason, message)
        self.poll(seconds)

    def goto(self, phase: Phase, message: str = "", *, at: datetime | None = None) -> None:
        """Enter `phase`, now, or `at` for a phase no pass saw (taken from the job's evidence)."""
        if phase == self.status.phase:
            return
        self.status.phase = phase
        transitions = [*self.status.phase_transitions, PhaseTransition(phase=phase, time=at or self.now)]
        self.status.phase_transitions = transitions[-_MAX_TRANSITIONS:]
        if phase.final:
            self.status.completion_time = self.now
        if phase != Phase.QUEUED:
            self.status.queued_reason = None
        kind = EventType.WARNING if phase in (Phase.FAILED, Phase.ROLLING_BACK) else EventType.NORMAL
        self.phase_message = message or f"Migration is {phase.value}"
        self.event(kind, phase, self.phase_message)

    def entered(self, phase: Phase) -> datetime:
        """When the current stint in `phase` began (the last transition into it)."""
        for transition in reversed(self.status.phase_transitions):
            if transition.phase == phase:
                return transition.time
        return self.now

    def fail(self, reason: Reason, message: str, *, retryable: bool = False) -> None:
        """Without a rollback: only from phases in which nothing was moved or touched."""
        self.status.failure = Failure(phase=self.status.phase, reason=reason, message=message, retryable=retryable)
        _conclude_failure(self)

    def succeed(self, reason: Reason, message: str) -> None:
        self.success_reason, self.success_message = reason, message
        self.status.failure = None
        self.status.progress = progress.completed(self.status.progress, JobStats(), self.now)
        self.goto(Phase.SUCCEEDED, f"{reason}: {message}")

    def roll_back(self, reason: Reason, message: str, *, retryable: bool) -> None:
        """Stop the job and undo the target; the final phase is decided once that is observed."""
        self.status.failure = Failure(phase=self.status.phase, reason=reason, message=message, retryable=retryable)
        self.act(ActionKind.ABORT_JOB)
        self.goto(Phase.ROLLING_BACK, f"{reason}: {message}")
        self.until_job_ends()

    def cancelled(self, message: str) -> None:
        self.status.failure = Failure(phase=self.status.phase, reason=Reason.CANCELLED, message=message)
        self.goto(Phase.CANCELLED, message)


def decide(spec: MigrationSpec, status: MigrationStatus | None, obs: Observation, now: datetime) -> Decision:
    """The next status and side effects, from the stored status and this pass's observation."""
    current = status.model_copy(deep=True) if status is not None else MigrationStatus()
    step = _Pass(spec, current, obs, now)
    if current.phase.final:
        # Final phases are never left; deletion (or GitOps pruning) touches no VE.
        return Decision(status=current, release_finalizer=obs.deleting)
    _HANDLERS[current.phase](step)
    _write_conditions(step)
    current.observed_generation = obs.generation
    return Decision(
        status=current,
        actions=tuple(step.actions),
        events=tuple(step.events),
        requeue_after=None if current.phase.final else step.requeue_after,
        wake_on_job_end=step.wake_on_job_end and not current.phase.final,
        observe_again=step.observe_again and not current.phase.final,
        release_finalizer=current.phase.final and obs.deleting,
    )


# -- waiting phases ----------------------------------------------------------------------------
def _waiting(step: _Pass) -> None:
    spec, obs, status, now = step.spec, step.obs, step.status, step.now
    if step.cancelling:
        step.cancelled("Cancelled before anything was moved")
        return
    missing = [h for h in (obs.source, obs.target) if h is not None and not h.exists]
    if missing:
        names = ", ".join(repr(h.name) for h in missing)
        created = obs.created or now
        if now - created > timedelta(seconds=spec.timeouts.progress_seconds):
            step.fail(Reason.HOST_NOT_FOUND, f"No HypervisorHost {names} in this namespace")
            return
        _queue(
            step,
            QueueCause.WAITING_FOR_HOST,
            f"Waiting for HypervisorHost {names} to exist in this namespace",
            POLL_WAIT,
        )
        return
    duplicate = _duplicate(step)
    if duplicate is not None:
        step.fail(
            Reason.DUPLICATE_MIGRATION,
            f"Migration {duplicate} of VE {spec.source.name!r} on {spec.source.host!r} {_why_first(step, duplicate)} "
            "and is not finished; this one moves nothing",
        )
        return
    if spec.not_before is not None and now < spec.not_before:
        _queue(
            step,
            QueueCause.MAINTENANCE_WINDOW,
            f"Waiting for the maintenance window at {spec.not_before.isoformat()}",
            min((spec.not_before - now).total_seconds(), POLL_QUEUE * 6),
        )
        return
    if status.next_attempt_time is not None and now < status.next_attempt_time:
        _queue(
            step,
            QueueCause.RETRY_BACKOFF,
            f"Attempt {status.attempts} of {spec.retry.max_attempts} failed "
            f"({status.failure.reason if status.failure else 'unknown'}); next attempt at "
            f"{status.next_attempt_time.isoformat()}",
            min((status.next_attempt_time - now).total_seconds(), POLL_QUEUE * 6),
        )
        return
    blocked = _admission(step)
    if blocked is not None:
        _queue(step, QueueCause.CONCURRENCY_LIMIT, blocked, POLL_QUEUE)
        return
    status.next_attempt_time = None
    status.plan = None  # an earlier attempt's: this one's is resolved by its own checks
    status.attempts += 1
    if status.start_time is None:
        status.start_time = now
    step.goto(Phase.VALIDATING, f"Attempt {status.attempts}: running pre-flight checks")
    step.poll(0)


def _queue(step: _Pass, cause: QueueCause, reason: str, seconds: float) -> None:
    step.queue_cause = cause
    step.status.queued_reason = reason
    step.goto(Phase.QUEUED, reason)
    step.poll(max(seconds, 1.0))


def _duplicate(step: _Pass) -> str | None:
    """Another unfinished migration of the same VE that goes first: one already admitted (whatever its
    age: two of them must never run), else one created before this one (ties: lower UID wins)."""
    spec, obs = step.spec, step.obs
    mine = (obs.created or step.now, obs.uid)
    same = [
        o
        for o in obs.others
        if o.source_host == spec.source.host and o.ve_name == spec.source.name and o.phase not in _FINAL_NAMES
    ]
    admitted = next((o.uid for o in same if o.phase in _ACTIVE_NAMES), None)
    return admitted or next((o.uid for o in same if (o.created, o.uid) < mine), None)


def _why_first(step: _Pass, uid: str) -> str:
    other = next(o for o in step.obs.others if o.uid == uid)
    return "is already under way" if other.phase in _ACTIVE_NAMES else "was created first"


def _admission(step: _Pass) -> str | None:
    """Why this migration may not take its slots now (concurrency limits, and its turn: first come,
    first served per slot, core/admission.py), or None."""
    obs = step.obs
    me = admission.candidate(step.spec, obs, step.now)
    blocked = admission.play(obs.others, admission.limits_of(obs), step.now, me=me).blocked.get(me.uid)
    return blocked.message if blocked is not None else None


# -- Validating -------------------------------------------------------------------------------
def _unreachable(hosts: list[HostObservation | None]) -> HostObservation | None:
    """The first host that was not reached this pass (a permanent cause first)."""
    missing = [h or HostObservation(name="?", reachable=None) for h in hosts if h is None or h.reachable is not True]
    return next((h for h in missing if h.permanent), missing[0] if missing else None)


def _host_problem(host: HostObservation) -> tuple[Reason, str]:
    detail = f": {host.error}" if host.error else ""
    return host.error_reason or Reason.HOST_UNREACHABLE, f"Host {host.name!r} not reachable{detail}"


def _validating(step: _Pass) -> None:
    spec, obs, status, now = step.spec, step.obs, step.status, step.now
    if obs.job is not None and obs.job.state != JobState.NONE and not spec.dry_run:
        # A job of ours already exists: the operator died after starting it. Adopt, never start another.
        # (A dry run never starts one, so whatever job is found, it moves nothing.)
        step.goto(Phase.TRANSFERRING, "Found this migration's job already running; re-attached")
        _transferring(step)
        return
    if step.cancelling:
        step.cancelled("Cancelled before anything was moved")
        return
    unreachable = _unreachable([obs.source, obs.target])
    if unreachable is not None:
        reason, message = _host_problem(unreachable)
        if unreachable.permanent:
            step.fail(reason, message)
        elif now - step.entered(Phase.VALIDATING) > timedelta(seconds=spec.timeouts.progress_seconds):
            step.fail(reason, message, retryable=True)
        else:
            step.wait(Reason.HOST_UNREACHABLE, message)
        return
    assert obs.source is not None and obs.target is not None
    if obs.source_ve is None:
        if obs.target_ve is not None and not spec.clone:
            status.result = Result(target_name=obs.target_ve.name, target_uuid=obs.target_ve.uuid)
            step.succeed(
                Reason.ALREADY_ON_TARGET,
                f"VE {spec.source.name!r} is on {spec.target.host!r} and gone from {spec.source.host!r}; nothing moved",
            )
            return
        step.fail(Reason.VE_NOT_FOUND, f"No VE {spec.source.name!r} on host {spec.source.host!r}")
        return
    ve = obs.source_ve
    # Resolved afresh for each attempt, from this pass's facts; recorded below when its job starts.
    resolved = plan.resolve(obs.uid, spec, ve, obs.target.facts, None)
    mode = resolved.mode
    status.mode = mode
    results = preflight.run_checks(
        preflight.CheckInput(
            spec=spec,
            plan=resolved,
            ve=ve,
            source=obs.source.facts or HostStatus(),
            target=obs.target.facts or HostStatus(),
            target_ve=obs.target_ve,
            ssh_port_open=obs.ssh_port_open,
        )
    )
    status.checks = results
    failures = [c for c in results if c.result == CheckResult.FAILED]
    if failures:
        step.fail(Reason.PREFLIGHT_FAILED, preflight.summary(results))
        return
    if spec.dry_run:
        step.succeed(Reason.DRY_RUN, f"{preflight.summary(results)}; nothing moved")
        return
    status.failure = None
    status.plan = resolved.recorded()
    step.goto(Phase.TRANSFERRING, f"Attempt {status.attempts}: {mode.value.lower()} migration started")
    step.act(ActionKind.START_JOB, mode=mode)
    step.until_job_ends()


# -- Transferring and Switchover ----------------------------------------------------------------
def _job_unobserved(step: _Pass) -> None:
    """Say what kept the job from being read: the host's own error (a libvirt call that timed out is not
    a host that is down), and wait."""
    source = step.obs.source
    why = source.error if source is not None and source.error else "the source host did not answer"
    where = f" on {source.name!r}" if source is not None else ""
    step.wait(Reason.STATE_UNKNOWN, f"Cannot observe the migration job{where}: {why}")


def _transferring(step: _Pass) -> None:
    obs, status, now = step.obs, step.status, step.now
    job = obs.job
    if job is None:
        # Invariant 3: the source host did not answer. Nothing is aborted; look again, and at once should
        # the job be seen to end (a read that timed out under load says nothing about the job itself).
        _job_unobserved(step)
        step.wake_on_job_end = True
        return
    if job.state == JobState.NONE:
        if obs.target_verified:
            _to_finalizing(step, job)
            return
        if step.cancelling:
            # Nothing running (the start never happened): rolling back only cleans the target.
            step.roll_back(Reason.CANCELLED, "Cancelled by spec.action or deletion", retryable=False)
            return
        # Drivers keep records of finished jobs, so NONE means the start never happened.
        step.act(ActionKind.START_JOB, mode=status.mode)
        step.until_job_ends()
        return
    if job.state in (JobState.RUNNING, JobState.SWITCHOVER, JobState.POST_COPY):
        status.progress = progress.advance(status.progress, job.stats, now)
        _running(step, job)
        return
    if job.state == JobState.COMPLETED:
        _to_finalizing(step, job)
        return
    # FAILED or CANCELLED (an abort we did not ask for counts as a failure).
    reason = job.error_reason or (Reason.ABORTED if job.state == JobState.CANCELLED else Reason.MIGRATION_FAILED)
    message = job.error_message or f"The migration job ended {job.state.value.lower()}"
    if _hands_off(obs):
        # The job failed (or was lost) after the VE moved, or in the middle of a post-copy: a rollback
        # would clean up the copy that runs. Nothing is aborted or removed; a person decides.
        _needs_attention(step, f"The migration job ended {job.state.value.lower()} ({reason}: {message})")
        return
    if status.mode == Mode.LIVE and _split_unknown(obs, switchover=status.phase == Phase.SWITCHOVER):
        # Invariant 3: whether the VE is split between the hosts (a failed post-copy) cannot be told
        # without seeing it, and a rollback of a split VE would lose it. Look again.
        step.wait(
            Reason.STATE_UNKNOWN,
            f"The migration job ended {job.state.value.lower()} ({reason}); waiting to observe the VE "
            "before deciding whether a rollback is safe",
        )
        return
    if step.cancelling:
        reason, message = Reason.CANCELLED, "Cancelled by spec.action or deletion"
    step.roll_back(reason, message, retryable=job.error_class == ErrorClass.RETRYABLE)


def _running(step: _Pass, job: JobObservation) -> None:
    spec, status, now = step.spec, step.status, step.now
    post_copy = job.state == JobState.POST_COPY
    if job.state in (JobState.SWITCHOVER, JobState.POST_COPY) and status.mode == Mode.LIVE:
        step.goto(Phase.SWITCHOVER, "Source paused; copying what changed" if not post_copy else "Post-copy")
    if step.cancelling:
        if post_copy:
            # The VE already runs on the target: aborting now would lose it. Finish instead.
            step.wait(Reason.CANCEL_TOO_LATE, "Cancel ignored: the VE already runs on the target (post-copy)")
            step.wake_on_job_end = True
            return
        step.roll_back(Reason.CANCELLED, "Cancelled by spec.action or deletion", retryable=False)
        return
    step.until_job_ends()
    if post_copy:
        return
    started = step.entered(Phase.TRANSFERRING)
    if deadlines.progress_stalled(status.progress, started, spec.timeouts, now):
        step.roll_back(
            Reason.PROGRESS_TIMEOUT,
            f"No data moved for more than {spec.timeouts.progress_seconds} s (spec.timeouts.progressSeconds)",
            retryable=True,
        )
        return
    total = status.progress.bytes_total if status.progress else None
    deadline = deadlines.completion_deadline(started, total, spec.timeouts)
    if spec.action == SpecAction.FORCE_COMPLETE or now > deadline:
        if status.mode != Mode.LIVE or job.state != JobState.RUNNING:
            return
        if spec.action != SpecAction.FORCE_COMPLETE and not spec.post_copy:
            step.roll_back(
                Reason.COMPLETION_TIMEOUT,
                f"Not finished by {deadline.isoformat()} ({spec.timeouts.completion_per_gib_seconds} s per GiB, "
                "spec.timeouts.completionPerGiBSeconds); set postCopy or ForceComplete to finish such VEs",
                retryable=True,
            )
            return
        # Forcing completion is the switchover: the source pauses (or post-copy starts) now.
        why = "ForceComplete requested" if spec.action == SpecAction.FORCE_COMPLETE else "Completion deadline passed"
        how = "switching to post-copy" if spec.post_copy else "pausing the source to copy what is left"
        step.goto(Phase.SWITCHOVER, f"{why}: {how}")
        step.act(ActionKind.FORCE_COMPLETE)


def _to_finalizing(step: _Pass, job: JobObservation) -> None:
    status = step.status
    status.progress = progress.completed(status.progress, job.stats, step.now)
    if job.stats.downtime_ms is not None:
        status.downtime_ms = job.stats.downtime_ms
    _switched_over(step, job.stats)
    step.goto(Phase.FINALIZING, "Transfer complete; verifying the target copy")
    _finalizing(step)


def _switched_over(step: _Pass, stats: JobStats) -> None:
    """A live job's switchover usually lasts less than a pass's interval: when no pass saw it, it is
    recorded from the job's evidence (the source host's clock), kept between the transition before it
    and this pass so the transitions stay in order."""
    status = step.status
    if status.mode != Mode.LIVE or stats.switchover_time is None or status.phase != Phase.TRANSFERRING:
        return
    began = min(max(stats.switchover_time, step.entered(Phase.TRANSFERRING)), step.now)
    paused = f" for {stats.downtime_ms} ms" if stats.downtime_ms is not None else ""
    step.goto(
        Phase.SWITCHOVER,
        f"Switchover at {began.isoformat()}: the source paused{paused} (from {stats.switchover_evidence or 'the job'})",
        at=began,
    )


# -- Finalizing -------------------------------------------------------------------------------
def _finalizing(step: _Pass) -> None:
    spec, obs, status = step.spec, step.obs, step.status
    if step.cancelling:
        step.waiting_reason = (Reason.CANCEL_TOO_LATE, "Cancel ignored: the transfer already completed")
    if obs.target_verified is None:
        step.wait(Reason.STATE_UNKNOWN, f"Cannot verify the copy on {spec.target.host!r} yet")
        return
    if obs.target_verified is False:
        # Both copies stay as they are: the source is not touched, the target is not deleted.
        step.fail(
            Reason.TARGET_VERIFICATION_FAILED,
            f"The copy on {spec.target.host!r} did not verify; the source on {spec.source.host!r} "
            "was left untouched. Inspect both hosts before retrying",
        )
        return
    # As planned when the job started; from an older status without a plan, the VE's kind tells (a
    # container the source already renamed is gone from its list: its kind shows on the target).
    recorded = status.plan.source_disposition if status.plan is not None else None
    disposition = recorded or plan.disposition_for(spec, obs.source_ve or obs.target_ve)
    if disposition != SourceDisposition.KEPT and obs.source_disposed is not True:
        if obs.source_disposed is None or obs.source is None or obs.source.reachable is not True:
            step.wait(Reason.STATE_UNKNOWN, f"Cannot observe the source on {spec.source.host!r}")
            return
        step.act(ActionKind.DISPOSE_SOURCE, disposition=disposition)
        # The disposal is done when its call returns (it raises otherwise): that result is decided on again
        # in this same pass (Succeeded only from it); the poll is the fallback if the call failed.
        step.observe_again = True
        step.poll(POLL_JOB)
        return
    target = obs.target_ve
    status.result = Result(
        target_name=target.name if target else spec.source.name,
        target_uuid=target.uuid if target else None,
        source_disposition=disposition,
    )
    step.succeed(Reason.MIGRATED, f"VE on {spec.target.host!r}; source {disposition.value.lower()}")


# -- RollingBack ------------------------------------------------------------------------------
def _rolling_back(step: _Pass) -> None:
    spec, obs, status = step.spec, step.obs, step.status
    job = obs.job
    if job is None:
        _job_unobserved(step)
        step.wake_on_job_end = True
        return
    if job.state == JobState.COMPLETED:
        # The job finished before the abort reached it: the target holds the complete VE now.
        step.event(
            EventType.WARNING, Reason.COMPLETED_BEFORE_ABORT, "The transfer completed before it could be stopped"
        )
        _to_finalizing(step, job)
        return
    if job.state == JobState.POST_COPY:
        step.wait(Reason.CANCEL_TOO_LATE, "The VE already runs on the target (post-copy); waiting for it to finish")
        step.wake_on_job_end = True
        return
    if job.state in (JobState.RUNNING, JobState.SWITCHOVER):
        step.act(ActionKind.ABORT_JOB)
        step.wait(Reason.ABORTING, "Waiting for the migration job to stop")
        step.until_job_ends()
        return
    if obs.source is None or obs.source.reachable is not True or obs.target_leftovers is None:
        step.wait(Reason.STATE_UNKNOWN, "Cannot observe both hosts to finish the rollback")
        return
    failure = status.failure
    cause = f"Rolling back after {failure.reason}: {failure.message}" if failure else "Rolling back"
    if _hands_off(obs):
        _needs_attention(step, cause)
        return
    if _settling(obs):
        waited = step.now - step.entered(Phase.ROLLING_BACK)
        if waited <= timedelta(seconds=max(spec.timeouts.progress_seconds, SETTLE_SECONDS)):
            step.wait(
                Reason.TARGET_MIGRATING,
                f"The VE on {spec.target.host!r} is still paused for the stopped migration; waiting for "
                "libvirt to remove it before cleaning up",
            )
            return
        seconds = int(waited.total_seconds())
        _needs_attention(step, f"{cause}; the VE on {spec.target.host!r} stayed paused for the migration {seconds} s")
        return
    if obs.source_ve is None:
        # No complete source copy observed: never clean the target now, it may be the only copy.
        step.fail(
            Reason.ROLLBACK_INCOMPLETE,
            f"VE {spec.source.name!r} is not on {spec.source.host!r} after the rollback; the target "
            f"{spec.target.host!r} was left as it is",
        )
        return
    if obs.target_leftovers:
        step.act(ActionKind.CLEANUP_TARGET)
        step.wait(Reason.CLEANING_UP, f"Removing what this migration left on {spec.target.host!r}", POLL_JOB)
        return
    if step.cancelling or (failure is not None and failure.reason == Reason.CANCELLED):
        step.cancelled("Cancelled; the VE stays on the source and nothing is left on the target")
        return
    _conclude_failure(step)


def _described(role: str, host: str, name: str, ve: VEFacts | None) -> str:
    if ve is None:
        return f"{role} {host!r} has no VE {name!r}"
    failed = " after a failed post-copy" if ve.post_copy_failed else " in post-copy" if ve.in_post_copy else ""
    return f"{role} {host!r} has {ve.name!r} {ve.state.value}{failed}"


def _settling(obs: Observation) -> bool:
    """The target holds the VE paused for a migration that has ended (libvirt's incoming domain, which
    libvirt removes once the migration's connection is closed), and the source copy is there and was
    not split by a post-copy: worth waiting for, never worth removing."""
    target, source = obs.target_ve, obs.source_ve
    return (
        target is not None
        and target.state == VEState.MIGRATING
        and not target.post_copy_failed
        and source is not None
        and not source.post_copy_failed
        and not source.in_post_copy
    )


def _hands_off(obs: Observation) -> bool:
    """A rollback must not touch these copies: the target's copy runs or is paused (the VE may have
    moved, or run on both hosts), or a post-copy failed or is still under way on the source after its
    job ended (each host holds part of the VE; the target may not even be observable then)."""
    target, source = obs.target_ve, obs.source_ve
    target_active = target is not None and (target.state.live or target.post_copy_failed)
    split = source is not None and (source.post_copy_failed or source.in_post_copy)
    return (target_active or split) and not _settling(obs)


def _split_unknown(obs: Observation, *, switchover: bool) -> bool:
    """After a live job failed: whether the VE is whole on the source is not known this pass. Known when
    the source was observed holding the VE (a rollback keeps it), or holding it no more with the target
    observed too (_hands_off decides from the target's copy). A job that failed in Switchover may have
    handed the VE over (post-copy) before the source's state says so: both hosts must be seen."""
    source_seen = obs.source is not None and obs.source.reachable is True
    target_seen = obs.target is not None and obs.target.reachable is True
    return not source_seen or ((obs.source_ve is None or switchover) and not target_seen)


def _needs_attention(step: _Pass, cause: str) -> None:
    """Stop without touching either host: say what each host has and what a person should do."""
    spec, obs, status = step.spec, step.obs, step.status
    name = spec.source.name
    copies = (
        f"{_described('source', spec.source.host, name, obs.source_ve)}, "
        f"{_described('target', spec.target.host, name, obs.target_ve)}"
    )
    message = (
        f"{cause}. The copies are not in a state a rollback may touch: {copies}. Nothing was stopped or "
        "removed on either host. Find out which copy is current (virsh domstate --reason on both hosts); "
        "resume a failed post-copy (virsh migrate --postcopy --postcopy-resume), or keep the current copy "
        "and remove the other by hand; then delete this migration (that touches no VE). "
        "See docs/runbooks/NeedsAttention.md"
    )
    phase = status.failure.phase if status.failure is not None else status.phase
    status.failure = Failure(phase=phase, reason=Reason.NEEDS_ATTENTION, message=message, retryable=False)
    _conclude_failure(step)


def _conclude_failure(step: _Pass) -> None:
    """Nothing of this attempt is in flight any more: queue the next attempt if allowed, else Failed."""
    spec, status, now = step.spec, step.status, step.now
    if status.failure is None:
        # A rollback whose cause was not recorded (an older status): still a failure, and a specific one.
        status.failure = Failure(phase=status.phase, reason=Reason.ROLLED_BACK, message="The migration was rolled back")
    failure = status.failure
    if failure.retryable and status.attempts < spec.retry.max_attempts and not step.cancelling:
        wait = deadlines.backoff(status.attempts, spec.retry.backoff_seconds)
        status.next_attempt_time = now + wait
        _queue(
            step,
            QueueCause.RETRY_BACKOFF,
            f"Attempt {status.attempts} of {spec.retry.max_attempts} failed ({failure.reason}); "
            f"next attempt at {status.next_attempt_time.isoformat()}",
            wait.total_seconds(),
        )
        return
    step.goto(Phase.FAILED, f"{failure.reason}: {failure.message}")


_HANDLERS: dict[Phase, Callable[[_Pass], None]] = {
    Phase.PENDING: _waiting,
    Phase.QUEUED: _waiting,
    Phase.VALIDATING: _validating,
    Phase.TRANSFERRING: _transferring,
    Phase.SWITCHOVER: _transferring,
    Phase.FINALIZING: _finalizing,
    Phase.ROLLING_BACK: _rolling_back,
}


# -- conditions -------------------------------------------------------------------------------
def _write_conditions(step: _Pass) -> None:
    status, now, gen = step.status, step.now, step.obs.generation
    phase = status.phase
    conds = status.conditions
    failure = status.failure

    if status.checks:
        failed = [c for c in status.checks if c.result == CheckResult.FAILED]
        conds = set_condition(
            conds,
            ConditionType.PREFLIGHT_PASSED,
            ConditionStatus.FALSE if failed else ConditionStatus.TRUE,
            Reason.PREFLIGHT_FAILED if failed else Reason.ALL_CHECKS_PASSED,
            preflight.summary(status.checks),
            now,
            gen,
        )
    elif find(conds, ConditionType.PREFLIGHT_PASSED) is None:
        conds = set_condition(
            conds, ConditionType.PREFLIGHT_PASSED, ConditionStatus.UNKNOWN, Reason.NOT_CHECKED, "", now, gen
        )

    if phase.final:
        progressing = (ConditionStatus.FALSE, phase.value, "")
    elif step.waiting_reason is not None:
        unknown = step.waiting_reason[0] in (Reason.STATE_UNKNOWN, Reason.HOST_UNREACHABLE)
        progressing = (
            ConditionStatus.UNKNOWN if unknown else ConditionStatus.TRUE,
            step.waiting_reason[0],
            step.waiting_reason[1],
        )
    elif phase == Phase.QUEUED:
        # The cause is the reason, so a program (Argo CD's health check) can tell a maintenance window,
        # which is paused on purpose, from a wait that ends by itself.
        previous = find(conds, ConditionType.PROGRESSING)
        cause = previous.reason if previous is not None and previous.reason in _QUEUE_CAUSES else Phase.QUEUED
        progressing = (ConditionStatus.FALSE, step.queue_cause or cause, status.queued_reason or "")
    else:
        # The reason the phase was entered stays the message until the phase changes again.
        previous = find(conds, ConditionType.PROGRESSING)
        kept = previous.message if previous is not None and previous.reason == phase.value else None
        progressing = (ConditionStatus.TRUE, phase.value, step.phase_message or kept or f"Migration is {phase.value}")
    conds = set_condition(conds, ConditionType.PROGRESSING, *progressing, now, gen)

    succeeded: tuple[ConditionStatus, str, str]  # a failure's reason as stored: a str, whoever wrote it
    if phase == Phase.SUCCEEDED:
        previous = find(conds, ConditionType.SUCCEEDED)
        kept = previous.message if previous is not None and previous.status == ConditionStatus.TRUE else ""
        succeeded = (ConditionStatus.TRUE, step.success_reason, step.success_message or kept)
    elif phase in (Phase.FAILED, Phase.CANCELLED) and failure is not None:
        succeeded = (ConditionStatus.FALSE, failure.reason, failure.message)
    else:
        succeeded = (ConditionStatus.UNKNOWN, Reason.IN_PROGRESS, f"Migration is {phase.value}")
    conds = set_condition(conds, ConditionType.SUCCEEDED, *succeeded, now, gen)

    if phase == Phase.FAILED and failure is not None:
        failed_cond = (ConditionStatus.TRUE, failure.reason, failure.message)
    else:
        failed_cond = (ConditionStatus.FALSE, Reason.NOT_FAILED, "")
    conds = set_condition(conds, ConditionType.FAILED, *failed_cond, now, gen)
    status.conditions = conds
    # One field for the REASON column (a printer column's JSONPath cannot pick the condition that is True).
    if phase == Phase.SUCCEEDED:
        status.reason = succeeded[1]
    elif phase.final or failure is not None:
        status.reason = failure.reason if failure is not None else phase.value
    else:
        status.reason = None
