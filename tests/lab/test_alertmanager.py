"""Alerts delivered: a real Prometheus scrapes the operator during lab migrations and host probes,
evaluates the chart's rules and sends them to a real Alertmanager, whose webhook notifications the test
receives. What a user's pager gets: one notification per failed migration, naming it, with a runbook
link, and its resolution."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kubernetes import client

from tests.fixtures.alertmanager import OPERATOR_NAMESPACE, RUNBOOKS, Alerting, alerting
from tests.fixtures.operator import Migrations, OperatorProcess
from vemigrate.api.common import GROUP, VERSION, SecretKeyRef
from vemigrate.api.host import KNOWN_HOSTS_KEY, PLURAL, PRIVATE_KEY_KEY, Driver, HostSpec, HypervisorHost
from vemigrate_dev.controlplane import free_ports
from vemigrate_dev.lab import Lab, LabInfo, VMState
from vemigrate_dev.lab.kube import KEY_SECRET, KNOWN_HOSTS_SECRET

__all__ = ["alerting"]  # the fixture these tests use
Cleanup = Callable[[str], str]
FAILED = "VemigrateMigrationFailed"
UNREACHABLE = "VemigrateHostUnreachable"


def _evaluated_since(alerting: Alerting, since: float, evaluations: int = 3) -> None:
    """Prometheus has evaluated the rules a few times after `since` (Unix time), and sent Alertmanager
    whatever they fired."""

    def later() -> bool:
        groups = alerting.prometheus.api("rules")["groups"]
        return min(datetime.fromisoformat(g["lastEvaluation"]).timestamp() for g in groups) > since + evaluations

    alerting.prometheus.wait("rule evaluations", later, timeout=30)


def test_a_failed_migration_is_one_notification_resolved_by_deleting_it_and_a_retry_stays_quiet(
    hosts: LabInfo,
    migrations: Migrations,
    operator: OperatorProcess,
    alerting: Alerting,
    vm_cleanup: Cleanup,
    record_property: Callable[[str, object], None],
) -> None:
    started = time.monotonic()
    webhook, ns = alerting.webhook, migrations.namespace
    # A VM with a snapshot fails the NoSnapshots pre-flight check: a real failure, nothing moved.
    name = vm_cleanup("am-fail1")
    Lab.create_vm("lab1", name, state=VMState.STOPPED)
    Lab.snapshot("lab1", name, "keep-me")
    spec = {"source": {"host": "lab1", "name": name}, "target": {"host": "lab2"}}
    migrations.create(name, spec)
    status = migrations.wait_phase(name, "Failed", "Succeeded", timeout=180)["status"]
    assert status["phase"] == "Failed" and status["failure"]["reason"] == "PreflightFailed", status
    failed_at = time.monotonic()

    firing = webhook.wait("firing", FAILED, timeout=60, namespace=ns, name=name)
    record_property("failure_notified_after_seconds", round(time.monotonic() - failed_at, 1))
    # The migration's own namespace, not the one the scrape gave the operator's target.
    assert firing["labels"] == {
        "alertname": FAILED,
        "severity": "warning",
        "namespace": ns,
        "name": name,
        "reason": "PreflightFailed",
    }, firing["labels"]
    assert firing["annotations"]["runbook_url"] == f"{RUNBOOKS}/{FAILED}.md"
    assert f"{ns}/{name} ended Failed with reason PreflightFailed" in firing["annotations"]["description"]

    # The retry the runbook gives: remove the cause, delete the failed object, apply it again.
    lab1 = next(h for h in hosts.hosts if h.name == "lab1")
    conn = lab1.connect()
    try:
        conn.lookupByName(name).snapshotLookupByName("keep-me").delete(0)
    finally:
        conn.close()
    migrations.delete(name)
    migrations.gone(name)
    resolved = webhook.wait("resolved", FAILED, timeout=60, namespace=ns, name=name)
    assert resolved["labels"] == firing["labels"]
    # Only this object's: Failed objects of earlier tests in the session stay (and fire) for good.
    assert [a for a in alerting.alertmanager.active(FAILED) if a["labels"]["namespace"] == ns] == []

    migrations.create(name, spec)
    status = migrations.wait_phase(name, "Succeeded", "Failed", timeout=300)["status"]
    assert status["phase"] == "Succeeded", status
    _evaluated_since(alerting, datetime.now(UTC).timestamp())
    # Nothing active in Alertmanager for the name, so nothing more to send; and one firing notification
    # for the failure through all of it: no repeat while it fired, none for the object that succeeded.
    assert [a for a in alerting.alertmanager.active(FAILED) if a["labels"]["name"] == name] == []
    sent = [a["status"] for a in webhook.alerts(FAILED, namespace=ns, name=name)]
    assert sent.count("firing") == 1 and sent[0] == "firing", sent
    assert sent[-1] == "resolved", sent
    assert [a for a in alerting.prometheus.alerts(FAILED) if a["labels"]["name"] == name] == []
    record_property("test_seconds", round(time.monotonic() - started, 1))


def test_an_unreachable_host_is_notified_with_its_own_namespace(
    hosts: LabInfo,
    migrations: Migrations,
    operator: OperatorProcess,
    alerting: Alerting,
    kube_admin: Any,
) -> None:
    ns, name = migrations.namespace, "am-gone"
    # The lab's credentials, and a port on the loopback nothing listens on: every probe is refused.
    spec = HostSpec(
        address="127.0.0.1",
        port=free_ports(1)[0],
        driver=Driver.LIBVIRT,
        credentials_secret_ref=SecretKeyRef(name=KEY_SECRET, key=PRIVATE_KEY_KEY),
        known_hosts_secret_ref=SecretKeyRef(name=KNOWN_HOSTS_SECRET, key=KNOWN_HOSTS_KEY),
    )
    api = client.CustomObjectsApi(kube_admin)
    host = HypervisorHost(metadata={"name": name, "namespace": ns}, spec=spec).to_wire()
    api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, host)
    try:
        firing = alerting.webhook.wait("firing", UNREACHABLE, timeout=60, host=name)
        assert firing["labels"]["namespace"] == ns != OPERATOR_NAMESPACE, firing["labels"]
        assert firing["labels"]["severity"] == "warning"
        assert firing["annotations"]["runbook_url"] == f"{RUNBOOKS}/{UNREACHABLE}.md"
        assert f"HypervisorHost {ns}/{name} has failed every probe" in firing["annotations"]["description"]
        reachable = api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)["status"]["conditions"]
        assert [(c["status"], c["reason"]) for c in reachable if c["type"] == "Reachable"] == [
            ("False", "HostUnreachable")
        ]
    finally:
        api.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
    # A retired host's series goes with its object, and so does the alert.
    alerting.webhook.wait("resolved", UNREACHABLE, timeout=60, namespace=ns, host=name)
    # The lab's own hosts in this namespace answer: no alert names them.
    assert [a["labels"]["host"] for a in alerting.webhook.alerts(UNREACHABLE, namespace=ns)] == [name, name]
