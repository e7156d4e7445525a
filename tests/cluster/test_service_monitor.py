"""The chart's ServiceMonitor, scraped the way prometheus-operator turns it into a Prometheus job: the
chart's metrics Service and its Endpoints in the real apiserver are discovered (role `endpoints`), and
a real Prometheus relabels and scrapes as prometheus-operator's generated job does.
`vemigrate_host_reachable` must keep the HypervisorHost's namespace in `namespace` (what
VemigrateHostUnreachable names), not the operator's.

Two stand-ins, named: Debian's Prometheus has no Kubernetes discovery, so the targets the discovery
would find are read from the apiserver by tests.fixtures.prometheus.endpoints_discovery and given to
Prometheus as file_sd; and there is no Pod network, so the Endpoints name a documentation address
(192.0.2.10, never contacted) and the job's last relabelling sends the scrape to the operator process
on 127.0.0.1. Every label still comes from discovery and relabelling as it would in a cluster."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.fixtures.chart import one, render
from tests.fixtures.operator import OperatorProcess
from tests.fixtures.prometheus import (
    PrometheusServer,
    endpoints_discovery,
    prometheus_binary,
    service_monitor_scrape_config,
)
from vemigrate.api.common import GROUP, VERSION
from vemigrate.api.host import PLURAL
from vemigrate_dev.controlplane import ControlPlaneInfo

POD = "vem-ve-migrate-0"
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ"


@pytest.fixture
def hosts_namespace(kube_admin: Any) -> Iterator[str]:
    """A second namespace: the HypervisorHost's, not the operator's."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    core = client.CoreV1Api(kube_admin)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    client.CustomObjectsApi(kube_admin).delete_collection_namespaced_custom_object(GROUP, VERSION, name, PLURAL)
    core.delete_namespace(name)


def _publish(kube_admin: Any, namespace: str, service: dict[str, Any], port: int) -> None:
    """The chart's metrics Service, and the Endpoints the endpoints controller would give it for one Pod."""
    core = client.CoreV1Api(kube_admin)
    core.create_namespaced_service(namespace, service)
    endpoints = {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": service["metadata"]["name"], "labels": service["metadata"]["labels"]},
        "subsets": [
            {
                "addresses": [
                    {
                        "ip": "192.0.2.10",
                        "targetRef": {"kind": "Pod", "name": "vem-ve-migrate-0", "namespace": namespace},
                    }
                ],
                "ports": [{"name": "metrics", "port": port, "protocol": "TCP"}],
            }
        ],
    }
    core.create_namespaced_endpoints(namespace, endpoints)


def test_the_service_monitor_keeps_the_hosts_namespace_on_its_series(
    control_plane: ControlPlaneInfo, kube_admin: Any, namespace: str, hosts_namespace: str, tmp_path: Path
) -> None:
    operator = OperatorProcess(control_plane.kubeconfig, tmp_path / "operator.log", ["--host-probe-seconds", "1"])
    operator.start()
    prometheus: PrometheusServer | None = None
    try:
        host = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "HypervisorHost",
            "metadata": {"name": "unreachable"},
            "spec": {
                "address": "127.0.0.1",
                "port": 9,
                "credentialsSecretRef": {"name": "absent"},
                "hostKey": HOST_KEY,
            },
        }
        client.CustomObjectsApi(kube_admin).create_namespaced_custom_object(
            GROUP, VERSION, hosts_namespace, PLURAL, host
        )

        # The chart as released (honorLabels on) and as it was (off), both rendered into the operator's namespace.
        monitors = {}
        for honor in (True, False):
            objects = render({"serviceMonitor": {"enabled": True, "honorLabels": honor}}, namespace=namespace)
            monitors[honor] = one(objects, "ServiceMonitor")
        _publish(kube_admin, namespace, one(objects, "Service"), 9090)
        discovered = tmp_path / "endpoints.json"
        discovered.write_text(json.dumps(endpoints_discovery(client.CoreV1Api(kube_admin), [namespace])))
        to_operator = {"target_label": "__address__", "replacement": f"127.0.0.1:{operator.metrics_port}"}
        jobs = []
        for honor, monitor in monitors.items():
            job = service_monitor_scrape_config(monitor, discovered)
            job["job_name"] += "" if honor else "-without-honor-labels"
            job["relabel_configs"].append(to_operator)
            jobs.append(job)
        prometheus = PrometheusServer(prometheus_binary(), tmp_path, [], scrape_configs=jobs)
        prometheus.start()

        def series() -> list[dict[str, Any]] | None:
            found = prometheus.query('vemigrate_host_reachable{host="unreachable"} == 0')  # type: ignore[union-attr]
            return found if len(found) == 2 else None

        found = {
            bool(s["metric"].get("exported_namespace")): s["metric"] for s in prometheus.wait("both series", series, 60)
        }
        released, before = found[False], found[True]
        assert released["namespace"] == hosts_namespace, released
        assert released["service"] == "vem-ve-migrate-metrics" and released["pod"] == POD, released
        # Without honorLabels the alert would name the operator's namespace: the defect the value fixes.
        assert before["namespace"] == namespace and before["exported_namespace"] == hosts_namespace, before

        # VemigrateHostUnreachable's expression, as the rules file has it, names the host's own namespace.
        alert = prometheus.query(
            'max by (namespace, host) (vemigrate_host_reachable{job="vem-ve-migrate-metrics"}) == 0'
        )
        assert {(a["metric"]["namespace"], a["metric"]["host"]) for a in alert} >= {(hosts_namespace, "unreachable")}
    finally:
        if prometheus is not None:
            prometheus.stop()
        operator.stop()
