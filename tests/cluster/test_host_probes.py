"""HypervisorHosts are probed again every `--host-probe-seconds`: the setting reaches the probe loop.
A host whose credentials Secret is missing is probed without any SSH, so the real apiserver is all
this needs; every probe is one `vemigrate_reconcile_passes_total{kind="host"}`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from kubernetes import client

from tests.fixtures.operator import OperatorProcess
from vemigrate.api.common import GROUP, VERSION
from vemigrate.api.host import PLURAL
from vemigrate.devenv.controlplane import ControlPlaneInfo


def _reason(api: Any, namespace: str) -> str | None:
    body = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "no-secret")
    conditions = (body.get("status") or {}).get("conditions") or []
    return next((c["reason"] for c in conditions if c["type"] == "Reachable"), None)


def test_hosts_are_probed_every_host_probe_seconds(
    control_plane: ControlPlaneInfo, kube_admin: Any, namespace: str, tmp_path: Path
) -> None:
    operator = OperatorProcess(
        control_plane.kubeconfig, tmp_path / "operator.log", ["--host-probe-seconds", "1", "--namespace", namespace]
    )
    operator.start()
    try:
        api = client.CustomObjectsApi(kube_admin)
        spec = {
            "address": "192.0.2.10",
            "credentialsSecretRef": {"name": "absent"},
            "hostKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ",
        }
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "HypervisorHost", "metadata": {"name": "no-secret"}}
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, {**body, "spec": spec})
        deadline = time.monotonic() + 60
        while _reason(api, namespace) != "SecretNotFound":
            assert time.monotonic() < deadline, f"the host was never probed:\n{operator.tail()}"
            time.sleep(0.2)
        first = operator.metric("vemigrate_reconcile_passes_total", kind="host")
        time.sleep(5)
        probes = operator.metric("vemigrate_reconcile_passes_total", kind="host") - first
        assert 3 <= probes <= 7, f"{probes} probes in 5 s at one a second"
    finally:
        operator.stop()
