"""Prometheus metrics, prefix `vemigrate_`. No VE or migration names in labels (bounded cardinality),
except `vemigrate_migration_failed`: one series per Failed migration object that still exists, so an
alert names the object and resolves when it is deleted.

Outcomes are also counters, for rates over time. The counter series alerts use are created at zero when
the operator starts: `increase()` sees no increase in a series whose first sample is already 1. Every
metric and the alerts built on them: docs/metrics.md.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from datetime import datetime

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

from vemigrate import __version__
from vemigrate.api.checks import CheckResult
from vemigrate.api.host import Driver
from vemigrate.api.migration import FINAL_PHASES, MigrationStatus, Mode, Phase
from vemigrate.api.reasons import Reason

REGISTRY = CollectorRegistry(auto_describe=True)
# The operator's own process (CPU, resident memory, open files, start time: `process_*`) and its Python
# (`python_info`), as every Prometheus client exports them by default; the registry is our own, so they
# are registered here.
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

BUILD_INFO = Gauge(
    "vemigrate_build_info",
    "Always 1; its label says which ve-migrate version runs (during an upgrade, two do).",
    ["version"],
    registry=REGISTRY,
)
BUILD_INFO.labels(version=__version__).set(1)

MIGRATIONS = Counter(
    "vemigrate_migrations",
    "Migrations that reached a final phase, by driver, mode and result (Succeeded, Failed, Cancelled).",
    ["driver", "mode", "result"],
    registry=REGISTRY,
)
FAILURES = Counter(
    "vemigrate_migration_failures",
    "Failed migrations by failure reason.",
    ["reason"],
    registry=REGISTRY,
)
DURATION = Histogram(
    "vemigrate_migration_duration_seconds",
    "From the start of validation to the final phase, for succeeded migrations.",
    ["driver", "mode"],
    buckets=(5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400),
    registry=REGISTRY,
)
DOWNTIME = Histogram(
    "vemigrate_migration_downtime_seconds",
    "Pause seen by the VE at switchover, as the hypervisor measured it.",
    ["driver"],
    buckets=(0.01, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30),
    registry=REGISTRY,
)
BYTES = Counter(
    "vemigrate_migration_transferred_bytes",
    "Bytes sent by finished migration jobs.",
    ["driver", "mode"],
    registry=REGISTRY,
)
IN_PHASE = Gauge(
    "vemigrate_migrations_in_phase",
    "Migration objects currently in each phase.",
    ["phase"],
    registry=REGISTRY,
)
FAILED = Gauge(
    "vemigrate_migration_failed",
    "1 for each migration object in phase Failed, by its namespace, name and status.failure.reason; "
    "the series goes with the object.",
    ["namespace", "name", "reason"],
    registry=REGISTRY,
)
PREFLIGHT_FAILURES = Counter(
    "vemigrate_preflight_failures",
    "Pre-flight checks that failed, by check name.",
    ["check"],
    registry=REGISTRY,
)
HOST_REACHABLE = Gauge(
    "vemigrate_host_reachable",
    "1 if the last probe of the HypervisorHost reached it, else 0.",
    ["namespace", "host"],
    registry=REGISTRY,
)
PASSES = Counter(
    "vemigrate_reconcile_passes",
    "Reconcile passes run, by kind of object and outcome (ok, error).",
    ["kind", "outcome"],
    registry=REGISTRY,
)
WAKEUPS = Counter(
    "vemigrate_migration_wakeups",
    "Migration passes by what started them: start (a daemon's first pass), job-ended (the job's end seen "
    "on its host), timer (the poll: progress, or the safety net), spec-change (spec.action), slot-freed "
    "(its turn in the queue came: a slot freed, one ahead of it went, or a host's limit was raised), deletion.",
    ["cause"],
    registry=REGISTRY,
)
WAKE_CAUSES = ("start", "job-ended", "timer", "spec-change", "slot-freed", "deletion")
LAST_PASS = Gauge(
    "vemigrate_last_reconcile_timestamp_seconds",
    "Unix time of the last completed reconcile pass; a stale value means the operator is stuck.",
    registry=REGISTRY,
)
TIMEOUTS = Counter(
    "vemigrate_migration_timeouts",
    "Migrations rolled back by a timeout: ProgressTimeout (no byte moved for spec.timeouts.progressSeconds) "
    "or CompletionTimeout; counted whether or not a retry follows.",
    ["reason"],
    registry=REGISTRY,
)
QUEUE_WAIT = Gauge(
    "vemigrate_queue_longest_wait_seconds",
    "How long the longest-waiting Queued migration has been ready to start but held back (concurrency limits, "
    "a HypervisorHost not yet created); 0 when none is. Waiting for notBefore or a retry's backoff is not counted.",
    registry=REGISTRY,
)

_TIMEOUT_REASONS = (Reason.PROGRESS_TIMEOUT, Reason.COMPLETION_TIMEOUT)
_RESULTS = tuple(p.value for p in sorted(FINAL_PHASES))
# A queued migration is seen by a pass at least every minute; an entry older than this is forgotten
# (an object gone without a final pass, a paused standby replica).
_QUEUE_FRESH_SECONDS = 180.0
# uid -> (ready since, last seen), both Unix times.
_ready: dict[str, tuple[float, float]] = {}
# (namespace, name) -> failure reason of the Failed migration objects: which FAILED series exist.
_failed: dict[tuple[str, str], str] = {}


def _longest_wait() -> float:
    now = time.time()
    for uid in [u for u, (_, seen) in _ready.items() if now - seen > _QUEUE_FRESH_SECONDS]:
        del _ready[uid]
    return max((now - since for since, _ in _ready.values()), default=0.0)


QUEUE_WAIT.set_function(_longest_wait)


def _initialize() -> None:
    """Create at zero the series that alerts and dashboards take increase() of."""
    for driver in (*(d.value for d in Driver), "unknown"):
        for mode in (Mode.LIVE.value, Mode.OFFLINE.value, "Unknown"):
            for result in _RESULTS:
                MIGRATIONS.labels(driver=driver, mode=mode, result=result)
    for reason in _TIMEOUT_REASONS:
        TIMEOUTS.labels(reason=reason)
    for kind in ("migration", "host"):
        for outcome in ("ok", "error"):
            PASSES.labels(kind=kind, outcome=outcome)
    for cause in WAKE_CAUSES:
        WAKEUPS.labels(cause=cause)


_initialize()


def serve(port: int, address: str = "0.0.0.0") -> None:  # noqa: S104 (a metrics endpoint listens for Prometheus)
    start_http_server(port, addr=address, registry=REGISTRY)


def count_phases(phases: Callable[[], Iterable[str]]) -> None:
    """Migrations per phase, read from `phases` (every migration's phase now) at each scrape, so the
    figures follow the objects even when no pass runs (after the last one ended, or was deleted)."""

    def counter(phase: str) -> Callable[[], float]:
        return lambda: sum(1 for p in phases() if p == phase)

    for phase in Phase:
        IN_PHASE.labels(phase=phase.value).set_function(counter(phase.value))


def record_pass(uid: str, before: MigrationStatus | None, after: MigrationStatus, not_before: datetime | None) -> None:
    """What one migration pass changed: an outcome, a timeout, the migration's place in the queue."""
    record_final(before, after)
    _record_timeout(before, after)
    _record_queue(uid, after, not_before)


def forget_host(namespace: str, name: str) -> None:
    """A deleted HypervisorHost leaves no reachability series behind (it would alert forever)."""
    with contextlib.suppress(KeyError):  # never probed by this process
        HOST_REACHABLE.remove(namespace, name)


def track_failed(namespace: str, name: str, reason: str | None) -> None:
    """The migration object namespace/name is Failed with `reason` now, or (None) it is not, or gone."""
    key = (namespace, name)
    if _failed.get(key) == reason:
        return
    if key in _failed:  # a re-created object of that name, or its deletion
        FAILED.remove(namespace, name, _failed.pop(key))
    if reason is not None:
        FAILED.labels(namespace=namespace, name=name, reason=reason).set(1)
        _failed[key] = reason


def _record_timeout(before: MigrationStatus | None, after: MigrationStatus) -> None:
    """Count a timeout once: on the pass that decided the rollback."""
    if after.phase != Phase.ROLLING_BACK or after.failure is None or after.failure.reason not in _TIMEOUT_REASONS:
        return
    if before is not None and before.phase == Phase.ROLLING_BACK:
        return
    TIMEOUTS.labels(reason=after.failure.reason).inc()


def _record_queue(uid: str, status: MigrationStatus, not_before: datetime | None) -> None:
    now = time.time()
    waits = [t.timestamp() for t in (not_before, status.next_attempt_time) if t is not None]
    if status.phase != Phase.QUEUED or any(t > now for t in waits):
        _ready.pop(uid, None)  # not queued, or waiting on purpose (maintenance window, backoff)
        return
    entered = next((t.time.timestamp() for t in reversed(status.phase_transitions) if t.phase == Phase.QUEUED), now)
    # Ready since it entered the queue, or since the window opened or the backoff ended, if later.
    _ready[uid] = (max([entered, *waits]), now)


def record_final(before: MigrationStatus | None, after: MigrationStatus) -> None:
    """Count an outcome once: on the pass that moved the migration into a final phase."""
    if after.phase not in FINAL_PHASES or (before is not None and before.phase in FINAL_PHASES):
        return
    driver = after.driver or "unknown"
    mode = after.mode.value if after.mode else "Unknown"
    MIGRATIONS.labels(driver=driver, mode=mode, result=after.phase.value).inc()
    if after.phase == Phase.FAILED and after.failure is not None:
        FAILURES.labels(reason=after.failure.reason).inc()
        for check in after.checks:
            if check.result == CheckResult.FAILED:
                PREFLIGHT_FAILURES.labels(check=check.name.value).inc()
    if after.phase == Phase.SUCCEEDED:
        if after.start_time is not None and after.completion_time is not None:
            DURATION.labels(driver=driver, mode=mode).observe(
                (after.completion_time - after.start_time).total_seconds()
            )
        if after.downtime_ms is not None:
            DOWNTIME.labels(driver=driver).observe(after.downtime_ms / 1000)
        if after.progress is not None and after.progress.bytes_processed:
            BYTES.labels(driver=driver, mode=mode).inc(after.progress.bytes_processed)
