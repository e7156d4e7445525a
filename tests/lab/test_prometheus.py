"""A real Prometheus scrapes the running operator during lab migrations made to fail, evaluates the
project's alert rules (the production file, unchanged), and the alerts reach the firing state: read
back from Prometheus's own HTTP API. Delivery through Alertmanager: test_alertmanager.py."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tests.fixtures.operator import Migrations, OperatorProcess
from tests.fixtures.prometheus import JOB, PrometheusServer
from vemigrate_dev.lab import Lab, LabInfo, VMState

Cleanup = Callable[[str], str]


def _operator_up(prometheus: PrometheusServer, operator: OperatorProcess) -> dict[str, Any]:
    def up() -> dict[str, Any] | None:
        for target in prometheus.targets():
            if target["labels"]["job"] == JOB and target["health"] == "up":
                return target
        return None

    target: dict[str, Any] = prometheus.wait("operator target up", up, timeout=30)
    assert target["scrapeUrl"] == f"http://127.0.0.1:{operator.metrics_port}/metrics"
    assert prometheus.query(f'up{{job="{JOB}"}} == 1'), "up is 1 for the operator"
    return target


def _scraped_twice(prometheus: PrometheusServer, series: str) -> None:
    """The series is in Prometheus with at least two samples from before anything happens: an increase
    after this is seen as one."""
    prometheus.wait(f"two samples of {series}", lambda: prometheus.query(f"count_over_time({series}[1m]) >= 2"), 30)


def _counted(operator: OperatorProcess, expected: float, name: str, **labels: str) -> None:
    """The operator counts a pass's outcome right after writing its status (and Events): wait for it."""
    deadline = time.monotonic() + 10
    while operator.metric(name, **labels) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    assert operator.metric(name, **labels) == expected, f"{name}{labels}"


def _firing(prometheus: PrometheusServer, alertname: str, timeout: float, **labels: str) -> dict[str, Any]:
    """The first firing alert `alertname` with these labels (other tests' objects may fire it too)."""

    def firing() -> dict[str, Any] | None:
        mine = (a for a in prometheus.alerts(alertname) if all(a["labels"].get(k) == v for k, v in labels.items()))
        return next((a for a in mine if a["state"] == "firing"), None)

    alert: dict[str, Any] = prometheus.wait(f"firing {alertname} alert", firing, timeout)
    return alert


def test_a_failed_migration_fires_the_failure_alert(
    hosts: LabInfo,
    migrations: Migrations,
    operator: OperatorProcess,
    prometheus: PrometheusServer,
    vm_cleanup: Cleanup,
    record_property: Callable[[str, object], None],
) -> None:
    _operator_up(prometheus, operator)
    _scraped_twice(prometheus, 'vemigrate_migrations_total{result="Failed"}')
    # Failed objects other tests of the session left (their namespaces are never emptied without a
    # controller-manager) may fire it: none of them is in this test's namespace.
    mine = [
        a for a in prometheus.alerts("VemigrateMigrationFailed") if a["labels"]["namespace"] == migrations.namespace
    ]
    assert mine == [], "nothing failed in this namespace yet"
    failed_before = operator.metric("vemigrate_migrations_total", result="Failed")

    # A VM with a snapshot fails the NoSnapshots pre-flight check: a real failure, nothing moved.
    name = vm_cleanup("prom-fail1")
    Lab.create_vm("lab1", name, state=VMState.STOPPED)
    Lab.snapshot("lab1", name, "keep-me")
    migrations.create(name, {"source": {"host": "lab1", "name": name}, "target": {"host": "lab2"}})
    status = migrations.wait_phase(name, "Failed", "Succeeded", timeout=180)["status"]
    failed_at = time.monotonic()
    assert status["phase"] == "Failed" and status["failure"]["reason"] == "PreflightFailed", status
    _counted(operator, failed_before + 1, "vemigrate_migrations_total", result="Failed")

    alert = _firing(prometheus, "VemigrateMigrationFailed", timeout=60, namespace=migrations.namespace, name=name)
    fired_after = time.monotonic() - failed_at
    record_property("failure_alert_firing_after_seconds", round(fired_after, 1))
    print(f"VemigrateMigrationFailed firing {fired_after:.1f} s after the migration was seen Failed")
    assert alert["labels"]["severity"] == "warning"
    assert {k: alert["labels"][k] for k in ("namespace", "name", "reason")} == {
        "namespace": migrations.namespace,
        "name": name,
        "reason": "PreflightFailed",
    }
    assert alert["annotations"]["runbook_url"] == "docs/runbooks/VemigrateMigrationFailed.md"
    # Deleting the failed object (to re-apply it, GitOps pruning) resolves its alert; the counter keeps it.
    migrations.delete(name)
    migrations.gone(name)
    prometheus.wait(
        "the failure alert gone",
        lambda: all(a["labels"]["name"] != name for a in prometheus.alerts("VemigrateMigrationFailed")),
        timeout=30,
    )
    assert prometheus.query(f'sum(vemigrate_migrations_total{{result="Failed"}}) >= {failed_before + 1}')
    # A pre-flight failure is no stall, and the operator is neither down nor stuck.
    for quiet in ("VemigrateMigrationStalled", "VemigrateOperatorDown", "VemigrateOperatorNotReconciling"):
        assert prometheus.alerts(quiet) == [], quiet


def test_a_stalled_migration_fires_the_stall_alert(
    hosts: LabInfo,
    migrations: Migrations,
    operator: OperatorProcess,
    prometheus: PrometheusServer,
    vm_cleanup: Cleanup,
) -> None:
    _operator_up(prometheus, operator)
    _scraped_twice(prometheus, 'vemigrate_migration_timeouts_total{reason="ProgressTimeout"}')
    stalls = operator.metric("vemigrate_migration_timeouts_total", reason="ProgressTimeout")

    # A live migration at 1 MiB/s, then the target's link cut: no byte moves for progressSeconds.
    name = vm_cleanup("prom-stall1")
    Lab.create_vm("lab1", name, state=VMState.RUNNING)
    spec = {"source": {"host": "lab1", "name": name}, "target": {"host": "lab2"}, "tunnel": False}
    migrations.create(name, {**spec, "bandwidthMiBps": 1, "timeouts": {"progressSeconds": 10}})
    migrations.wait(
        name,
        lambda b: ((b.get("status") or {}).get("progress") or {}).get("bytesProcessed", 0) > 0,
        timeout=120,
    )
    Lab.link("lab2", False)
    try:
        migrations.wait(
            name, lambda b: ((b.get("status") or {}).get("failure") or {}).get("reason") == "ProgressTimeout"
        )
    finally:
        Lab.link("lab2", True)
    _counted(operator, stalls + 1, "vemigrate_migration_timeouts_total", reason="ProgressTimeout")

    alert = _firing(prometheus, "VemigrateMigrationStalled", timeout=60)
    assert alert["labels"]["severity"] == "warning"
    assert alert["annotations"]["runbook_url"] == "docs/runbooks/VemigrateMigrationStalled.md"
    status = migrations.wait_phase(name, "Failed", timeout=180)["status"]
    assert status["failure"]["reason"] == "ProgressTimeout"
    # No retry: the stall ended it, and its own alert fires.
    _firing(prometheus, "VemigrateMigrationFailed", timeout=60, namespace=migrations.namespace, name=name)
