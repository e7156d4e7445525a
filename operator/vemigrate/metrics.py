"""Prometheus metrics, prefix `vemigrate_`. No VE or migration names in labels: bounded cardinality.

Outcomes are counters, so alerts still see a failure after its migration object is deleted.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from vemigrate.api.checks import CheckResult
from vemigrate.api.migration import FINAL_PHASES, MigrationStatus, Phase

REGISTRY = CollectorRegistry(auto_describe=True)

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
LAST_PASS = Gauge(
    "vemigrate_last_reconcile_timestamp_seconds",
    "Unix time of the last completed reconcile pass; a stale value means the operator is stuck.",
    registry=REGISTRY,
)


def serve(port: int, address: str = "0.0.0.0") -> None:  # noqa: S104 (a metrics endpoint listens for Prometheus)
    start_http_server(port, addr=address, registry=REGISTRY)


def phase_counts(phases: list[str]) -> None:
    for phase in Phase:
        IN_PHASE.labels(phase=phase.value).set(sum(1 for p in phases if p == phase.value))


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
