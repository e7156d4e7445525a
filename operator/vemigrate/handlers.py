"""kopf glue: which events start which passes. The work itself is in reconcile."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
import time
from collections.abc import Coroutine, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from vemigrate import metrics, reconcile
from vemigrate.api import host as host_api
from vemigrate.api import migration as migration_api
from vemigrate.api.common import GROUP, VERSION
from vemigrate.api.migration import FINAL_PHASES, MigrationStatus, Phase
from vemigrate.api.reasons import Reason
from vemigrate.core.decision import Decision
from vemigrate.core.machine import ACTIVE_PHASES
from vemigrate.core.observation import OtherMigration
from vemigrate.kube import events

PREFIX = GROUP
_FINAL_NAMES = frozenset(p.value for p in FINAL_PHASES)
_ACTIVE_NAMES = frozenset(p.value for p in ACTIVE_PHASES)
FINALIZER = f"{GROUP}/finalizer"
IDLE_POLL = 5.0

log = logging.getLogger(__name__)
_world: reconcile.World | None = None
# One pass at a time per migration: the daemon and the deletion handler never overlap.
_locks: dict[str, asyncio.Lock] = {}
_phases_counted = False


class Wakeup:
    """Wakes a migration's daemon before its poll is due (spec.action, a freed slot, its job's end), and
    says why: the first cause since the last pass."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.cause = ""

    def set(self, cause: str) -> None:
        if not self.event.is_set():
            self.cause = cause
        self.event.set()


_wakeups: dict[str, Wakeup] = {}
HostKey = tuple[str, str]  # a HypervisorHost's namespace and name
# Migrations this process saw end, until the watch delivers their final status to the index: the
# queued ones woken when a slot frees must not still count them in flight.
_finished: set[str] = set()
# The order the index first saw unfinished migrations in: the watch delivers them in the order they
# were created, which orders those of one second of creationTimestamp in the queue (core/admission.py).
_arrivals: dict[str, int] = {}
_arrival_count = itertools.count(1)


def install(world: reconcile.World) -> None:
    global _world
    _world = world
    world.job_ended = lambda uid: _wake(uid, "job-ended")


def _wake(uid: str, cause: str) -> None:
    _wakeups.setdefault(uid, Wakeup()).set(cause)


def world() -> reconcile.World:
    if _world is None:
        raise kopf.PermanentError("the operator was started without its world (vemigrate run installs it)")
    return _world


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # kopf's own bookkeeping goes under our prefix, and the finalizer is ours by name.
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = _HostsDiffBase(prefix=PREFIX, key="last-handled-configuration")
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330


