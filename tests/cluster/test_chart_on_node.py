"""The chart installed for real (#15 item 3): `helm install` into the local cluster's node, the
operator's image from `make image` in its containerd; the Deployment becomes Available through its
own probes, as the image's user on a read-only root, talking to the apiserver with its
ServiceAccount's mounted token."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

from kubernetes import client

from tests.cluster.objects import host
from tests.fixtures.chart import OperatorPods, install, uninstall
from tests.fixtures.node import NodeCluster, until
from vemigrate.api.common import GROUP, VERSION
from vemigrate.api.host import PLURAL


def test_helm_install_runs_the_operator_pod_until_available(node_cluster: NodeCluster, tmp_path: Path) -> None:
    namespace = f"op-{uuid.uuid4().hex[:8]}"
    release = install(node_cluster.plane, node_cluster.api, namespace, {"image": {"pullPolicy": "Never"}}, tmp_path)
    core = client.CoreV1Api(node_cluster.api)
    try:
        pod = OperatorPods(node_cluster.api, release).available()
        (status,) = pod.status.container_statuses
        assert status.ready and status.restart_count == 0, status
        assert pod.spec.service_account_name == release.service_account

        # The container's process really runs as 65532 (the node's containerd says which PID it is).
        container_id = status.container_id.removeprefix("containerd://")
        tasks = subprocess.run(node_cluster.node.ctr("tasks", "ls"), capture_output=True, text=True, check=True)
        (pid,) = [line.split()[1] for line in tasks.stdout.splitlines()[1:] if line.split()[0] == container_id]
        uids = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("Uid:"))
        assert uids.split()[1:] == ["65532"] * 4

        # The operator in the Pod reconciles through the `kubernetes` Service's address with its mounted
        # token: a host it alone could have given a Reachable condition gets one.
        hosts = f"h-{uuid.uuid4().hex[:8]}"
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=hosts)))
        custom = client.CustomObjectsApi(node_cluster.api)
        custom.create_namespaced_custom_object(GROUP, VERSION, hosts, PLURAL, host("no-secret"))

        def reachable_reason() -> str | None:
            body = custom.get_namespaced_custom_object(GROUP, VERSION, hosts, PLURAL, "no-secret")
            conditions = (body.get("status") or {}).get("conditions") or []
            return next((c.get("reason") for c in conditions if c["type"] == "Reachable"), None)

        reason = until("the operator Pod's Reachable condition on the host", reachable_reason)
        # The chart grants Secrets only in the namespaces it is told (rbac.secretNamespaces): the API
        # refused the Pod's ServiceAccount, and the operator said so on the host.
        assert reason == "SecretForbidden", core.read_namespaced_pod_log(pod.metadata.name, namespace)[-3000:]
    finally:
        uninstall(node_cluster.plane, release)
        core.delete_namespace(namespace)
