"""HypervisorHosts are probed again every `--host-probe-seconds`: the setting reaches the probe loop;
and with two replicas under kopf peering exactly one of them does the work.
A host whose credentials Secret is missing is probed without any SSH, so the real apiserver is all
this needs; every probe is one `vemigrate_reconcile_passes_total{kind="host"}`."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from kubernetes import client

from tests.fixtures.operator import OperatorProcess
from vemigrate import __version__
from vemigrate.api.common import GROUP, VERSION
from vemigrate.api.host import PLURAL
from vemigrate_dev.controlplane import ControlPlaneInfo

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ"


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
            "hostKey": HOST_KEY,
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
        # What a dashboard joins on, served by the running operator: its version and its own process.
        assert operator.metric("vemigrate_build_info", version=__version__) == 1
        assert operator.metric("process_resident_memory_bytes") > 10 * 2**20
    finally:
        operator.stop()


def test_two_replicas_with_peering_one_works_the_other_stands_by(
    control_plane: ControlPlaneInfo, kube_admin: Any, namespace: str, tmp_path: Path
) -> None:
    """Without --priority each replica takes one from its start time, so kopf does not pause them all
    (as it does for equal priorities): the first started works, the other stands by, and hosts still
    get probed."""
    # The peering CRDs come with the chart's kopf-peering subchart (not installed by the session).
    crds = Path(__file__).resolve().parents[2] / "charts" / "ve-migrate" / "charts" / "kopf-peering" / "crds"
    kubectl = [str(control_plane.kubectl), f"--kubeconfig={control_plane.kubeconfig}"]
    subprocess.run([*kubectl, "apply", "--server-side", "--force-conflicts", "-f", str(crds)], check=True)
    subprocess.run([*kubectl, "wait", "--for=condition=Established", "crd/kopfpeerings.kopf.dev"], check=True)
    peering = {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "vemigrate"}}
    custom = client.CustomObjectsApi(kube_admin)
    custom.create_namespaced_custom_object("kopf.dev", "v1", namespace, "kopfpeerings", peering)
    args = ["--peering", "vemigrate", "--namespace", namespace, "--host-probe-seconds", "1"]
    replicas = [OperatorProcess(control_plane.kubeconfig, tmp_path / f"replica{i}.log", args) for i in range(2)]
    for replica in replicas:
        replica.start()
    try:
        deadline = time.monotonic() + 60
        peers: dict[str, Any] = {}
        while len(peers) < 2:
            assert time.monotonic() < deadline, f"the replicas did not both announce themselves: {peers}"
            time.sleep(0.5)
            body = custom.get_namespaced_custom_object("kopf.dev", "v1", namespace, "kopfpeerings", "vemigrate")
            peers = body.get("status") or {}
        priorities = {peer["priority"] for peer in peers.values()}
        assert len(priorities) == 2, f"equal priorities would pause both: {peers}"
        time.sleep(3)  # kopf settles who pauses
        spec = {"address": "192.0.2.10", "credentialsSecretRef": {"name": "absent"}, "hostKey": HOST_KEY}
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "HypervisorHost", "metadata": {"name": "no-secret"}}
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, {**body, "spec": spec})
        while _reason(custom, namespace) != "SecretNotFound":
            assert time.monotonic() < deadline + 60, "no replica works: " + replicas[0].tail() + replicas[1].tail()
            time.sleep(0.2)
        time.sleep(3)
        working = [r.metric("vemigrate_reconcile_passes_total", kind="host") > 0 for r in replicas]
        assert working.count(True) == 1, f"exactly one replica probes hosts: {working}"
    finally:
        for replica in replicas:
            replica.stop()
