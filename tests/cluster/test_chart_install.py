"""The Helm chart against the real kube-apiserver: every rendering passes the server's own dry-run,
`helm install` works, the chart's ServiceAccount may do exactly what the operator needs and nothing
else, and the operator runs under it with the chart's own arguments (kopf peering included)."""

from __future__ import annotations

import base64
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.fixtures.chart import (
    CHART,
    PEERING_CRDS,
    ChartPod,
    Release,
    admin_operator_paused,
    delete_namespace,
    install,
    permission_complaints,
    render,
    uninstall,
)
from vemigrate.api.host import SECRET_MARK_LABEL
from vemigrate_dev.controlplane import ControlPlaneInfo
from vemigrate_dev.controlplane_accounts import api_client

__all__ = ["admin_operator_paused"]  # a fixture these tests use

GROUP, VERSION = "vemigrate.io", "v1alpha1"
GRANTED, NOT_GRANTED = "node-ssh", "unrelated"


def kubectl(
    control_plane: ControlPlaneInfo, *args: str, stdin: str | None = None, kubeconfig: Path | None = None
) -> str:
    result = subprocess.run(
        [str(control_plane.kubectl), f"--kubeconfig={kubeconfig or control_plane.kubeconfig}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0 or args[:2] == ("auth", "can-i"), f"kubectl {' '.join(args)}:\n{result.stderr}"
    return result.stdout.strip()


@pytest.fixture(scope="module")
def chart_crds(control_plane: ControlPlaneInfo) -> None:
    """The chart's crds/ applied for real (server-side, so it is idempotent): kopf's peering CRDs join
    the repository's own, which the control plane has already."""
    for directory in (CHART / "crds", PEERING_CRDS):
        kubectl(control_plane, "apply", "--server-side", "--force-conflicts", "-f", str(directory))
    kubectl(control_plane, "wait", "--for=condition=Established", "crd/clusterkopfpeerings.kopf.dev", "--timeout=60s")
    kubectl(control_plane, "wait", "--for=condition=Established", "crd/kopfpeerings.kopf.dev", "--timeout=60s")


def secret(kube_admin: Any, namespace: str, name: str) -> None:
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(name=name, labels={SECRET_MARK_LABEL: "true"}),
        data={"ssh-privatekey": base64.b64encode(b"not a key").decode()},
    )
    client.CoreV1Api(kube_admin).create_namespaced_secret(namespace, body)


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"replicaCount": 2, "serviceAccount": {"annotations": {"example.com/role": "ops"}}},
        {"watchNamespaces": ["NS"], "rbac": {"secretNames": [GRANTED]}, "replicaCount": 3},
        {"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "bring-your-own"}},
    ],
    ids=["defaults", "peering", "namespaced-peering-named-secrets", "no-rbac"],
)
def test_every_rendering_passes_the_servers_dry_run(
    control_plane: ControlPlaneInfo, chart_crds: None, namespace: str, values: dict[str, Any]
) -> None:
    values = yaml.safe_load(yaml.safe_dump(values).replace("NS", namespace))
    objects = render(values, release=f"dry-{uuid.uuid4().hex[:6]}", namespace=namespace)
    out = kubectl(
        control_plane, "apply", "--dry-run=server", "--server-side", "-f", "-", stdin=yaml.safe_dump_all(objects)
    )
    kinds = [line.split("/")[0] for line in out.splitlines()]
    assert len(kinds) == len(objects), out
    assert all("serverside-applied (server dry run)" in line for line in out.splitlines()), out


@pytest.fixture
def release(
    control_plane: ControlPlaneInfo, kube_admin: Any, namespace: str, tmp_path: Path
) -> Iterator[Callable[..., Release]]:
    """`release(values)`: the chart installed into an operator namespace of its own, Secrets readable in
    the test's namespace; uninstalled afterwards."""
    made: list[tuple[Release, str]] = []

    def make(values: dict[str, Any]) -> Release:
        operator_namespace = f"op-{uuid.uuid4().hex[:8]}"
        rbac = {"secretNamespaces": [namespace], "secretNames": [GRANTED], **values.pop("rbac", {})}
        installed = install(control_plane, kube_admin, operator_namespace, {"rbac": rbac, **values}, tmp_path)
        made.append((installed, operator_namespace))
        return installed

    yield make
    for installed, operator_namespace in made:
        uninstall(control_plane, installed)
        delete_namespace(kube_admin, operator_namespace)


