"""The operator as users run it (#15 item 3): the chart installed with Helm into the local cluster's
node (the image from `make image` in its containerd), the lab's HypervisorHosts and their two Secrets
applied as a user would, with the chart told to read exactly those Secrets; live migrations of running
lab guests driven by the operator's Pod, and by nothing else: no operator process runs on this machine
against this cluster, and the Pod's own log, read through the API, says it ended the migration.

Evidence from outside the operator, as in tests/faults: libvirt on both hosts sampled through the run
(never two copies running, never none complete), the guest's heartbeat on the target (the same boot,
its counter going on), the copied disk's payload, and the job's files on the source."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.faults.invariants import examine
from tests.faults.watch import Sampler, copies_differ, job_attempts, job_state
from tests.fixtures.chart import OperatorPods, Release, install, uninstall
from tests.fixtures.node import NodeCluster, until
from tests.fixtures.operator import Migrations
from tests.lab.evidence import beating_on, domain, first_beat
from vemigrate_dev.lab import Lab, LabInfo, VMInfo, VMState
from vemigrate_dev.lab import kube as lab_kube


@dataclass
class PodOperator:
    """The chart's operator running as a Pod on the node, and the namespace of the lab's hosts."""

    namespace: str
    release: Release
    pods: OperatorPods
    migrations: Migrations
    server: str  # the cluster's apiserver


@pytest.fixture
def pod_operator(lab: LabInfo, node_cluster: NodeCluster, tmp_path: Path) -> Iterator[PodOperator]:
    """What docs/install.md tells a user to do: the hosts and their Secrets (labelled
    vemigrate.io/host-credentials) in a namespace of theirs, and `helm install` with that namespace and
    those two Secret names as the only ones the operator may read; the image is on the node already
    (pullPolicy Never: the kubelet never pulls here)."""
    core: Any = client.CoreV1Api(node_cluster.api)
    namespace = f"fleet-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    lab_kube.apply(lab, namespace, str(node_cluster.plane.kubeconfig))
    values = {
        "image": {"pullPolicy": "Never"},
        "rbac": {
            "secretNamespaces": [namespace],
            "secretNames": [lab_kube.KEY_SECRET, lab_kube.KNOWN_HOSTS_SECRET],
        },
    }
    release = install(node_cluster.plane, node_cluster.api, f"op-{uuid.uuid4().hex[:6]}", values, tmp_path)
    pods = OperatorPods(node_cluster.api, release)
    try:
        pods.available()
        migrations = Migrations(client.CustomObjectsApi(node_cluster.api), namespace, pods)
        yield PodOperator(namespace, release, pods, migrations, node_cluster.plane.server)
    finally:
        # The hosts' namespace first, while the operator still runs to let go of what it finalizes.
        core.delete_namespace(namespace)
        uninstall(node_cluster.plane, release)
        core.delete_namespace(release.namespace)


def test_the_operator_pod_migrates_a_running_guest(
    lab: LabInfo, pod_operator: PodOperator, vm_cleanup: Callable[[str], str]
) -> None:
    pod = pod_operator.pods.available()
    name = vm_cleanup("pod-live")
    vm = Lab.create_vm("lab1", name, state=VMState.RUNNING, dirty_mib=1)
    boot, counter = first_beat("lab1", name)
    sampler = Sampler(lab, vm.uuid)
    pod_operator.migrations.create(name, {"source": {"host": "lab1", "name": name}, "target": {"host": "lab2"}})
    body = pod_operator.migrations.wait_phase(name, "Succeeded", "Failed", "Cancelled", timeout=300)
    status = body["status"]
    assert status["phase"] == "Succeeded", f"{status}\n{pod_operator.pods.tail()}"
    assert {c["type"]: c["reason"] for c in status["conditions"]}["Succeeded"] == "Migrated"
    assert status["mode"] == "Live" and status["result"]["sourceDisposition"] == "Removed", status
    _sound(lab, vm, body, sampler)
    assert domain(lab, "lab1", name) is None, "the source's copy is gone"

    # It was the Pod: the one Pod of the Deployment, never restarted, says so in its log, and no
    # operator on this machine talks to this cluster from outside a Pod.
    _ended_in_log(pod_operator.pods, pod.metadata.name, name, "Succeeded")
    (now,) = pod_operator.pods.pods()
    assert now.metadata.uid == pod.metadata.uid and not pod_operator.pods.died(), pod_operator.pods.tail()
    assert _operators_outside_pods(pod_operator.server) == []
    # Last: a TCG guest that panics after its move is an expected failure (evidence.py), not the Pod's.
    assert beating_on("lab2", name, boot) > counter, "the same guest runs on, on the target"


def test_a_deleted_operator_pod_is_replaced_and_the_new_one_reattaches_to_the_job(
    lab: LabInfo, pod_operator: PodOperator, vm_cleanup: Callable[[str], str]
) -> None:
    """The operator's Pod deleted mid-transfer, while the migration's job runs on the source: the
    Deployment's next Pod re-attaches to that same job (one attempt, one Transferring, no second job
    directory ever on the source) and ends the migration Succeeded."""
    pods, migrations = pod_operator.pods, pod_operator.migrations
    first = pods.available()
    name = vm_cleanup("pod-deleted")
    vm = Lab.create_vm("lab1", name, state=VMState.RUNNING, dirty_mib=1)
    boot, counter = first_beat("lab1", name)
    sampler = Sampler(lab, vm.uuid)
    # 4 MiB/s against 1 MiB/s dirtied (tests/faults' "slow" migration): the 256 MiB guest's memory and
    # its disk took about a minute here; the Pod was deleted past the half and its successor was ready
    # some 11 s later, the job still running.
    spec = {"source": {"host": "lab1", "name": name}, "target": {"host": "lab2"}, "tunnel": False}
    uid = migrations.create(name, {**spec, "bandwidthMiBps": 4})["metadata"]["uid"]
    jobs = _JobDirectories(uid)
    try:
        migrations.copying(name)
        pods.core.delete_namespaced_pod(first.metadata.name, pods.namespace)
        # The fault landed: the Pod went while the migration was Transferring and its job ran on the source.
        after = (migrations.get(name).get("status") or {}).get("phase")
        assert (after, job_state(uid)) == ("Transferring", "running"), "the Pod was deleted too late to matter"

        second = pods.available()
        assert second.metadata.uid != first.metadata.uid
        body = migrations.wait_phase(name, "Succeeded", "Failed", "Cancelled", timeout=300)
    finally:
        seen = jobs.stop()
    status = body["status"]
    assert status["phase"] == "Succeeded", f"{status}\n{pods.tail()}"
    assert status["attempts"] == 1, status
    assert [t["phase"] for t in status["phaseTransitions"]].count("Transferring") == 1, "one job only"
    assert seen == {"1"}, f"job directories seen on the source: {sorted(seen)}"
    _sound(lab, vm, body, sampler)
    # The new Pod ended it (the deleted one's log went with it), and no operator outside a Pod did.
    _ended_in_log(pods, second.metadata.name, name, "Succeeded")
    assert not pods.died(), pods.tail()
    assert _operators_outside_pods(pod_operator.server) == []
    # Last: a TCG guest that panics after its move is an expected failure (evidence.py), not the Pod's.
    assert beating_on("lab2", name, boot) > counter, "the same guest runs on, on the target"


def _sound(lab: LabInfo, vm: VMInfo, body: dict[str, Any], sampler: Sampler) -> None:
    """tests/faults' invariants for a live migration that succeeded: never two copies running and never
    none complete at any sampled instant, one copy running now, nothing left behind (the job's files
    on the source included), and the target's disk holds the payload the source's did."""
    outcome = examine(lab, "operator Pod", vm, body, was_running=True, samples=sampler.stop(), expected=("Succeeded",))
    outcome.differs = copies_differ(lab, vm.uuid, {}, vm.payload_md5, vm.name)
    assert outcome.sound, outcome.explain()


def _ended_in_log(pods: OperatorPods, pod: str, migration: str, phase: str) -> None:
    """The Pod's log names the migration as ended (its daemon logs that right after the final status)."""
    line = f"migration {migration} ended {phase}; its daemon stops"
    until(f"{line!r} in the log of Pod {pod}", lambda: line in pods.log(pod), timeout=60)


