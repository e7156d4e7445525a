"""One reconcile pass: observe both hosts and the job, decide (core), act, write status once.

Any pass may be the first after a restart: everything it needs comes from the stored status and
from what it observes now. A host that does not answer becomes "not observed" (None), never an error
that aborts anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from pydantic import ValidationError

from vemigrate import metrics
from vemigrate.api.common import ConditionStatus
from vemigrate.api.host import HostConditionType, HostStatus, HypervisorHost
from vemigrate.api.migration import Action as SpecAction
from vemigrate.api.migration import Failure, MigrationSpec, MigrationStatus, Phase
from vemigrate.api.reasons import Reason
from vemigrate.core import admission as queueing
from vemigrate.core import plan as core_plan
from vemigrate.core.access import HostAccess
from vemigrate.core.admission import Limits
from vemigrate.core.conditions import set_condition
from vemigrate.core.decision import Action, ActionKind, Decision
from vemigrate.core.machine import ACTIVE_PHASES, POLL_JOB, decide
from vemigrate.core.observation import (
    HostObservation,
    JobObservation,
    JobState,
    Observation,
    OtherMigration,
    VEFacts,
)
from vemigrate.drivers.errors import DriverError, PermanentError
from vemigrate.drivers.protocol import DriverFactory, HypervisorDriver, MigrationPlan
from vemigrate.kube import events, hosts, status
from vemigrate.kube.client import Kube
from vemigrate.queue import Admission
from vemigrate.wakeups import Cause

log = logging.getLogger(__name__)
T = TypeVar("T")

# Phases whose pass talks to the hosts; Pending and Queued only read the API.
_HOST_PHASES = ACTIVE_PHASES
# Observe-and-decide rounds one pass may make while the core asks to see its action's result at once.
MAX_STEPS = 3
# One long poll on a job's host lasts at most this long, then another is made while the job runs.
WATCH_SECONDS = 30.0
# At exit, how long closing the hosts' connections may take: well within a Pod's grace period (60 s).
CLOSE_SECONDS = 15.0


@dataclass
class Settings:
    cluster_limit: int = 0  # migrations in flight at once across the cluster; 0: no limit
    host_probe_seconds: float = 60.0
    # How often a running job's progress is sampled by a pass; its end wakes a pass at once regardless.
    progress_seconds: float = POLL_JOB
    # The liveness probe fails once a migration pass has run this long and none has ended for as long.
    stalled_pass_seconds: float = 600.0


@dataclass
class World:
    """What passes share: the API client, the drivers (one per host, reused), the settings, and the long
    poll on each migration's running job. (Admission's bookkeeping is vemigrate.queue.Admission.)"""

    kube: Kube
    make_driver: DriverFactory
    settings: Settings = field(default_factory=Settings)
    _drivers: dict[tuple[str, str], HypervisorDriver] = field(default_factory=dict)

    # Called with a migration's UID when its job is seen to end on its host (memo.Memo wakes its daemon).
    job_ended: Callable[[str], None] = lambda uid: None
    # The long poll on each migration's running job, by the job it waits on: (attempt, source host).
    _watches: dict[str, tuple[tuple[int, HostAccess], asyncio.Task[None]]] = field(default_factory=dict)
    # Each migration's job whose end was reported: a job ends once, and wakes a pass once.
    _ended: dict[str, tuple[int, HostAccess]] = field(default_factory=dict)
    # What the long poll read of each such job once it was over, for the pass its end wakes (job_outcome).
    _outcomes: dict[str, tuple[tuple[int, HostAccess], JobObservation]] = field(default_factory=dict)

    _closing: set[asyncio.Task[None]] = field(default_factory=set)
    # Hosts' credentials as last read, kept for as long as a host probe's interval (kube/hosts.py).
    access: hosts.AccessCache = field(default_factory=hosts.AccessCache)

    def __post_init__(self) -> None:
        self.access.ttl = self.settings.host_probe_seconds

    def watch_job(self, uid: str, plan: MigrationPlan | None) -> bool:
        """Keep one long poll on the job of `plan` (this attempt's) running, or with None stop it. Returns
        whether the job's end is still to wake the migration: not once it has. (A long poll on an ended
        job returns at once: polling it again would wake a pass at once, and again, for as long as no pass
        can read the job, say its reads time out under load: passes back to back, each failing.) Its end
        only wakes the next pass, which observes everything it decides on; the poll stays the safety net."""
        job = (plan.attempt, plan.source) if plan is not None else None
        current = self._watches.get(uid)
        if current is not None:
            watched, task = current
            if watched == job and not task.done():
                return True
            task.cancel()  # never awaited: a pass waits neither on its watch nor on its cancellation
            del self._watches[uid]
        if plan is None or self._ended.get(uid) == job:
            return False
        task = asyncio.get_running_loop().create_task(self._watch(uid, plan))
        self._watches[uid] = ((plan.attempt, plan.source), task)
        return True

    def forget(self, uid: str) -> None:
        """The migration ended: no watch, nothing remembered of its jobs."""
        self.watch_job(uid, None)
        self._ended.pop(uid, None)
        self._outcomes.pop(uid, None)

    def job_outcome(self, uid: str, plan: MigrationPlan) -> JobObservation | None:
        """The ended job of `plan` as its long poll read it, once: the pass its end wakes takes this instead
        of reading the job again (an ended job's record no longer changes)."""
        kept = self._outcomes.pop(uid, None)
        return kept[1] if kept is not None and kept[0] == (plan.attempt, plan.source) else None

    def _watching(self, uid: str) -> bool:
        """Whether the running task is the migration's watch (not one cancelled since)."""
        current = self._watches.get(uid)
        return current is not None and current[1] is asyncio.current_task()

    async def _watch(self, uid: str, plan: MigrationPlan) -> None:
        driver = self.driver(plan.source)
        while self._watching(uid):
            try:
                ended = await driver.wait_job_end(plan, WATCH_SECONDS)
            except DriverError as exc:
                log.debug("watching the job of %s: %s; the poll stays", uid, exc.message)
                return
            log.debug("watching the job of %s: %s", uid, "nothing" if ended is None else "ended" if ended else "runs")
            if ended is None:
                return  # nothing to wait on (yet): the next pass looks, and watches again
            # Reported only by the current watch: one cancelled while its call returned runs on until here.
            if ended and self._watching(uid):
                del self._watches[uid]
                self._ended[uid] = (plan.attempt, plan.source)
                if isinstance(ended, JobObservation):
                    self._outcomes[uid] = ((plan.attempt, plan.source), ended)
                self.job_ended(uid)
                return

    async def close(self, timeout: float = CLOSE_SECONDS) -> None:
        """At the operator's exit, while the event loop still runs: the job watches stopped and every
        driver's connections closed. A libvirt connection left to the garbage collector after the loop has
        ended waits forever on the SSH forward that loop served, and the process with it (until the Pod's
        SIGKILL). Drivers that do not close within `timeout` (a host that does not answer) are left."""
        for _, task in self._watches.values():
            task.cancel()
        self._watches.clear()
        drivers, self._drivers = list(self._drivers.values()), {}
        closing = {asyncio.ensure_future(d.close()) for d in drivers} | self._closing
        if closing:
            _, late = await asyncio.wait(closing, timeout=timeout)
            if late:
                log.warning("%d host connection(s) did not close in %.0f s; left open", len(late), timeout)

    def driver(self, access: HostAccess) -> HypervisorDriver:
        key = (access.namespace, access.name)
        cached = self._drivers.get(key)
        if cached is None or cached.access.version != access.version:
            if cached is not None:
                # Closed off the event loop, and kept referenced until then: a libvirt connection
                # dropped here would be closed by its finalizer on this thread, waiting on an SSH
                # forward that this very loop serves.
                task = asyncio.get_running_loop().create_task(cached.close())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
            cached = self.make_driver(access)
            self._drivers[key] = cached
        return cached


@dataclass
class _Host:
    """A host as this pass knows it: its observation, and a driver when it could be resolved."""

    obs: HostObservation
    driver: HypervisorDriver | None = None
    # The credentials came from the cache (not read this pass); with the cache entry to drop when refused.
    cached: bool = False
    forget: Callable[[], None] = lambda: None


def _now() -> datetime:
    return datetime.now(UTC)


def _limits(hvh: HypervisorHost) -> HostObservation:
    return HostObservation(
        name=str(hvh.metadata.get("name", "")),
        reachable=None,
        facts=hvh.status,
        max_inbound=hvh.spec.max_inbound,
        max_outbound=hvh.spec.max_outbound,
    )


class HostLookup(Protocol):
    """HypervisorHosts' bodies as the operator's watch last delivered them (a kopf index)."""

    def get(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """The host's body, or None when the watch has not delivered it (yet)."""

    def in_namespace(self, namespace: str) -> list[Mapping[str, Any]]:
        """Every host of the namespace the watch has delivered."""


async def _every_host(
    world: World, namespace: str, lookup: HostLookup | None = None
) -> tuple[HostObservation, ...] | None:
    """Every HypervisorHost of the namespace (their limits, and which exist), or None if not read: from the
    watch's index when there is one, else listed from the API."""
    try:
        found = (
            [HypervisorHost.model_validate(body) for body in lookup.in_namespace(namespace)]
            if lookup is not None
            else await hosts.list_hosts(world.kube, namespace)
        )
    except Exception as exc:  # the API server itself, or a host the API stored before a schema change
        log.warning("listing HypervisorHosts in %s: %s", namespace, exc)
        return None
    return tuple(_limits(hvh) for hvh in found)


async def _host(
    world: World, namespace: str, name: str, *, connect: bool = True, lookup: HostLookup | None = None
) -> _Host:
    """The host's object (from the watch's index when it has it; read from the API otherwise, which also
    tells a missing host from one not delivered yet); with `connect`, also its Secrets (cached, see
    World.access) and a driver. Waiting phases only need the object: whether it exists, and its limits."""
    seen = lookup.get(namespace, name) if lookup is not None else None
    try:
        hvh = (
            HypervisorHost.model_validate(seen)
            if seen is not None
            else await hosts.get_host(world.kube, namespace, name)
        )
    except Exception as exc:  # the API server itself: not known this pass
        log.warning("reading HypervisorHost %s/%s: %s", namespace, name, exc)
        return _Host(HostObservation(name=name, reachable=None, error=str(exc)))
    if hvh is None:
        return _Host(HostObservation(name=name, reachable=None, exists=False))
    obs = replace(_limits(hvh), name=name)
    if not connect:
        return _Host(obs)
    access = world.access.cached(namespace, hvh)
    cached = access is not None
    try:
        if access is None:
            access = await world.access.resolve(world.kube, namespace, hvh, fresh=True)
    except hosts.HostConfigError as exc:
        return _Host(
            HostObservation(name=name, reachable=False, error=exc.message, error_reason=exc.reason, permanent=True)
        )
    return _Host(obs, world.driver(access), cached=cached, forget=lambda: world.access.forget(namespace, name))


async def _ask(host: _Host, call: Callable[[HypervisorDriver], Awaitable[T]]) -> T | None:
    """One driver call; on failure the host is marked not reachable for this pass and None returned."""
    if host.driver is None or host.obs.reachable is False:
        return None
    try:
        result = await call(host.driver)
    except DriverError as exc:
        refused = isinstance(exc, PermanentError) and exc.reason in _PERMANENT_CONNECT_REASONS
        if refused:
            host.forget()
        host.obs = replace(
            host.obs,
            reachable=False,
            error=exc.message,
            error_reason=exc.reason,
            # Credentials read before this pass may be stale (a key rotated since): final only when the
            # next pass, reading them afresh, is refused too.
            permanent=refused and not host.cached,
        )
        return None
    if host.obs.reachable is None:  # a call made alongside this one may have failed: that stands
        host.obs = replace(host.obs, reachable=True)
    return result


# Connection failures that waiting cannot fix: reported at once instead of after the timeout.
_PERMANENT_CONNECT_REASONS = frozenset(
    {
        Reason.HOST_KEY_MISMATCH,
        Reason.AUTHENTICATION_FAILED,
        Reason.NO_HOST_KEY,
        Reason.INVALID_KNOWN_HOSTS,
        Reason.INVALID_PRIVATE_KEY,
        Reason.UNSAFE_LIBVIRT_URI,
        Reason.DRIVER_UNAVAILABLE,  # this installation cannot drive the host (libvirt-python missing)
    }
)


def _plan(
    uid: str, spec: MigrationSpec, stored: MigrationStatus | None, ve: VEFacts | None, src: _Host, dst: _Host
) -> MigrationPlan | None:
    if src.driver is None or dst.driver is None:
        return None
    resolved = core_plan.resolve(uid, spec, ve, dst.obs.facts, stored)
    attempt = max(stored.attempts, 1) if stored else 1
    return MigrationPlan.of(uid, spec, resolved, ve, src.driver.access, dst.driver.access, attempt)


_ENDED = (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED)
_JOB_PHASES = (Phase.TRANSFERRING, Phase.SWITCHOVER)  # the job runs, or has just ended


async def _observe(
    world: World,
    body: Mapping[str, Any],
    spec: MigrationSpec,
    stored: MigrationStatus | None,
    *,
    deleting: bool,
    others: Iterable[OtherMigration],
    lookup: HostLookup | None,
    job_ended: bool = False,
) -> tuple[Observation, MigrationPlan | None]:
    meta = body["metadata"]
    namespace, uid = meta["namespace"], meta["uid"]
    phase = stored.phase if stored else Phase.PENDING
    connect = phase in _HOST_PHASES and not phase.final
    src, dst = await asyncio.gather(
        _host(world, namespace, spec.source.host, connect=connect, lookup=lookup),
        _host(world, namespace, spec.target.host, connect=connect, lookup=lookup),
    )
    created = datetime.fromisoformat(meta["creationTimestamp"]) if meta.get("creationTimestamp") else None
    everyone = list(others)
    base = Observation(
        generation=int(meta.get("generation", 1)),
        deleting=deleting,
        created=created,
        arrival=next((o.arrival for o in everyone if o.uid == uid), 0),
        uid=uid,
        others=tuple(o for o in everyone if o.uid != uid),
        cluster_limit=world.settings.cluster_limit,
    )
    if phase not in _HOST_PHASES or phase.final:
        waiting = replace(base, source=src.obs, target=dst.obs)
        if not phase.final and queueing.needs_every_host(
            waiting.others, queueing.limits_of(waiting), _now(), queueing.candidate(spec, waiting, _now())
        ):
            # Whether an older waiter goes first depends on another host's limit: one list of them all.
            waiting = replace(waiting, hosts=await _every_host(world, namespace, lookup))
        return waiting, None

    async def none() -> None:
        return None

    # The pre-flight checks' facts are independent reads of both hosts: all in one round, not three.
    checking = phase == Phase.VALIDATING and dst.driver is not None
    target_access = dst.driver.access if dst.driver is not None else None

    # The job's record, read with the plan it recorded, without the VE: woken by the job's end, first, and
    # the VE after it, so that what is decided comes from after the job (its outcome needs no VE). In
    # Validating, in the same round as the checks' reads: whether this attempt's job exists (an operator that
    # died after starting it); a record that says none is all the checks need, any other is read again below
    # with the whole plan. A running job's progress is read after the VE, with it (prlctl counts its bytes
    # from the VE's size).
    ended = job_ended and stored is not None and stored.plan is not None and phase in _JOB_PHASES
    recorded = _plan(uid, spec, stored, None, src, dst) if checking or ended else None
    job: JobObservation | None = None
    job_read: asyncio.Future[JobObservation | None] | None = None
    if recorded is not None and ended:
        job = world.job_outcome(uid, recorded) or await _ask(src, lambda d: d.job(recorded))
    elif recorded is not None and checking:
        job_read = asyncio.ensure_future(_ask(src, lambda d: d.job(recorded)))
    ve_before_job = job is None  # the VE is read next: a job read later may have ended since

    # The SSHPort check's login from the source becomes the migration's shared connection to the target
    # (where the driver keeps one): the storage probe waits for it and runs on it, and so does the job
    # (hostjob.forget ends it with the migration, a dry run's too). One handshake, while the VE is read.
    reach = (
        asyncio.ensure_future(_ask(src, lambda d: d.reaches(target_access, uid)))
        if checking and target_access
        else asyncio.ensure_future(none())
    )

    async def source_ve_and_sharing() -> VEFacts | None:
        found = await _ask(src, lambda d: d.find_ve(spec.source.name, for_checks=checking))
        if checking and found is not None and found.disk_paths and target_access is not None and await reach:
            # Which disks the target sees as the same files (the SharedStorage check): asked as soon as
            # the VE's disks are known and the connection is up, while the round's other reads still run.
            # Not asked when the source cannot reach the target (the SSHPort check fails anyway).
            probed, peer = found, target_access
            found = replace(found, shared_disks=await _ask(src, lambda d: d.shared_disks(probed, peer, uid)))
        return found

    source_ve, target_ve, src_facts, dst_facts, reaches = await asyncio.gather(
        source_ve_and_sharing(),
        _ask(dst, lambda d: d.find_ve(spec.source.name, for_checks=checking)),
        _ask(src, lambda d: d.probe()) if checking else none(),
        _ask(dst, lambda d: d.probe([spec.target.path] if spec.target.path else [])) if checking else none(),
        reach,
    )
    src.obs = replace(src.obs, facts=src_facts or src.obs.facts)
    dst.obs = replace(dst.obs, facts=dst_facts or dst.obs.facts)
    plan = _plan(uid, spec, stored, source_ve, src, dst)
    along = await job_read if job_read is not None else None
    if along is not None and along.state == JobState.NONE:
        job = along
    verified = disposed = leftovers = None
    if plan is not None and job is None and phase != Phase.FINALIZING:  # Finalizing decides without the job
        job = await _ask(src, lambda d: d.job(plan))
    if ve_before_job and job is not None and job.state in _ENDED and phase in _JOB_PHASES:
        # The job may have ended after this pass looked the VE up: look again, so what is decided comes
        # from after it: the result and the source's disposition (a renamed container is gone from the
        # source), or, for a failed job, whether the VE is split between the hosts (a failed post-copy) so
        # that nothing may be rolled back.
        source_ve, target_ve = await asyncio.gather(
            _ask(src, lambda d: d.find_ve(spec.source.name)), _ask(dst, lambda d: d.find_ve(spec.source.name))
        )
    if plan is not None:
        finishing = phase == Phase.FINALIZING or (job is not None and job.state in (JobState.COMPLETED, JobState.NONE))
        checked = plan
        if finishing and phase != Phase.VALIDATING:
            # Different hosts: asked at once.
            verified, disposed = await asyncio.gather(
                _ask(dst, lambda d: d.verify_target(checked, job.on_target if job is not None else ())),
                _ask(src, lambda d: d.source_disposed(checked, checked.disposition)),
            )
        if phase == Phase.ROLLING_BACK:
            leftovers = await _ask(dst, lambda d: d.target_leftovers(plan))
    if src.obs.reachable is not True:
        source_ve = None
    obs = replace(
        base,
        source=src.obs,
        target=dst.obs,
        source_ve=source_ve,
        target_ve=target_ve if dst.obs.reachable is True else None,
        job=job,
        target_verified=verified,
        source_disposed=disposed,
        target_leftovers=leftovers,
        ssh_port_open=reaches,
    )
    return obs, plan


async def _act(world: World, action: Action, plan: MigrationPlan, src: HypervisorDriver, dst: HypervisorDriver) -> None:
    match action.kind:
        case ActionKind.START_JOB:
            await src.start_job(plan)
        case ActionKind.ABORT_JOB:
            await src.abort_job(plan)
        case ActionKind.FORCE_COMPLETE:
            await src.force_complete(plan)
        case ActionKind.CLEANUP_TARGET:
            await dst.cleanup_target(plan)
        case ActionKind.DISPOSE_SOURCE:
            assert action.disposition is not None
            await src.dispose_source(plan, action.disposition)


async def _act_all(
    world: World,
    body: Mapping[str, Any],
    spec: MigrationSpec,
    obs: Observation,
    plan: MigrationPlan | None,
    decision: Decision,
) -> Decision:
    """Perform the decision's actions in order; a job that cannot start is decided on as a failed job."""
    if not decision.actions:
        return decision
    if plan is None:
        return replace(decision, observe_again=False)  # nothing was done: nothing to observe at once
    src = world.driver(plan.source)
    dst = world.driver(plan.target)
    # Actions belong to the attempt this decision is in (a pass that starts one has just counted it), and
    # follow its plan as the decision recorded it (a job starting now: the plan it is started with).
    facts = obs.target.facts if obs.target else None
    resolved = core_plan.resolve(plan.uid, spec, plan.ve, facts, decision.status)
    attempt = max(decision.status.attempts, 1)
    plan = MigrationPlan.of(plan.uid, spec, resolved, plan.ve, plan.source, plan.target, attempt)
    for action in decision.actions:
        try:
            await _act(world, action, plan, src, dst)
        except DriverError as exc:
            await events.emit(world.kube, body, "Warning", action.kind.failed, f"{exc.reason}: {exc.message}")
            if action.kind == ActionKind.START_JOB and isinstance(exc, PermanentError):
                # The job could not even start, and will not: record it as a failed job.
                failed = JobObservation(
                    state=JobState.FAILED,
                    error_reason=exc.reason,
                    error_message=exc.message,
                    error_class=exc.error_class,
                )
                return decide(spec, decision.status, replace(obs, job=failed), _now())
            # Not done: whatever the decision expected of it is not observed again at once.
            return replace(decision, observe_again=False)
    return decision


async def migration_pass(
    world: World,
    body: Mapping[str, Any],
    *,
    admission: Admission,
    deleting: bool = False,
    others: Iterable[OtherMigration] = (),
    woken_by: str = "start",
    lookup: HostLookup | None = None,
) -> Decision:
    """Observe, decide, act, and write the status if it changed (observing and deciding again while the
    core asks to see its own action's result). `admission`: this process's side of the queue, shared by
    every pass. `others`: the namespace's migrations as the operator's watch has them. `woken_by`: what
    started this pass, for the log and metrics. `lookup`: HypervisorHosts as the operator's watch has them.
    Returns the decision made."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    raw_status = body.get("status") or None
    stored = MigrationStatus.model_validate(raw_status) if raw_status else None
    try:
        spec = MigrationSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        # The CRD refuses such specs; an object stored before a schema change can still hold one.
        decision = await _invalid_spec(world, body, stored, exc, deleting=deleting)
        admission.ended(meta["uid"])  # final, written or not
        return decision

    before = stored.phase if stored else Phase.PENDING
    waiting = before in (Phase.PENDING, Phase.QUEUED)
    async with admission.lock if waiting else contextlib.nullcontext():
        pending = admission.view(others)
        obs, plan = await _observe(
            world, body, spec, stored, deleting=deleting, others=pending, lookup=lookup,
            job_ended=woken_by == Cause.JOB_ENDED,
        )  # fmt: skip
        decision = decide(spec, stored, obs, _now())
        if waiting and not decision.status.phase.final:
            admission.decided(_as_other(meta, spec, obs, decision.status))

    written = stored
    if decision.actions and decision.status.phase != before and plan is not None:
        # A new phase is shown before its actions run (the disposal of the source, a job's start or abort):
        # a watching client sees the job's end as soon as it is decided on, not after the steps it leads to.
        written = _with_driver(decision.status.model_copy(deep=True), plan)
        await status.patch_migration_status(world.kube, namespace, name, written)
    decision = await _act_all(world, body, spec, obs, plan, decision)
    emitted = list(decision.events)
    steps = 1
    while decision.observe_again and steps < MAX_STEPS:
        # What was just done is complete (the source disposed of): the core decides again from its result
        # now, rather than a poll later. Status is written once more.
        done = _after(obs, decision.actions)
        if done is None:
            obs, again = await _observe(
                world, body, spec, decision.status, deleting=deleting, others=pending, lookup=lookup
            )
        else:
            obs, again = done, plan
        plan = again or plan
        decision = await _act_all(world, body, spec, obs, again, decide(spec, decision.status, obs, _now()))
        emitted += decision.events
        steps += 1
    decision = replace(decision, events=tuple(emitted))
    watched = replace(plan, attempt=max(decision.status.attempts, 1)) if plan and decision.wake_on_job_end else None
    # Whether the job's end will wake the daemon (it stretches its poll only then): not once it did.
    decision = replace(decision, wake_on_job_end=world.watch_job(meta["uid"], watched))

    new = _with_driver(decision.status, plan)
    if new.phase.final and plan is not None and (stored is None or not stored.phase.final):
        # The job's files on the source have served their purpose. Removed before the final status is
        # written: once it is, no pass comes back here (an operator killed in between would leave them).
        with contextlib.suppress(DriverError):
            await world.driver(plan.source).forget_job(plan)
    if new != written:
        await status.patch_migration_status(world.kube, namespace, name, new)
    # Counted as soon as the status says so, not after the Events' round trips: a reader of both
    # (a dashboard, a test) sees the outcome in /metrics moments after it sees it on the object.
    metrics.record_pass(meta["uid"], stored, new, spec.not_before)
    metrics.WAKEUPS.labels(cause=woken_by).inc()
    for event in decision.events:
        await events.emit(world.kube, body, event.type.value, event.reason, event.message)
    if new.phase != before:
        log.info("%s/%s: %s -> %s (a pass woken by %s)", namespace, name, before.value, new.phase.value, woken_by)
    if new.phase.final:
        admission.ended(meta["uid"])
        world.forget(meta["uid"])
    elif before in ACTIVE_PHASES and new.phase not in ACTIVE_PHASES:
        admission.decided(_as_other(meta, spec, obs, new))  # out of its slot: to retry later
    return decision


def _after(obs: Observation, actions: Iterable[Action]) -> Observation | None:
    """The observation once these actions' calls returned, when their result is known without looking: a
    disposal that returned has removed (or renamed) the source VE, else it raises. None: look again."""
    kinds = {action.kind for action in actions}
    if kinds == {ActionKind.DISPOSE_SOURCE}:
        return replace(obs, source_disposed=True, source_ve=None)
    return None


def _with_driver(new: MigrationStatus, plan: MigrationPlan | None) -> MigrationStatus:
    """The status with the driver that runs the migration named, once a plan says which."""
    if new.driver is None and plan is not None:
        new.driver = plan.source.driver
    return new


def _as_other(meta: Mapping[str, Any], spec: MigrationSpec, obs: Observation, new: MigrationStatus) -> OtherMigration:
    """This migration as the others' admission sees it, with the phase just decided."""
    return OtherMigration(
        uid=meta["uid"],
        created=obs.created or _now(),
        arrival=obs.arrival,
        phase=new.phase.value,
        source_host=spec.source.host,
        target_host=spec.target.host,
        ve_name=spec.source.name,
        name=meta["name"],
        not_before=spec.not_before,
        next_attempt=new.next_attempt_time,
        cancelling=obs.deleting or spec.action == SpecAction.CANCEL,
    )


async def next_up(
    world: World,
    admission: Admission,
    namespace: str,
    others: Iterable[OtherMigration],
    lookup: HostLookup | None = None,
) -> list[OtherMigration]:
    """The Queued migrations whose turn it is (core/admission.py), to be woken when a slot may have freed:
    a migration ended or left its slot, or one ahead in the queue went. Every host is read only when one
    is queued. A Pending one is not among them: its first pass is on its way."""
    view = admission.view(others)
    if not any(o.phase == Phase.QUEUED.value for o in view):
        return []
    every = await _every_host(world, namespace, lookup)
    known = Limits(
        cluster=world.settings.cluster_limit, hosts={h.name: h for h in every or ()}, complete=every is not None
    )
    return [o for o in queueing.play(view, known, _now()).admitted if o.phase == Phase.QUEUED.value]


async def _invalid_spec(
    world: World, body: Mapping[str, Any], stored: MigrationStatus | None, exc: ValidationError, *, deleting: bool
) -> Decision:
    """The migration fails, final: its deletion lets it go, as any final migration's (machine.decide), else
    its finalizer would be kept for ever."""
    current = stored.model_copy(deep=True) if stored else MigrationStatus()
    if current.phase.final:
        return Decision(status=current, release_finalizer=deleting)
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    message = f"spec.{where}: {first['msg']}"
    before = current.phase
    current.failure = Failure(phase=before, reason=Reason.INVALID_SPEC, message=message)
    current.reason = Reason.INVALID_SPEC
    current.phase = Phase.FAILED
    current.completion_time = _now()
    meta = body["metadata"]
    await status.patch_migration_status(world.kube, meta["namespace"], meta["name"], current)
    await events.emit(world.kube, body, "Warning", Reason.INVALID_SPEC, message)
    metrics.record_final(stored, current)
    return Decision(status=current, release_finalizer=deleting)


async def host_pass(world: World, body: Mapping[str, Any]) -> HostStatus:
    """Probe one HypervisorHost and write its facts and Reachable condition."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    hvh = HypervisorHost.model_validate(body)
    before = hvh.status or HostStatus()
    now = _now()
    try:
        # Always read afresh: a probe is what keeps the passes' cached credentials current.
        access = await world.access.resolve(world.kube, namespace, hvh, fresh=True)
        facts = await world.driver(access).probe()
    except (hosts.HostConfigError, DriverError) as exc:
        if isinstance(exc, PermanentError) and exc.reason in _PERMANENT_CONNECT_REASONS:
            world.access.forget(namespace, name)
        reachable, reason, message = ConditionStatus.FALSE, exc.reason, exc.message
        new = before.model_copy()
    else:
        reachable, reason, message = (
            ConditionStatus.TRUE,
            Reason.PROBED,
            f"{access.user}@{access.address}:{access.port} answered",
        )
        new = facts.model_copy(update={"last_probe_time": now})
    new.conditions = set_condition(
        before.conditions, HostConditionType.REACHABLE, reachable, reason, message, now, meta.get("generation")
    )
    new.observed_generation = meta.get("generation")
    await status.patch_host_status(world.kube, namespace, name, new)
    if reachable != _reachable(before):
        kind = "Normal" if reachable == ConditionStatus.TRUE else "Warning"
        await events.emit(world.kube, body, kind, reason, message)
    metrics.HOST_REACHABLE.labels(namespace=namespace, host=name).set(1 if reachable == ConditionStatus.TRUE else 0)
    return new


def _reachable(status: HostStatus) -> ConditionStatus | None:
    for condition in status.conditions:
        if condition.type == HostConditionType.REACHABLE:
            return condition.status
    return None
