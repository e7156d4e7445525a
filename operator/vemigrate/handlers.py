"""kopf glue: which events start which passes. The work itself is in reconcile; what the operator keeps
between passes is one vemigrate.memo.Memo, which kopf hands every handler as `memo`."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Mapping
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
from vemigrate.core.observation import OtherMigration
from vemigrate.kube import events
from vemigrate.memo import Memo
from vemigrate.wakeups import Cause

PREFIX = GROUP
_FINAL_NAMES = frozenset(p.value for p in FINAL_PHASES)
FINALIZER = f"{GROUP}/finalizer"
IDLE_POLL = 5.0
HostKey = tuple[str, str]  # a HypervisorHost's namespace and name

log = logging.getLogger(__name__)


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


@kopf.on.cleanup()
async def close_connections(**kwargs: Any) -> None:
    """After every daemon and handler has ended, in the running loop: the hosts' connections (a libvirt
    connection left to the garbage collector would hang the exit) and then the API client's session
    (found open by the garbage collector, aiohttp warns "Unclosed client session")."""
    world = _memo(kwargs).world
    await world.close()
    await world.kube.close()


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
    cfg = _memo(kwargs).world.kube.configuration
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


def _memo(kwargs: Mapping[str, Any]) -> Memo:
    memo = kwargs.get("memo")
    if not isinstance(memo, Memo):
        raise kopf.PermanentError("the operator was started without its memo (vemigrate run gives kopf one)")
    return memo


@kopf.index(GROUP, VERSION, migration_api.PLURAL)
async def migrations(
    body: kopf.Body, uid: str, spec: kopf.Spec, meta: kopf.Meta, memo: Memo, **_: Any
) -> dict[str, OtherMigration]:
    """Every migration's hosts and phase, by namespace: what admission and duplicate detection compare
    against (hosts are namespaced, so migrations only compete within their namespace). Async so that it
    runs on the event loop in the order the watch delivered the objects (Admission.arrival), not on a
    thread."""
    created = meta.get("creationTimestamp")
    arrival = memo.admission.arrival(uid, final=_phase(body) in _FINAL_NAMES)
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


def _failed_series(event: kopf.RawEvent, body: kopf.Body, name: str, namespace: str) -> None:
    """One metric series per Failed migration object, from the watch rather than from a pass: no pass
    runs for a migration that failed before this process started, nor for its deletion."""
    status = body.get("status") or {}
    reason = None
    if event.get("type") != "DELETED" and _phase(body) == Phase.FAILED.value:
        reason = str((status.get("failure") or {}).get("reason") or status.get("reason") or "Unknown")
    metrics.track_failed(namespace, name, reason)


def _others(memo: Memo, index: kopf.Index[str, OtherMigration], namespace: str) -> list[OtherMigration]:
    """The namespace's migrations as the watch has them now."""
    if not memo.phases_counted:  # kopf keeps the index current: the gauge reads it at every scrape
        metrics.count_phases(lambda: [o.phase for key in index for o in index[key]])
        memo.phases_counted = True
    return list(index.get(namespace, []))


@kopf.on.probe(id="passes")
async def passes_complete(memo: Memo, **_: Any) -> dict[str, float]:
    """kopf's liveness endpoint (`--liveness`) answers 500 once migration passes stop completing: one has
    been running for --stalled-pass-seconds and none has ended for as long (a deadlock, a starved
    thread pool). Answered from the event loop: a blocked loop does not answer at all."""
    passes = memo.passes
    stalled = passes.stalled(memo.world.settings.stalled_pass_seconds)
    if stalled is not None:
        log.error("liveness: migration passes stopped completing: %s", stalled)
        raise kopf.PermanentError(f"migration passes stopped completing: {stalled}")
    return {"running": len(passes.running), "lastEndedSecondsAgo": round(time.monotonic() - passes.last_end, 1)}


def _with_status(body: Mapping[str, Any], status: MigrationStatus | None) -> dict[str, Any]:
    """The body with the status this process wrote last: the watch may not have delivered it yet."""
    copy = dict(body)
    if status is not None:
        copy["status"] = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    return copy


def _dry_run(spec: Mapping[str, Any]) -> bool:
    # spec.dryRun is immutable (a CEL rule of the CRD): which daemon a migration has never changes.
    return bool(spec.get("dryRun"))


def _daemon_wanted(body: Mapping[str, Any], uid: str, memo: Memo) -> bool:
    """Unfinished, or its daemon is still running the pass that finished it. Without the second half, the
    final status would stop the daemon from outside mid-pass: kopf would then poll it with a "touch"
    PATCH of the object; instead it returns on its own (it stops at a final phase, whoever wrote it)."""
    return _phase(body) not in _FINAL_NAMES or uid in memo.daemons