def test_the_charts_service_account_may_do_what_the_operator_does_and_no_more(
    control_plane: ControlPlaneInfo,
    kube_admin: Any,
    namespace: str,
    release: Callable[..., Release],
) -> None:
    installed = release({})
    secret(kube_admin, namespace, GRANTED)
    secret(kube_admin, namespace, NOT_GRANTED)
    secret(kube_admin, installed.namespace, NOT_GRANTED)
    core: Any = client.CoreV1Api(api_client(installed.kubeconfig))

    # The one Secret a host names: readable.
    assert core.read_namespaced_secret(GRANTED, namespace).data["ssh-privatekey"]
    # Anything else is denied by the apiserver: another Secret beside it, listing, another namespace.
    for call, args in [
        (core.read_namespaced_secret, (NOT_GRANTED, namespace)),
        (core.list_namespaced_secret, (namespace,)),
        (core.read_namespaced_secret, (NOT_GRANTED, installed.namespace)),
        (core.list_secret_for_all_namespaces, ()),
    ]:
        with pytest.raises(ApiException) as denied:
            call(*args)
        assert denied.value.status == 403, denied.value.body
        assert f"system:serviceaccount:{installed.namespace}:{installed.service_account}" in str(denied.value.body)

    def can_i(*args: str) -> str:
        return kubectl(control_plane, "auth", "can-i", *args, kubeconfig=installed.kubeconfig)

    allowed = [
        ("list", "virtualenvironmentmigrations.vemigrate.io", "--all-namespaces"),
        ("watch", "hypervisorhosts.vemigrate.io", "--all-namespaces"),
        ("patch", "virtualenvironmentmigrations.vemigrate.io", "-n", namespace),
        ("patch", "virtualenvironmentmigrations.vemigrate.io", "--subresource=status", "-n", namespace),
        ("patch", "hypervisorhosts.vemigrate.io", "--subresource=status", "-n", namespace),
        ("get", "hypervisorhosts.vemigrate.io", "-n", namespace),
        ("create", "events", "-n", namespace),
        ("watch", "customresourcedefinitions.apiextensions.k8s.io"),
    ]
    denied = [
        ("create", "virtualenvironmentmigrations.vemigrate.io", "-n", namespace),
        ("delete", "virtualenvironmentmigrations.vemigrate.io", "-n", namespace),
        ("update", "virtualenvironmentmigrations.vemigrate.io", "-n", namespace),
        ("create", "hypervisorhosts.vemigrate.io", "-n", namespace),
        ("delete", "hypervisorhosts.vemigrate.io", "-n", namespace),
        ("update", "hypervisorhosts.vemigrate.io", "--subresource=status", "-n", namespace),
        ("create", "secrets", "-n", namespace),
        ("create", "pods", "-n", namespace),
        ("delete", "events", "-n", namespace),
        ("list", "namespaces"),
        ("patch", "customresourcedefinitions.apiextensions.k8s.io"),
        ("patch", "clusterkopfpeerings.kopf.dev"),  # one replica: no peering, no rights on it
    ]
    assert [a for a in allowed if can_i(*a) != "yes"] == []
    assert [d for d in denied if can_i(*d) != "no"] == []


def test_the_operator_runs_under_the_charts_rbac_with_peering(
    control_plane: ControlPlaneInfo,
    kube_admin: Any,
    namespace: str,
    release: Callable[..., Release],
    tmp_path: Path,
    admin_operator_paused: None,
) -> None:
    """Two replicas' settings (kopf peering), one of them run: it announces itself in the chart's
    ClusterKopfPeering, probes a host whose Secret it may read, and reports, on the host, the Secret
    it may not read."""
    installed = release({"replicaCount": 2})
    peering = next(o for o in installed.manifest if o["kind"] == "ClusterKopfPeering")["metadata"]["name"]
    secret(kube_admin, namespace, GRANTED)
    secret(kube_admin, namespace, NOT_GRANTED)
    custom: Any = client.CustomObjectsApi(kube_admin)
    for name, ref in [("granted", GRANTED), ("forbidden", NOT_GRANTED)]:
        # Port 1 on the loopback: nothing listens, so the probe fails fast after the Secret is read.
        spec = {"address": "127.0.0.1", "port": 1, "credentialsSecretRef": {"name": ref}, "hostKey": "ssh-ed25519 AAAA"}
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "HypervisorHost", "metadata": {"name": name}, "spec": spec}
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "hypervisorhosts", body)

    pod = ChartPod(installed, tmp_path / "operator.log")
    assert "--peering=" + peering in pod.argv()
    pod.start()
    try:
        deadline = time.monotonic() + 60
        reasons: dict[str, str] = {}
        while time.monotonic() < deadline and len(reasons) < 2:
            for name in ("granted", "forbidden"):
                status = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "hypervisorhosts", name)
                for condition in (status.get("status") or {}).get("conditions") or []:
                    if condition["type"] == "Reachable":
                        reasons[name] = condition["reason"]
            time.sleep(0.5)
        assert reasons.get("forbidden") == "SecretForbidden", f"{reasons}\n{pod.tail()}"
        assert reasons.get("granted") not in (None, "SecretForbidden", "SecretNotFound"), f"{reasons}\n{pod.tail()}"
        peers = custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", peering).get("status") or {}
        assert len(peers) == 1, f"the operator announces itself in the peering object: {peers}\n{pod.tail()}"
        assert "Pausing" not in pod.log.read_text(), pod.tail()
    finally:
        pod.stop()
    log = pod.log.read_text()
    assert [line for line in permission_complaints(log) if "SecretForbidden" not in line] == [], log
