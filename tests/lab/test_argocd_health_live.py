"""Argo CD's health checks against what the operator really writes, on the lab, for the phases a
successful migration does not pass, or passes too fast to be seen: Queued (notBefore ahead), RollingBack
and Cancelled (a Cancel mid-transfer), Switchover (a ForceComplete mid-transfer), Failed (a pre-flight
check), and a HypervisorHost that cannot be reached. The operator
runs under the Helm chart's RBAC, as in test_chart_operator.

With VEMIGRATE_CAPTURE_ARGOCD=1 these statuses (and test_chart_operator's) are stored as the fixtures
of tests/unit/test_argocd_health.py."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes import client

from tests.fixtures.argocd import Recorder, health, store
from tests.fixtures.chart import ChartOperator, admin_operator_paused, chart_operator
from tests.fixtures.operator import Migrations
from vemigrate_dev.lab import Lab, LabInfo, VMState

__all__ = ["admin_operator_paused", "chart_operator"]  # fixtures these tests use

GROUP, VERSION, PLURAL = "vemigrate.io", "v1alpha1", "virtualenvironmentmigrations"
VEM = "VirtualEnvironmentMigration"


def _transferring(body: dict[str, Any]) -> bool:
    status = body.get("status") or {}
    return status.get("phase") == "Transferring" and ((status.get("progress") or {}).get("bytesProcessed") or 0) > 0


def test_queued_rolling_back_cancelled_and_failed_as_argo_cd_sees_them(
    hosts: LabInfo,
    chart_operator: ChartOperator,
    kube_admin: Any,
    namespace: str,
    vm_cleanup: Callable[[str], str],
) -> None:
    custom: Any = client.CustomObjectsApi(kube_admin)
    migrations = Migrations(custom, namespace, chart_operator.process)
    recorder = Recorder(custom, GROUP, VERSION, namespace, PLURAL)
    try:
        # Queued until a maintenance window an hour away; then cancelled while it waits.
        later = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0).isoformat().replace("+00:00", "Z")
        spec = {"source": {"host": "lab1", "name": "argo-window"}, "target": {"host": "lab2"}, "notBefore": later}
        migrations.create("window", spec)
        queued = migrations.wait_phase("window", "Queued", timeout=60)
        migrations.patch_spec("window", {"action": "Cancel"})
        migrations.wait_phase("window", "Cancelled", timeout=60)

        # Queued for a HypervisorHost not created yet: a wait that ends by itself.
        migrations.create(
            "later-host", {"source": {"host": "lab1", "name": "argo-host"}, "target": {"host": "not-yet"}}
        )
        waiting_host = migrations.wait_phase("later-host", "Queued", timeout=60)
        migrations.patch_spec("later-host", {"action": "Cancel"})

        # Queued for a retry: lab2's address with its SSH port closed stays unreachable past the
        # progress timeout, a retryable failure; the next attempt is an hour away.
        target = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "hypervisorhosts", "lab2")
        closed = {"apiVersion": target["apiVersion"], "kind": target["kind"], "metadata": {"name": "lab2-closed"}}
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "hypervisorhosts", {**closed, "spec": {**target["spec"], "port": 1}}
        )
        retry = {"maxAttempts": 2, "backoffSeconds": 3600}
        timeouts = {"progressSeconds": 10}
        source = {"host": "lab1", "name": "argo-retry"}
        migrations.create(
            "retry", {"source": source, "target": {"host": "lab2-closed"}, "retry": retry, "timeouts": timeouts}
        )
        retrying = migrations.wait("retry", lambda b: bool((b.get("status") or {}).get("nextAttemptTime")), timeout=120)
        migrations.patch_spec("retry", {"action": "Cancel"})

        # Cancelled mid-transfer: 1 MiB/s while the guest dirties 4 MiB/s never converges on its own.
        slow, forced = vm_cleanup("argo-slow"), vm_cleanup("argo-force")
        Lab.create_vm("lab1", slow, state=VMState.RUNNING)
        Lab.create_vm("lab1", forced, state=VMState.RUNNING)
        spec = {"source": {"host": "lab1", "name": slow}, "target": {"host": "lab2"}, "tunnel": False}
        migrations.create("slow", {**spec, "bandwidthMiBps": 1})
        migrations.wait("slow", _transferring, timeout=120)
        migrations.patch_spec("slow", {"action": "Cancel"})
        assert migrations.wait_phase("slow", "Cancelled", "Failed", "Succeeded", timeout=120)["status"]["phase"] == (
            "Cancelled"
        )

        # Another guest, made to finish by ForceComplete mid-transfer: the source pauses while what is
        # left is copied, a Switchover long enough to be written to the status.
        spec = {"source": {"host": "lab1", "name": forced}, "target": {"host": "lab2"}, "tunnel": False}
        migrations.create("force", {**spec, "bandwidthMiBps": 8})
        migrations.wait_phase("force", "Transferring", timeout=120)
        migrations.patch_spec("force", {"action": "ForceComplete"})
        assert migrations.wait_phase("force", "Succeeded", "Failed", timeout=300)["status"]["phase"] == "Succeeded"

        # A pre-flight check fails: a VM with a snapshot cannot migrate.
        snap = vm_cleanup("argo-snap")
        Lab.create_vm("lab1", snap, state=VMState.STOPPED)
        Lab.snapshot("lab1", snap, "before")
        migrations.create("snap", {"source": {"host": "lab1", "name": snap}, "target": {"host": "lab2"}})
        assert migrations.wait_phase("snap", "Failed", "Succeeded", timeout=120)["status"]["phase"] == "Failed"
        time.sleep(1)  # the watch delivers the last writes
    finally:
        recorder.stop()

    judged = health(VEM, queued)
    assert judged["status"] == "Suspended" and "maintenance window" in judged["message"], judged
    store(VEM, "Queued-window", queued)
    judged = health(VEM, waiting_host)
    assert judged == {"status": "Progressing", "message": f"Queued: {waiting_host['status']['queuedReason']}"}
    assert "not-yet" in judged["message"], judged
    store(VEM, "Queued-host", waiting_host)
    assert retrying["status"]["phase"] == "Queued", retrying["status"]
    judged = health(VEM, retrying)
    assert judged["status"] == "Progressing", judged
    assert judged["message"].startswith("Queued to retry after HostUnreachable: "), judged
    store(VEM, "Queued-retry", retrying)

    window = recorder.by_phase("window")
    assert health(VEM, window["Cancelled"]) == {
        "status": "Healthy",
        "message": "Cancelled as spec.action asks; the VE stays on its source",
    }

    slow_phases = recorder.by_phase("slow")
    assert {"Transferring", "RollingBack", "Cancelled"} <= set(slow_phases), sorted(slow_phases)
    # The last Transferring version is the Cancel just applied, before the operator's next pass.
    judged = health(VEM, slow_phases["Transferring"])
    assert judged["status"] == "Progressing" and judged["message"].startswith("Transferring"), judged
    rolling_back = health(VEM, slow_phases["RollingBack"])
    assert rolling_back["status"] == "Progressing" and rolling_back["message"].startswith("RollingBack"), rolling_back
    assert health(VEM, slow_phases["Cancelled"])["status"] == "Healthy"
    store(VEM, "RollingBack", slow_phases["RollingBack"])
    store(VEM, "Cancelled", slow_phases["Cancelled"])

    force = recorder.by_phase("force")
    assert "Switchover" in force, sorted(force)
    switchover = health(VEM, force["Switchover"])
    assert switchover["status"] == "Progressing" and switchover["message"].startswith("Switchover"), switchover
    assert health(VEM, force["Succeeded"])["status"] == "Healthy"
    store(VEM, "Switchover", force["Switchover"])

    failed = recorder.by_phase("snap")["Failed"]
    judged = health(VEM, failed)
    assert judged["status"] == "Degraded" and "PreflightFailed" in judged["message"], judged
    store(VEM, "Failed", failed)

    # A host whose credentials Secret the operator may not read (the chart grants only the lab's named
    # Secrets): probed, and Degraded with the reason.
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "HypervisorHost",
        "metadata": {"name": "no-secret"},
        "spec": {"address": "127.0.0.1", "credentialsSecretRef": {"name": "missing"}, "hostKey": "ssh-ed25519 AAAA"},
    }
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "hypervisorhosts", body)
    host: dict[str, Any] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (host.get("status") or {}).get("conditions"):
        time.sleep(0.5)
        host = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "hypervisorhosts", "no-secret")
    judged = health("HypervisorHost", host)
    assert judged["status"] == "Degraded" and "SecretForbidden" in judged["message"], (judged, host.get("status"))
    store("HypervisorHost", "Unreachable", host)