# Stopped (deletion, operator exit) mid-pass, a migration's daemon has cancellation_backoff seconds to end
# the pass and return on its own: cancelled, it would release the migration's lock while its shielded pass
# still runs.
_DAEMON_TIMING: dict[str, Any] = {"initial_delay": 0, "cancellation_backoff": 20, "cancellation_timeout": 30}


@kopf.daemon(
    GROUP,
    VERSION,
    migration_api.PLURAL,
    **_DAEMON_TIMING,
    when=lambda body, spec, uid, memo, **_: not _dry_run(spec) and _daemon_wanted(body, uid, memo),
)
async def run_migration(memo: Memo, **kwargs: Any) -> None:
    """One daemon per unfinished migration: passes until a final phase (or the operator stops). It needs
    kopf's finalizer (kopf adds it before the daemon's first pass): deletion stops it and rolls back."""
    await _passes(memo, **kwargs)


@kopf.daemon(
    GROUP,
    VERSION,
    migration_api.PLURAL,
    **_DAEMON_TIMING,
    when=lambda body, spec, uid, memo, **_: _dry_run(spec) and _daemon_wanted(body, uid, memo),
)
async def run_dry_run(memo: Memo, **kwargs: Any) -> None:
    """A dry run's daemon, the same passes without a finalizer (see _without_finalizer): a dry run touches
    no host, so its deletion has nothing to roll back. The finalizer's PATCH was one API request in five."""
    await _passes(memo, **kwargs)


def _without_finalizer(daemon: Any) -> None:
    """kopf gives every daemon a finalizer, so that deleting the object stops the daemon first; a dry run's
    is stopped by its DELETED event instead (migration_event). kopf has no option for it: its registered
    handler is replaced by a copy without the requirement (tests/unit/test_handlers_finalizer.py checks
    that this still holds with the kopf installed)."""
    spawning = kopf.get_default_registry()._spawning
    found = [h for h in spawning._handlers if h.fn is daemon]
    if len(found) != 1 or not found[0].requires_finalizer:
        raise RuntimeError(f"kopf's registry no longer holds {daemon.__name__} as expected")
    spawning._handlers = [
        dataclasses.replace(h, requires_finalizer=False) if h is found[0] else h for h in spawning._handlers
    ]


_without_finalizer(run_dry_run)


async def _passes(memo: Memo, **kwargs: Any) -> None:
    body: kopf.Body = kwargs["body"]
    stopped: kopf.DaemonStopped = kwargs["stopped"]
    migrations: kopf.Index[str, OtherMigration] = kwargs["migrations"]
    uid, namespace = body["metadata"]["uid"], body["metadata"]["namespace"]
    lookup = _Hosts(kwargs["hypervisorhosts"])
    lock = memo.lock(uid)
    last: MigrationStatus | None = None
    said = ""  # the last unexpected error told to the user, so a repeating one is one Event
    cause = Cause.START
    memo.daemons.add(uid)
    try:
        # The body is kopf's, kept current by the watch: a final phase written by anyone stops the daemon.
        while not stopped and uid not in memo.gone and _phase(body) not in _FINAL_NAMES:
            if body["metadata"].get("deletionTimestamp"):
                return  # the deletion handler rolls back
            async with lock:
                try:
                    decision = await memo.daemon_pass(
                        _with_status(body, last), lambda: _others(memo, migrations, namespace), cause, lookup
                    )
                except Exception as exc:
                    if uid in memo.gone:
                        return  # a deleted dry run: its status write found no object
                    metrics.PASSES.labels(kind="migration", outcome="error").inc()
                    log.exception("reconcile pass of %s failed; retrying", body["metadata"]["name"])
                    error = f"{type(exc).__name__}: {exc}"[:500]
                    if error != said:
                        said = error
                        message = (
                            f"Reconcile pass failed ({error}); retrying every {IDLE_POLL:g} s (traceback in the log)"
                        )
                        await events.emit(memo.world.kube, body, "Warning", Reason.RECONCILE_ERROR, message)
                    await stopped.wait(IDLE_POLL)
                    cause = Cause.TIMER
                    continue
            metrics.PASSES.labels(kind="migration", outcome="ok").inc()
            metrics.LAST_PASS.set_to_current_time()
            last = decision.status
            if last.phase.final:
                memo.ended(uid)
                log.info("migration %s ended %s; its daemon stops", body["metadata"]["name"], last.phase.value)
                return
            seconds = decision.requeue_after if decision.requeue_after is not None else IDLE_POLL
            if decision.wake_on_job_end:
                # The job's end wakes the daemon at once (reconcile watches it on its host): the poll only
                # samples progress, as often as the operator is told to.
                seconds = max(seconds, memo.world.settings.progress_seconds)
            cause = await memo.wakeups.sleep(uid, seconds, stopped.wait())
    finally:
        memo.daemons.discard(uid)
        if uid in memo.gone:  # deleted without a deletion pass: nothing else forgets it
            memo.gone.discard(uid)
            memo.ended(uid)