class _JobDirectories:
    """Every attempt directory of a migration's jobs seen on the source (lab1), sampled in a thread
    until stopped: a second job would show as a second directory, however briefly it lived."""

    def __init__(self, uid: str) -> None:
        self.uid = uid
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="job-directories", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.seen.update(job_attempts(self.uid))
            self._stop.wait(0.5)

    def stop(self) -> set[str]:
        self._stop.set()
        self._thread.join(timeout=5)
        return self.seen


def _operators_outside_pods(server: str) -> list[str]:
    """`vemigrate run` processes on this machine that reach `server` through a kubeconfig (an argument
    or $KUBECONFIG): an operator run as a host process against this cluster. A Pod's operator uses its
    in-cluster configuration and names none."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            environ = (entry / "environ").read_bytes().decode(errors="replace").split("\0")
        except (OSError, ValueError):
            continue  # gone meanwhile, or not a process
        if not _runs_operator(argv):
            continue
        configs = [a.removeprefix("--kubeconfig=") for a in argv if a.startswith("--kubeconfig=")]
        configs += [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--kubeconfig"]
        configs += [e.removeprefix("KUBECONFIG=") for e in environ if e.startswith("KUBECONFIG=")]
        if any(server in _servers(Path(entry / "cwd", config)) for config in configs):
            found.append(f"{entry.name}: {' '.join(argv)}")
    return found


def _runs_operator(argv: list[str]) -> bool:
    words = [a for a in argv if a]
    for i, word in enumerate(words[:-1]):
        module = word == "vemigrate" and i > 0 and words[i - 1] == "-m"
        if (module or Path(word).name == "vemigrate") and words[i + 1] == "run":
            return True
    return False


def _servers(kubeconfig: Path) -> list[str]:
    try:
        config = yaml.safe_load(kubeconfig.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return []
    return [str((c.get("cluster") or {}).get("server")) for c in config.get("clusters") or []]