class _HostsDiffBase(kopf.AnnotationsDiffBaseStorage):
    """kopf's record of the last handled spec (an annotation), kept on HypervisorHosts only, whose spec
    changes start a probe (`on.update`). Migrations need none (`spec.action` is followed by a watching
    handler): that saves each migration an annotation PATCH."""

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return super().fetch(body=body) if body.get("kind") == host_api.KIND else None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        if body.get("kind") == host_api.KIND:
            super().store(body=body, patch=patch, essence=essence)


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a Pod, the ServiceAccount; elsewhere the same kubeconfig the operator's API client loaded
    (`vemigrate run --kubeconfig`), so kopf and our status writes act as one identity."""
    in_cluster = kopf.login_with_service_account(**kwargs)
    if in_cluster is not None:
        # kopf names https://kubernetes.default.svc, which only cluster DNS resolves; the kubelet's
        # KUBERNETES_SERVICE_HOST/PORT are what client-go and our own client use, DNS or not.
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
        if host and port:
            address = f"[{host}]" if ":" in host else host
            return dataclasses.replace(in_cluster, server=f"https://{address}:{port}")
        return in_cluster
    cfg = world().kube.api_client.configuration
    # The kubernetes client keeps a kubeconfig's token as "Bearer <token>" under BearerToken (older
    # releases: authorization); without it kopf would connect anonymously.
    bearer = cfg.api_key.get("BearerToken") or cfg.api_key.get("authorization") or ""
    scheme, _, token = str(bearer).partition(" ")
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
        scheme=scheme or None,
        token=token or None,
    )


def _phase(body: Mapping[str, Any]) -> str:
    return str((body.get("status") or {}).get("phase") or migration_api.Phase.PENDING.value)


@kopf.index(GROUP, VERSION, migration_api.PLURAL)
async def migrations(
    body: kopf.Body, uid: str, spec: kopf.Spec, meta: kopf.Meta, **_: Any
) -> dict[str, OtherMigration]:
    """Every migration's hosts and phase, by namespace: what admission and duplicate detection compare
    against (hosts are namespaced, so migrations only compete within their namespace). Async so that it
    runs on the event loop in the order the watch delivered the objects (`_arrivals`), not on a thread."""
    created = meta.get("creationTimestamp")
    final = _phase(body) in _FINAL_NAMES
    if final:
        _finished.discard(uid)  # the index has its final phase now
        _arrivals.pop(uid, None)  # the queue's order no longer concerns it
    arrival = 0 if final else _arrivals.setdefault(uid, next(_arrival_count))
    return {
        str(meta.get("namespace")): OtherMigration(
            uid=uid,
            created=datetime.fromisoformat(created) if created else datetime.min.replace(tzinfo=UTC),
            phase=_phase(body),
            source_host=str(spec.get("source", {}).get("host", "")),
            target_host=str(spec.get("target", {}).get("host", "")),
            ve_name=str(spec.get("source", {}).get("name", "")),
            name=str(meta.get("name", "")),
            arrival=arrival,
            not_before=_time(spec.get("notBefore")),
            next_attempt=_time((body.get("status") or {}).get("nextAttemptTime")),
            cancelling=spec.get("action") == migration_api.Action.CANCEL.value or bool(meta.get("deletionTimestamp")),
        )
    }


@kopf.index(GROUP, VERSION, host_api.PLURAL)
def hypervisorhosts(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> dict[HostKey, dict[str, Any]]:
    """Every HypervisorHost as the watch last delivered it: a pass reads its hosts here rather than with a
    GET each (the watch exists anyway, for the host probes)."""
    return {(str(namespace), name): dict(body)}


@dataclasses.dataclass(frozen=True)
class _Hosts:
    """The hosts index as reconcile reads it (reconcile.HostLookup)."""

    index: kopf.Index[HostKey, dict[str, Any]]

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        return next(iter(self.index.get((namespace, name), ())), None)

    def in_namespace(self, namespace: str) -> list[Mapping[str, Any]]:
        return [body for key in self.index if key[0] == namespace for body in self.index[key]]


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) and value else None


@kopf.on.event(GROUP, VERSION, migration_api.PLURAL)
def failed_series(event: kopf.RawEvent, body: kopf.Body, name: str, namespace: str | None, **_: Any) -> None:
    """One metric series per Failed migration object, from the watch rather than from a pass: no pass
    runs for a migration that failed before this process started, nor for its deletion."""
    status = body.get("status") or {}
    reason = None
    if event.get("type") != "DELETED" and _phase(body) == Phase.FAILED.value:
        reason = str((status.get("failure") or {}).get("reason") or status.get("reason") or "Unknown")
    metrics.track_failed(str(namespace), name, reason)


def _others(index: kopf.Index[str, OtherMigration], namespace: str) -> list[OtherMigration]:
    global _phases_counted
    if not _phases_counted:  # kopf keeps the index current: the gauge reads it at every scrape
        metrics.count_phases(lambda: [o.phase for key in index for o in index[key]])
        _phases_counted = True
    return [o for o in index.get(namespace, []) if o.uid not in _finished]


async def _next_up(
    index: kopf.Index[str, OtherMigration], namespace: str, hosts: kopf.Index[HostKey, dict[str, Any]]
) -> None:
    """A slot may have freed, or a migration ahead in the queue gone: wake the queued migrations whose turn
    it is now (core/admission.py), rather than at their next poll. The others sleep on: it is not their
    turn, and one woken whose turn it is not after all (the view moved on) only goes back to waiting."""
    for other in await reconcile.next_up(world(), namespace, _others(index, namespace), _Hosts(hosts)):
        _wake(other.uid, "slot-freed")


def _left_queue_or_slot(before: str, after: Phase) -> bool:
    """A pass that makes room for others: it ended (in flight, or waiting ahead of others), or left its
    slot to wait again (a retry's backoff). Being admitted, or staying put, makes none."""
    return after.final or (before in _ACTIVE_NAMES and after.value not in _ACTIVE_NAMES)


class PassClock:
    """When each migration pass in progress began, and when the last one ended: what the liveness probe
    reads. Every call a pass makes has a deadline, so a working pass ends within minutes, whatever its
    hosts do."""

    def __init__(self) -> None:
        self.running: dict[int, float] = {}
        self.last_end = time.monotonic()
        self._keys = itertools.count()

    @contextlib.contextmanager
    def timing(self) -> Iterator[None]:
        key = next(self._keys)
        self.running[key] = time.monotonic()
        try:
            yield
        finally:
            del self.running[key]
            self.last_end = time.monotonic()

    def stalled(self, bound: float, now: float | None = None) -> str | None:
        """Why passes have stopped completing, or None: only when a pass has been running for `bound`
        seconds and none has ended for as long. An idle operator (no pass running) is never stalled."""
        now = time.monotonic() if now is None else now
        if not self.running:
            return None
        oldest = now - min(self.running.values())
        quiet = now - self.last_end
        if oldest < bound or quiet < bound:
            return None
        return (
            f"{len(self.running)} migration pass(es) running, the oldest for {oldest:.0f} s, and none has "
            f"ended for {quiet:.0f} s (limit {bound:g} s)"
        )


_passes = PassClock()


async def _timed(coro: Coroutine[Any, Any, Decision]) -> Decision:
    with _passes.timing():
        return await coro


async def _whole(coro: Coroutine[Any, Any, Decision]) -> Decision:
    """Run a pass to its end even when kopf cancels the handler (it stops a daemon as soon as the
    status it just wrote is final): a pass's status write, Events, metrics and job clean-up belong
    together. Timed inside the shield: a cancelled handler does not end the pass it leaves running."""
    return await asyncio.shield(asyncio.ensure_future(_timed(coro)))


@kopf.on.probe(id="passes")
async def passes_complete(**_: Any) -> dict[str, float]:
    """kopf's liveness endpoint (`--liveness`) answers 500 once migration passes stop completing: one has
    been running for --stalled-pass-seconds and none has ended for as long (a deadlock, a starved
    thread pool). Answered from the event loop: a blocked loop does not answer at all."""
    bound = _world.settings.stalled_pass_seconds if _world is not None else reconcile.Settings().stalled_pass_seconds
    stalled = _passes.stalled(bound)
    if stalled is not None:
        log.error("liveness: migration passes stopped completing: %s", stalled)
        raise kopf.PermanentError(f"migration passes stopped completing: {stalled}")
    return {"running": len(_passes.running), "lastEndedSecondsAgo": round(time.monotonic() - _passes.last_end, 1)}


def _with_status(body: Mapping[str, Any], status: MigrationStatus | None) -> dict[str, Any]:
    """The body with the status this process wrote last: the watch may not have delivered it yet."""
    copy = dict(body)
    if status is not None:
        copy["status"] = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    return copy


@kopf.daemon(
    GROUP,
    VERSION,
    migration_api.PLURAL,
    initial_delay=0,
    # The final status write makes the `when` filter false while the pass that wrote it still runs:
    # kopf then sets `stopped` and waits this long before cancelling, so a finished migration's daemon
    # returns on its own (cancelling it would log a warning for a normal end).
    cancellation_backoff=20,
    cancellation_timeout=30,
    when=lambda body, **_: _phase(body) not in {p.value for p in FINAL_PHASES},
)
async def run_migration(**kwargs: Any) -> None:
    """One daemon per unfinished migration: passes until a final phase (or the operator stops)."""
    body: kopf.Body = kwargs["body"]
    stopped: kopf.DaemonStopped = kwargs["stopped"]
    migrations: kopf.Index[str, OtherMigration] = kwargs["migrations"]
    uid = body["metadata"]["uid"]
    lock = _locks.setdefault(uid, asyncio.Lock())
    last: MigrationStatus | None = None
    said = ""  # the last unexpected error told to the user, so a repeating one is one Event
    cause = "start"
    while not stopped:
        if body["metadata"].get("deletionTimestamp"):
            return  # the deletion handler rolls back
        async with lock:
            try:
                decision = await _whole(
                    _daemon_pass(uid, _with_status(body, last), migrations, cause, kwargs["hypervisorhosts"])
                )
            except Exception as exc:
                metrics.PASSES.labels(kind="migration", outcome="error").inc()
                log.exception("reconcile pass of %s failed; retrying", body["metadata"]["name"])
                error = f"{type(exc).__name__}: {exc}"[:500]
                if error != said:
                    said = error
                    message = f"Reconcile pass failed ({error}); retrying every {IDLE_POLL:g} s (traceback in the log)"
                    await events.emit(world().kube, body, "Warning", Reason.RECONCILE_ERROR, message)
                await stopped.wait(IDLE_POLL)
                cause = "timer"
                continue
        metrics.PASSES.labels(kind="migration", outcome="ok").inc()
        metrics.LAST_PASS.set_to_current_time()
        last = decision.status
        if last.phase.final:
            _locks.pop(uid, None)
            _wakeups.pop(uid, None)
            log.info("migration %s ended %s; its daemon stops", body["metadata"]["name"], last.phase.value)
            return
        seconds = decision.requeue_after if decision.requeue_after is not None else IDLE_POLL
        if decision.wake_on_job_end:
            # The job's end wakes the daemon at once (reconcile watches it on its host): the poll only
            # samples progress, as often as the operator is told to.
            seconds = max(seconds, world().settings.progress_seconds)
        cause = await _sleep(uid, stopped, seconds)


async def _daemon_pass(
    uid: str,
    body: Mapping[str, Any],
    migrations: kopf.Index[str, OtherMigration],
    cause: str,
    hypervisorhosts: kopf.Index[HostKey, dict[str, Any]],
) -> Decision:
    """One pass; when it ends the migration, the queue hears of it within the same shielded run (kopf
    cancels the daemon as soon as the final status is written)."""
    namespace = body["metadata"]["namespace"]
    decision = await reconcile.migration_pass(
        world(), body, others=_others(migrations, namespace), woken_by=cause, lookup=_Hosts(hypervisorhosts)
    )
    if decision.status.phase.final:
        _finished.add(uid)
    if _left_queue_or_slot(_phase(body), decision.status.phase):
        await _next_up(migrations, namespace, hypervisorhosts)
    return decision


async def _sleep(uid: str, stopped: kopf.DaemonStopped, seconds: float) -> str:
    """Until the poll is due or something wakes the migration; returns why the next pass runs."""
    wake = _wakeups.setdefault(uid, Wakeup())
    waiters = {asyncio.ensure_future(wake.event.wait()), asyncio.ensure_future(stopped.wait())}
    _, pending = await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    cause = wake.cause if wake.event.is_set() else "timer"
    log.debug("migration %s woken by %s after up to %.1f s", uid, cause, seconds)
    wake.event.clear()
    return cause


# Each migration's spec.action as last seen (by UID), to tell a change from another status event.
_actions: dict[str, object] = {}
_UNSEEN = object()


@kopf.on.event(GROUP, VERSION, migration_api.PLURAL)
def action_changed(event: kopf.RawEvent, uid: str, spec: kopf.Spec, **_: Any) -> None:
    """A new spec.action (Cancel, ForceComplete) wakes the migration's daemon at once."""
    if event.get("type") == "DELETED":
        _actions.pop(uid, None)
        return
    action = spec.get("action")
    seen = _actions.get(uid, _UNSEEN)
    _actions[uid] = action
    if seen is not _UNSEEN and seen != action:
        _wake(uid, "spec-change")


@kopf.on.delete(GROUP, VERSION, migration_api.PLURAL, optional=False)
async def delete_migration(**kwargs: Any) -> None:
    """Deleting an unfinished migration cancels and rolls it back before the finalizer goes."""
    body: kopf.Body = kwargs["body"]
    migrations: kopf.Index[str, OtherMigration] = kwargs["migrations"]
    uid, namespace = body["metadata"]["uid"], body["metadata"]["namespace"]
    async with _locks.setdefault(uid, asyncio.Lock()):
        decision = await _whole(
            reconcile.migration_pass(
                world(),
                body,
                deleting=True,
                others=_others(migrations, namespace),
                woken_by="deletion",
                lookup=_Hosts(kwargs["hypervisorhosts"]),
            )
        )
    if not decision.release_finalizer:
        raise kopf.TemporaryError(
            f"rolling back before deletion (phase {decision.status.phase.value})", delay=decision.requeue_after or 2
        )
    _locks.pop(uid, None)
    _finished.add(uid)
    await _next_up(migrations, namespace, kwargs["hypervisorhosts"])


@kopf.on.create(GROUP, VERSION, host_api.PLURAL)
@kopf.on.update(GROUP, VERSION, host_api.PLURAL, field="spec")
@kopf.on.resume(GROUP, VERSION, host_api.PLURAL)
async def probe_host_now(body: kopf.Body, **_: Any) -> None:
    await _probe(body)


@kopf.on.update(GROUP, VERSION, host_api.PLURAL, field="spec")
async def host_limits_changed(old: Any, new: Any, body: kopf.Body, **kwargs: Any) -> None:
    """A host's limit raised makes room at once, as a freed slot does."""
    try:
        before, after = host_api.HostSpec.model_validate(old or {}), host_api.HostSpec.model_validate(new or {})
    except ValidationError:
        return  # not a spec the operator uses: its probe says why
    if after.max_inbound > before.max_inbound or after.max_outbound > before.max_outbound:
        await _next_up(kwargs["migrations"], body["metadata"]["namespace"], kwargs["hypervisorhosts"])


@kopf.on.delete(GROUP, VERSION, host_api.PLURAL, optional=True)
def host_deleted(body: kopf.Body, **_: Any) -> None:
    metrics.forget_host(body["metadata"]["namespace"], body["metadata"]["name"])
    world().access.forget(body["metadata"]["namespace"], body["metadata"]["name"])


@kopf.daemon(GROUP, VERSION, host_api.PLURAL, cancellation_timeout=5)
async def probe_host(body: kopf.Body, stopped: kopf.DaemonStopped, logger: Any, **_: Any) -> None:
    """Probes the host again every --host-probe-seconds (creation, spec changes and operator start-up
    probe at once, above). A daemon rather than a timer, so the interval is the operator's setting."""
    while not stopped:
        await stopped.wait(world().settings.host_probe_seconds)  # returns early when the daemon stops
        if stopped:
            return
        try:
            await _probe(body)
        except kopf.TemporaryError as exc:
            logger.warning(str(exc))


async def _probe(body: kopf.Body) -> None:
    try:
        await reconcile.host_pass(world(), body)
    except Exception as exc:
        metrics.PASSES.labels(kind="host", outcome="error").inc()
        raise kopf.TemporaryError(f"probe failed: {exc}", delay=30) from exc
    metrics.PASSES.labels(kind="host", outcome="ok").inc()
    metrics.LAST_PASS.set_to_current_time()