@kopf.on.event(GROUP, VERSION, migration_api.PLURAL)
async def migration_event(
    event: kopf.RawEvent, uid: str, name: str, spec: kopf.Spec, body: kopf.Body, memo: Memo, **kwargs: Any
) -> None:
    """Every watch event of a migration, in one handler on the event loop (kopf runs a sync handler on a
    thread: a hop per event, a few per migration): the Failed metric series; a new spec.action (Cancel,
    ForceComplete) wakes the migration's daemon at once; a deleted dry run's daemon stops."""
    _failed_series(event, body, name, str(body["metadata"]["namespace"]))
    if event.get("type") != "DELETED":
        memo.wakeups.action_seen(uid, spec.get("action"))
        return
    memo.wakeups.deleted(uid)
    if _dry_run(spec) and _phase(body) not in _FINAL_NAMES:
        namespace = body["metadata"]["namespace"]
        others = _others(memo, kwargs["migrations"], namespace)
        await memo.dry_run_deleted(uid, namespace, others, _Hosts(kwargs["hypervisorhosts"]))


@kopf.on.delete(GROUP, VERSION, migration_api.PLURAL, optional=False, when=lambda spec, **_: not _dry_run(spec))
async def delete_migration(memo: Memo, **kwargs: Any) -> None:
    """Deleting an unfinished migration cancels and rolls it back before the finalizer goes. Not for a dry
    run (no finalizer: nothing of it is on a host)."""
    body: kopf.Body = kwargs["body"]
    migrations: kopf.Index[str, OtherMigration] = kwargs["migrations"]
    namespace = body["metadata"]["namespace"]
    decision = await memo.deletion_pass(
        body, lambda: _others(memo, migrations, namespace), _Hosts(kwargs["hypervisorhosts"])
    )
    if not decision.release_finalizer:
        raise kopf.TemporaryError(
            f"rolling back before deletion (phase {decision.status.phase.value})", delay=decision.requeue_after or 2
        )


@kopf.on.create(GROUP, VERSION, host_api.PLURAL)
@kopf.on.update(GROUP, VERSION, host_api.PLURAL, field="spec")
@kopf.on.resume(GROUP, VERSION, host_api.PLURAL)
async def probe_host_now(body: kopf.Body, memo: Memo, **_: Any) -> None:
    await _probe(memo, body)


@kopf.on.update(GROUP, VERSION, host_api.PLURAL, field="spec")
async def host_limits_changed(old: Any, new: Any, body: kopf.Body, memo: Memo, **kwargs: Any) -> None:
    """A host's limit raised makes room at once, as a freed slot does."""
    try:
        before, after = host_api.HostSpec.model_validate(old or {}), host_api.HostSpec.model_validate(new or {})
    except ValidationError:
        return  # not a spec the operator uses: its probe says why
    if after.max_inbound > before.max_inbound or after.max_outbound > before.max_outbound:
        namespace = body["metadata"]["namespace"]
        await memo.next_up(namespace, _others(memo, kwargs["migrations"], namespace), _Hosts(kwargs["hypervisorhosts"]))


@kopf.on.delete(GROUP, VERSION, host_api.PLURAL, optional=True)
def host_deleted(body: kopf.Body, memo: Memo, **_: Any) -> None:
    metrics.forget_host(body["metadata"]["namespace"], body["metadata"]["name"])
    memo.world.access.forget(body["metadata"]["namespace"], body["metadata"]["name"])


@kopf.daemon(GROUP, VERSION, host_api.PLURAL, cancellation_timeout=5)
async def probe_host(body: kopf.Body, stopped: kopf.DaemonStopped, logger: Any, memo: Memo, **_: Any) -> None:
    """Probes the host again every --host-probe-seconds (creation, spec changes and operator start-up
    probe at once, above). A daemon rather than a timer, so the interval is the operator's setting."""
    while not stopped:
        await stopped.wait(memo.world.settings.host_probe_seconds)  # returns early when the daemon stops
        if stopped:
            return
        try:
            await _probe(memo, body)
        except kopf.TemporaryError as exc:
            logger.warning(str(exc))


async def _probe(memo: Memo, body: kopf.Body) -> None:
    try:
        await reconcile.host_pass(memo.world, body)
    except Exception as exc:
        metrics.PASSES.labels(kind="host", outcome="error").inc()
        raise kopf.TemporaryError(f"probe failed: {exc}", delay=30) from exc
    metrics.PASSES.labels(kind="host", outcome="ok").inc()
    metrics.LAST_PASS.set_to_current_time()
