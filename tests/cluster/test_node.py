"""The local cluster's node (`vemigrate controlplane up --node`): the operator's image runs as a Pod,
under its ServiceAccount's mounted token, a Deployment rolls, a namespace's deletion completes (the
controller-manager runs), and `down` leaves no process, mount, device, cgroup or NAT rule behind."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.fixtures.controlplane import session_state_dir
from tests.fixtures.node import IMAGE, NodeCluster, require_node, until
from vemigrate_dev.controlplane import ControlPlane
from vemigrate_dev.controlplane_accounts import api_client
from vemigrate_dev.controlplane_node import PAUSE_IMAGE

T = TypeVar("T")
TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
# Prints its UID and the mounted token, then waits to be stopped (SIGTERM ends it: Python as PID 1 ignores it).
_PRINT_TOKEN = (
    "import os, pathlib, signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
    "print(os.getuid(), flush=True)\n"
    f"print(pathlib.Path({TOKEN!r}).read_text(), flush=True)\n"
    "time.sleep(1e6)\n"
)


def _deployment(name: str, env: str) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [
                        {
                            "name": "operator-image",
                            "image": IMAGE,
                            "imagePullPolicy": "Never",
                            "command": ["python3", "-c", _PRINT_TOKEN],
                            "env": [{"name": "ROLL", "value": env}],
                            # As the chart runs it: the image's user, a read-only root.
                            "securityContext": {
                                "runAsNonRoot": True,
                                "readOnlyRootFilesystem": True,
                                "allowPrivilegeEscalation": False,
                            },
                            "readinessProbe": {
                                "exec": {"command": ["python3", "-c", f"open({TOKEN!r}).read()"]},
                                "periodSeconds": 2,
                            },
                        }
                    ],
                },
            },
        },
    }


def _ready_pods(core: client.CoreV1Api, namespace: str, selector: str) -> list[Any]:
    pods = core.list_namespaced_pod(namespace, label_selector=selector).items
    return [
        pod
        for pod in pods
        if pod.metadata.deletion_timestamp is None
        and any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
    ]


def _fresh_namespace(core: client.CoreV1Api) -> str:
    name = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    until(f"namespace {name}'s default ServiceAccount", lambda: core.list_namespaced_service_account(name).items)
    return name


def test_deployment_of_the_image_runs_with_its_token_and_rolls(node_cluster: NodeCluster) -> None:
    kube_admin = node_cluster.api
    core, apps = client.CoreV1Api(kube_admin), client.AppsV1Api(kube_admin)
    namespace = _fresh_namespace(core)
    apps.create_namespaced_deployment(namespace, _deployment("web", "1"))
    (first,) = until("the Deployment's Pod Ready", lambda: _ready_pods(core, namespace, "app=web"))
    assert first.spec.node_name == "vemigrate-node"
    assert first.spec.service_account_name == "default"  # made by the controller-manager
    (status,) = first.status.container_statuses
    assert status.image_id  # containerd ran the imported image
    # The kubelet mounted a token the apiserver itself issued for this Pod's ServiceAccount, readable
    # by the image's user.
    uid, token = until(
        "the Pod's log holding its UID and token",
        lambda: core.read_namespaced_pod_log(first.metadata.name, namespace).split() or None,
    )
    assert uid == "65532"
    review = client.AuthenticationV1Api(kube_admin).create_token_review(
        client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token))
    )
    assert review.status.authenticated, review.status.error
    assert review.status.user.username == f"system:serviceaccount:{namespace}:default"
    assert review.status.user.extra["authentication.kubernetes.io/pod-name"] == [first.metadata.name]

    # A changed template rolls: a new ReplicaSet's Pod becomes Ready and replaces the first one.
    apps.patch_namespaced_deployment("web", namespace, _deployment("web", "2"))

    def rolled() -> Any:
        ready = _ready_pods(core, namespace, "app=web")
        names = {pod.metadata.name for pod in core.list_namespaced_pod(namespace, label_selector="app=web").items}
        return ready if len(ready) == 1 and first.metadata.name not in names else None

    (second,) = until("the Deployment rolled to a new Pod", rolled)
    assert second.metadata.labels["pod-template-hash"] != first.metadata.labels["pod-template-hash"]
    assert second.spec.containers[0].env[0].value == "2"
    core.delete_namespace(namespace)


def test_namespace_deletion_completes(node_cluster: NodeCluster) -> None:
    node = node_cluster.node
    core = client.CoreV1Api(node_cluster.api)
    name = _fresh_namespace(core)
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="held"),
        spec=client.V1PodSpec(
            termination_grace_period_seconds=1,
            containers=[client.V1Container(name="pause", image=PAUSE_IMAGE, image_pull_policy="Never")],
        ),
    )
    core.create_namespaced_pod(name, pod)
    until("the Pod Ready", lambda: _ready_pods(core, name, ""))
    core.delete_namespace(name)

    def gone() -> bool:
        try:
            core.read_namespace(name)
        except ApiException as exc:
            return exc.status == 404
        return False

    until(f"namespace {name} deleted", gone)
    # ... and the node really stopped its Pod: no container of that namespace has a running task.
    ours = _run(node.ctr("containers", "ls", "-q", f"labels.io.kubernetes.pod.namespace=={name}")).split()
    assert ours  # the Pod's sandbox and container, stopped (the kubelet removes them later)
    tasks = [line.split() for line in _run(node.ctr("tasks", "ls")).splitlines()[1:]]
    assert [task for task in tasks if task[0] in ours and task[2] == "RUNNING"] == []


def _run(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def _our_processes(directory: Path) -> list[str]:
    marker = str(directory).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                line = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker in line:
                found.append(entry.name + ": " + line.replace(b"\0", b" ").decode(errors="replace"))
    return found


def test_down_leaves_nothing_behind() -> None:
    require_node()
    directory = session_state_dir("node-down")
    plane = ControlPlane(directory)
    try:
        info = plane.ensure_up(node=True)
        node = plane.node.status()
        state = plane.node.read_state()
        assert node is not None and state is not None
        api = api_client(info.kubeconfig)
        core = client.CoreV1Api(api)
        until("the default ServiceAccount", lambda: core.list_namespaced_service_account("default").items)
        core.create_namespaced_pod(
            "default",
            client.V1Pod(
                metadata=client.V1ObjectMeta(name="held"),
                spec=client.V1PodSpec(
                    containers=[client.V1Container(name="pause", image=PAUSE_IMAGE, image_pull_policy="Never")]
                ),
            ),
        )
        (pod,) = until("the Pod Ready", lambda: _ready_pods(core, "default", ""))
        api.close()  # type: ignore[no-untyped-call]
        pod_ip = pod.status.pod_ip
        # What the running node holds outside its directory, seen before `down`:
        assert _our_processes(directory)
        assert subprocess.run(["ip", "link", "show", state.bridge], capture_output=True, check=False).returncode == 0
        cgroups = list(Path("/sys/fs/cgroup").glob(f"*/{state.cgroup_root.lstrip('/')}"))
        assert cgroups
        nat = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
        assert pod_ip in nat  # the Pod's masquerading
        assert f"vemigrate node {directory / 'node'}" in nat  # the route to the apiserver
        mounts = Path("/proc/self/mountinfo").read_text()
        assert str(directory / "node") in mounts
    finally:
        plane.down()
    assert _our_processes(directory) == []
    assert str(directory / "node") not in Path("/proc/self/mountinfo").read_text()
    assert subprocess.run(["ip", "link", "show", state.bridge], capture_output=True, check=False).returncode != 0
    assert [path for path in cgroups if path.exists()] == []
    nat = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
    assert pod_ip not in nat
    assert str(directory) not in nat
    assert [
        link
        for link in Path("/var/log/containers").glob("*")
        if link.is_symlink() and str(link.readlink()).startswith(str(directory))
    ] == []
    assert not (directory / "node").exists()
    ControlPlane(directory).down()  # idempotent
    shutil.rmtree(directory, ignore_errors=True)
