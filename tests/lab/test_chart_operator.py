"""The operator under the Helm chart's RBAC, on the real lab: the chart installed into the real
apiserver, `vemigrate` run with the Deployment's arguments and a token of the chart's ServiceAccount,
and a live migration of a running guest goes through every phase to Succeeded; what the chart does not
grant (a Secret it was not given) is refused by the apiserver. Every status the operator wrote on the
way is put to the Argo CD health check, too."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.fixtures.argocd import Recorder, health, store
from tests.fixtures.chart import ChartOperator, admin_operator_paused, chart_operator, permission_complaints
from tests.fixtures.operator import Migrations
from tests.lab.evidence import beating_on, domain, first_beat
from vemigrate_dev.controlplane_accounts import api_client
from vemigrate_dev.lab import Lab, LabInfo, VMState

__all__ = ["admin_operator_paused", "chart_operator"]  # fixtures these tests use

GROUP, VERSION, PLURAL = "vemigrate.io", "v1alpha1", "virtualenvironmentmigrations"
ARGO = {
    "": "Progressing",
    "Pending": "Progressing",
    "Validating": "Progressing",
    "Transferring": "Progressing",
    "Switchover": "Progressing",
    "Finalizing": "Progressing",
    "Succeeded": "Healthy",
}


def test_a_live_migration_succeeds_under_the_charts_rbac(
    hosts: LabInfo,
    chart_operator: ChartOperator,
    kube_admin: Any,
    namespace: str,
    vm_cleanup: Callable[[str], str],
) -> None:
    release = chart_operator.release
    migrations = Migrations(client.CustomObjectsApi(kube_admin), namespace, chart_operator.process)
    recorder = Recorder(client.CustomObjectsApi(kube_admin), GROUP, VERSION, namespace, PLURAL)
    name = vm_cleanup("chart-live")
    Lab.create_vm("lab1", name, state=VMState.RUNNING)
    boot, counter = first_beat("lab1", name)
    try:
        migrations.create(name, {"source": {"host": "lab1", "name": name}, "target": {"host": "lab2"}})
        status = migrations.wait_phase(name, "Succeeded", "Failed", timeout=300)["status"]
    finally:
        recorder.stop()
    assert status["phase"] == "Succeeded", status
    assert {c["type"]: c["reason"] for c in status["conditions"]}["Succeeded"] == "Migrated"
    assert beating_on("lab2", name, boot) > counter, "the same guest runs on, on the target"
    assert domain(hosts, "lab1", name) is None, "and only there"

    # Outside the chart's grant: another Secret beside the hosts' two, and any Secret of the operator's
    # own namespace. The apiserver refuses the ServiceAccount's token.
    core: Any = client.CoreV1Api(kube_admin)
    data = {"password": base64.b64encode(b"hunter2").decode()}
    core.create_namespaced_secret(namespace, client.V1Secret(metadata=client.V1ObjectMeta(name="other"), data=data))
    as_operator: Any = client.CoreV1Api(api_client(release.kubeconfig))
    for secret_namespace, secret in [(namespace, "other"), (release.namespace, "other")]:
        with pytest.raises(ApiException) as denied:
            as_operator.read_namespaced_secret(secret, secret_namespace)
        assert denied.value.status == 403, denied.value.body
    assert as_operator.read_namespaced_secret("vemigrate-lab-ssh-key", namespace).data, "what it was given it reads"
    assert permission_complaints(chart_operator.process.log.read_text()) == [], chart_operator.process.tail()

    # The statuses the operator wrote, phase by phase, as Argo CD would judge them.
    phases = recorder.by_phase(name)
    # Switchover is in the status only when it outlasts a pass (a guest this small converges within one);
    # test_argocd_health_live forces a long one. Finalizing is written by the pass that sees the job end,
    # before it disposes of the source.
    assert {"Validating", "Transferring", "Finalizing", "Succeeded"} <= set(phases), sorted(phases)
    for phase, body in phases.items():
        judged = health("VirtualEnvironmentMigration", body)
        assert judged["status"] == ARGO[phase], (phase, judged)
        store("VirtualEnvironmentMigration", phase or "NoStatus", body)
    assert "Migrated" in health("VirtualEnvironmentMigration", phases["Succeeded"])["message"]
    # The job's end is no reason to wait: a pass that reads libvirt just after the domain left the source
    # reads the job's record again instead of reporting the job unobservable.
    unobserved = [
        c["message"]
        for body in recorder.seen
        for c in (body.get("status") or {}).get("conditions", [])
        if c["type"] == "Progressing" and "not running" in c["message"]
    ]
    assert unobserved == [], unobserved
    host = client.CustomObjectsApi(kube_admin).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "hypervisorhosts", "lab1"
    )
    assert health("HypervisorHost", host)["status"] == "Healthy"
    store("HypervisorHost", "Reachable", host)
