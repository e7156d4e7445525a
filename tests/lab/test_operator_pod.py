"""The operator as users run it (#15 item 3): the chart installed with Helm into the local cluster's
node (the image from `make image` in its containerd), the lab's HypervisorHosts and their two Secrets
applied as a user would, with the chart told to read exactly those Secrets; live migrations of running
lab guests driven by the operator's Pod, and by nothing else: no operator process runs on this machine
against this cluster, and the Pod's own log, read through the API, says it ended the migration.

Evidence from outside the operator, as in tests/faults: libvirt on both hosts sampled through the run
(never two copies running, never none complete), the guest's heartbeat on the target (the same boot,
its counter going on), the copied disk's payload, and the job's files on the source."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.faults.invariants import JOBS_DIR, examine
from tests.faults.watch import Sampler, copies_differ, domain_disks, file_md5, job_attempts, job_state
from tests.fixtures.chart import OperatorPods, Release, install, one, uninstall, upgrade
from tests.fixtures.node import NodeCluster, until
from tests.fixtures.operator import Migrations
from tests.lab.evidence import beating_on, domain, first_beat
from vemigrate.api.common import GROUP, VERSION
from vemigrate.api.host import PLURAL as HOSTS
from vemigrate.handlers import FINALIZER
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
    cluster: NodeCluster
    values: dict[str, Any]  # what the release was installed with

    def upgrade(self, values: dict[str, Any]) -> None:
        """`helm upgrade` with these values on top of the installed ones; not waiting for the rollout."""
        self.values = {**self.values, **values}
        self.release = upgrade(self.cluster.plane, self.release, self.values)

    def uninstall(self) -> None:
        """`helm uninstall`, then until the operator's Pods are gone."""
        uninstall(self.cluster.plane, self.release)
        until(f"no Pod of release {self.release.name}", lambda: not self.pods.pods(), timeout=120)

    def reinstall(self) -> None:
        """`helm install` again: the same release name, namespace and values."""
        self.release = install(
            self.cluster.plane,
            self.cluster.api,
            self.release.namespace,
            self.values,
            self.release.kubeconfig.parent,
            release=self.release.name,
        )


@contextlib.contextmanager
def operator_pod(
    lab: LabInfo, node_cluster: NodeCluster, tmp_path: Path, values: dict[str, Any] | None = None
) -> Iterator[PodOperator]:
    """What docs/install.md tells a user to do: the hosts and their Secrets (labelled
    vemigrate.io/host-credentials) in a namespace of theirs, and `helm install` with that namespace and
    those two Secret names as the only ones the operator may read, and `values` besides; the image is
    on the node already (pullPolicy Never: the kubelet never pulls here)."""
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
        **(values or {}),
    }
    release = install(node_cluster.plane, node_cluster.api, f"op-{uuid.uuid4().hex[:6]}", values, tmp_path)
    pods = OperatorPods(node_cluster.api, release)
    operator = None
    try:
        pods.all_available()
        migrations = Migrations(client.CustomObjectsApi(node_cluster.api), namespace, pods)
        operator = PodOperator(namespace, release, pods, migrations, node_cluster.plane.server, node_cluster, values)
        yield operator
    finally:
        # The hosts' namespace first, while the operator still runs to let go of what it finalizes
        # (a test that ends uninstalled has installed it again, or left its objects Terminating).
        core.delete_namespace(namespace)
        uninstall(node_cluster.plane, operator.release if operator else release, missing_ok=True)
        core.delete_namespace(release.namespace)


@pytest.fixture
def pod_operator(lab: LabInfo, node_cluster: NodeCluster, tmp_path: Path) -> Iterator[PodOperator]:
    """The chart's defaults: one replica, standalone."""
    with operator_pod(lab, node_cluster, tmp_path) as operator:
        yield operator


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
    # The Pod was deleted past the half of the transfer and its successor was ready some 11 s later,
    # the job still running.
    guest = _migrate_slowly(lab, migrations, vm_cleanup("pod-deleted"))
    try:
        migrations.copying(guest.name)
        pods.core.delete_namespaced_pod(first.metadata.name, pods.namespace)
        # The fault landed: the Pod went while the migration was Transferring and its job ran on the source.
        guest.in_flight(migrations, "the Pod was deleted too late to matter")

        second = pods.available()
        assert second.metadata.uid != first.metadata.uid
        body = migrations.wait_phase(guest.name, "Succeeded", "Failed", "Cancelled", timeout=300)
    finally:
        guest.jobs.stop()
    # The new Pod ended it (the deleted one's log went with it), and no operator outside a Pod did.
    guest.moved(lab, pod_operator, body, second.metadata.name)


def test_helm_upgrade_mid_transfer_rolls_the_pod_and_the_new_one_reattaches_to_the_job(
    lab: LabInfo, pod_operator: PodOperator, vm_cleanup: Callable[[str], str]
) -> None:
    """`helm upgrade` with a changed value (an extraEnv entry) while the migration is Transferring:
    the Deployment's Pod template changes, so it rolls out (Recreate: the old Pod stops on SIGTERM before
    the new one starts); the new Pod re-attaches to the same job (the same process on the source, by its
    recorded pid, boot and start time) and ends the migration Succeeded, one job having run."""
    pods, migrations = pod_operator.pods, pod_operator.migrations
    first = pods.available()
    guest = _migrate_slowly(lab, migrations, vm_cleanup("pod-upgrade"))
    try:
        migrations.copying(guest.name)
        words = _LastWords(pods, first.metadata.name)
        pod_operator.upgrade({"extraEnv": [{"name": "TZ", "value": "UTC"}]})
        said = words.ended()
        # The fault landed: the old Pod was gone while the migration was Transferring and its job ran.
        guest.in_flight(migrations, "the upgrade rolled out too late to matter")
        assert "Signal SIGTERM is received. Operator is stopping." in said, said[-3000:]
        assert f"migration {guest.name} ended" not in said and "Traceback" not in said, said[-3000:]

        second = pods.available()
        assert second.metadata.uid != first.metadata.uid
        env = {e.name: e.value for e in second.spec.containers[0].env}
        assert env.get("TZ") == "UTC", "the new Pod is the upgraded release's"
        body = migrations.wait_phase(guest.name, "Succeeded", "Failed", "Cancelled", timeout=300)
    finally:
        guest.jobs.stop()
    guest.moved(lab, pod_operator, body, second.metadata.name)


@pytest.fixture
def pod_operator_pair(lab: LabInfo, node_cluster: NodeCluster, tmp_path: Path) -> Iterator[PodOperator]:
    """Two replicas: the chart turns kopf peering on (ClusterKopfPeering, RollingUpdate)."""
    with operator_pod(lab, node_cluster, tmp_path, {"replicaCount": 2}) as operator:
        yield operator


def test_two_replicas_one_works_and_the_standby_takes_over_when_it_is_deleted_mid_transfer(
    lab: LabInfo, pod_operator_pair: PodOperator, vm_cleanup: Callable[[str], str]
) -> None:
    """With two replicas exactly one Pod works, the one started first (the highest kopf peering
    priority); the other stays paused and does nothing. The working Pod deleted mid-transfer, the
    standby takes over (the Deployment's replacement Pod, younger, stands by in its turn), re-attaches
    to the same job and ends the migration Succeeded, one job having run."""
    operator = pod_operator_pair
    pods, migrations = operator.pods, operator.migrations
    ready = pods.all_available()
    peering = one(operator.release.manifest, "ClusterKopfPeering")["metadata"]["name"]
    working = _working(operator, peering, {p.metadata.name for p in ready})
    (standby,) = [p.metadata.name for p in ready if p.metadata.name != working]
    until(f"Pod {working} working", lambda: _works(pods, working), timeout=120)
    assert not _works(pods, standby), pods.tail()

    guest = _migrate_slowly(lab, migrations, vm_cleanup("pod-peers"))
    try:
        migrations.copying(guest.name)
        words = _LastWords(pods, working)
        pods.core.delete_namespaced_pod(working, pods.namespace)
        said = words.ended()
        guest.in_flight(migrations, "the Pod was deleted too late to matter")
        assert f"migration {guest.name} ended" not in said, said[-3000:]
        body = migrations.wait_phase(guest.name, "Succeeded", "Failed", "Cancelled", timeout=300)
        now = pods.all_available()
    finally:
        guest.jobs.stop()
    # The standby ended it; the replacement Pod, started last, stood by and did not.
    (replacement,) = [p.metadata.name for p in now if p.metadata.name not in (working, standby)]
    assert _works(pods, standby) and not _works(pods, replacement), pods.tail()
    assert f"migration {guest.name} ended" not in pods.log(replacement), pods.tail()
    assert _working(operator, peering, {p.metadata.name for p in now}) == standby
    guest.moved(lab, operator, body, standby)


def test_helm_uninstall_leaves_every_object_ve_and_job_alone_and_a_reinstall_resumes(
    lab: LabInfo, pod_operator: PodOperator, vm_cleanup: Callable[[str], str]
) -> None:
    """`helm uninstall` with a finished migration, an in-flight one (Transferring, its job running on the
    source), a queued one (its window ahead) and the HypervisorHosts in place: the operator's Pod, RBAC
    and Service go; the CRDs (the chart's crds/), the custom resources with their status and the
    operator's finalizer stay; no VE, disk or job is touched, and the in-flight job runs on. A finished
    migration deleted meanwhile waits (Terminating) for the operator. `helm install` again: the
    in-flight migration is resumed from its job and ends Succeeded with one job, the deleted one's
    finalizer goes touching nothing, the queued one waits on for its window."""
    operator = pod_operator
    pods, migrations = operator.pods, operator.migrations
    custom: Any = client.CustomObjectsApi(operator.cluster.api)
    pods.available()

    # To finish first: a stopped guest moved offline (while the running one boots); its copy on the
    # target is the VE then. Queued: its maintenance window an hour away (no VE needed to wait for it).
    done = vm_cleanup("pod-done")
    Lab.create_vm("lab1", done, state=VMState.STOPPED, dirty_mib=1)
    migrations.create("done", {"source": {"host": "lab1", "name": done}, "target": {"host": "lab2"}})
    later = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    window = {"source": {"host": "lab1", "name": "pod-later"}, "target": {"host": "lab2"}, "notBefore": later}
    migrations.create("later", window)
    guest = _migrate_slowly(lab, migrations, vm_cleanup("pod-uninstall"))
    try:
        finished = migrations.wait_phase("done", "Succeeded", "Failed", "Cancelled", timeout=300)
        assert finished["status"]["phase"] == "Succeeded", finished["status"]
        moved = finished["status"]["result"]["targetUUID"]
        disks = domain_disks(lab, "lab2", moved)
        assert disks, "the finished migration's VE on the target"
        moved_md5 = {dev: file_md5(lab, "lab2", path) for dev, path in disks.items()}
        migrations.copying(guest.name)
        queued = migrations.wait_phase("later", "Queued", timeout=60)
        hosts_before = _hosts(custom, operator.namespace)

        operator.uninstall()
        guest.in_flight(migrations, "the uninstall came too late to matter")
        apis: Any = client.ApiextensionsV1Api(operator.cluster.api)
        for crd in ("virtualenvironmentmigrations.vemigrate.io", "hypervisorhosts.vemigrate.io"):
            apis.read_custom_resource_definition(crd)  # crds/: Helm never deletes them
        frozen = {n: migrations.get(n) for n in ("done", "later", guest.name)}
        for n, body in frozen.items():
            assert FINALIZER in body["metadata"].get("finalizers", []), f"{n} keeps the operator's finalizer"
        assert frozen["done"]["status"] == finished["status"] and frozen["later"]["status"] == queued["status"]
        hosts_now = _hosts(custom, operator.namespace)
        assert hosts_now.keys() == hosts_before.keys(), "the HypervisorHosts stay"
        for h, body in hosts_now.items():
            assert FINALIZER in body["metadata"].get("finalizers", []), f"host {h} keeps the operator's finalizer"

        # A finished migration deleted without an operator: Terminating until one lets go of it.
        migrations.delete("done")
        time.sleep(5)  # not a timing claim: nothing runs that could let go of it
        assert migrations.get("done")["metadata"].get("deletionTimestamp"), "held by its finalizer"
        assert migrations.get(guest.name)["status"] == frozen[guest.name]["status"], "no operator wrote anything"
        assert {dev: file_md5(lab, "lab2", path) for dev, path in disks.items()} == moved_md5

        operator.reinstall()
        pod = pods.available()
        migrations.gone("done")
        body = migrations.wait_phase(guest.name, "Succeeded", "Failed", "Cancelled", timeout=300)
    finally:
        guest.jobs.stop()
    # Deleting the finished migration touched its VE not at all: there, stopped, the same bytes.
    assert domain_disks(lab, "lab2", moved) == disks
    assert {dev: file_md5(lab, "lab2", path) for dev, path in disks.items()} == moved_md5
    later_status = migrations.get("later")["status"]
    assert later_status["phase"] == "Queued" and later_status.get("queuedReason"), later_status
    guest.moved(lab, operator, body, pod.metadata.name)


@dataclass
class _Guest:
    """A running guest of lab1 on its way to lab2, slowly enough to be caught Transferring (as in
    tests/faults: 4 MiB/s against the 1 MiB/s it dirties: about a minute for its 256 MiB of memory and
    its disk), with what tells whether it arrived whole: its heartbeat, libvirt sampled on both hosts,
    and its job's directories and process on the source."""

    name: str
    vm: VMInfo
    boot: str
    counter: int
    sampler: Sampler
    uid: str
    jobs: _JobDirectories

    def in_flight(self, migrations: Migrations, late: str) -> None:
        """The fault landed: the migration is Transferring and its job runs on the source."""
        phase = (migrations.get(self.name).get("status") or {}).get("phase")
        assert (phase, job_state(self.uid)) == ("Transferring", "running"), late

    def moved(self, lab: LabInfo, operator: PodOperator, body: dict[str, Any], pod: str) -> None:
        """It succeeded with one attempt, one Transferring and one job (one attempt directory and one
        process record ever on the source: a re-attached job, not a second one), the fault suite's
        invariants hold, the Pod `pod` says it ended it, no Pod restarted and no operator ran outside a
        Pod; last, the same guest beats on on the target."""
        pods = operator.pods
        status = body["status"]
        assert status["phase"] == "Succeeded", f"{status}\n{pods.tail()}"
        assert {c["type"]: c["reason"] for c in status["conditions"]}["Succeeded"] == "Migrated", status
        assert status["attempts"] == 1, status
        assert [t["phase"] for t in status["phaseTransitions"]].count("Transferring") == 1, "one job only"
        assert self.jobs.seen == {"1"}, f"job directories seen on the source: {sorted(self.jobs.seen)}"
        assert len(self.jobs.processes) == 1, f"job processes on the source: {sorted(self.jobs.processes)}"
        _sound(lab, self.vm, body, self.sampler)
        _ended_in_log(pods, pod, self.name, "Succeeded")
        assert not pods.died(), pods.tail()
        assert _operators_outside_pods(operator.server) == []
        # Last: a TCG guest that panics after its move is an expected failure (evidence.py), not the Pod's.
        assert beating_on("lab2", self.name, self.boot) > self.counter, "the same guest runs on, on the target"


def _migrate_slowly(lab: LabInfo, migrations: Migrations, name: str) -> _Guest:
    """A running guest `name` on lab1, and its slow live migration to lab2 created."""
    vm = Lab.create_vm("lab1", name, state=VMState.RUNNING, dirty_mib=1)
    boot, counter = first_beat("lab1", name)
    sampler = Sampler(lab, vm.uuid)
    spec = {"source": {"host": "lab1", "name": name}, "target": {"host": "lab2"}, "tunnel": False}
    uid = migrations.create(name, {**spec, "bandwidthMiBps": 4})["metadata"]["uid"]
    return _Guest(name, vm, boot, counter, sampler, uid, _JobDirectories(lab, uid))


def _working(operator: PodOperator, peering: str, names: set[str]) -> str:
    """The Pod kopf lets work: the highest priority among the live peers in the peering object, each
    named after its Pod (the chart's POD_ID), once every Pod of `names` announced itself there."""

    def highest() -> str | None:
        custom: Any = client.CustomObjectsApi(operator.cluster.api)
        body = custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", peering)
        peers = {k: v for k, v in (body.get("status") or {}).items() if v and v.get("lifetime")}
        if not names <= peers.keys():
            return None
        return max((p for p in peers if p in names), key=lambda p: int(peers[p]["priority"]))

    return until(f"every Pod of {sorted(names)} in peering {peering}", highest, timeout=120)


def _works(pods: OperatorPods, pod: str) -> bool:
    """kopf in this Pod works: it said last that it resumes, not that it pauses. A replica starts paused
    (the peering is mandatory) and says nothing while a peer of higher priority keeps it so."""
    log = pods.log(pod)
    return log.rfind("Resuming operations after the pause") > log.rfind("Pausing operations in favour of")


def _hosts(custom: Any, namespace: str) -> dict[str, Any]:
    found = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, HOSTS)["items"]
    return {h["metadata"]["name"]: h for h in found}


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
    """Every attempt directory of a migration's jobs seen on the source (lab1), and every record of the
    process a job runs as (its `pid` file: process group, boot id, start time), sampled in a thread
    until stopped: a second job would show as a second directory or record, however briefly it lived."""

    def __init__(self, lab: LabInfo, uid: str) -> None:
        self.uid = uid
        self.seen: set[str] = set()
        self.processes: set[str] = set()
        self._jobs = lab.host("lab1").path(f"{JOBS_DIR}/{uid}")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="job-directories", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            attempts = job_attempts(self.uid)
            self.seen.update(attempts)
            for attempt in attempts:
                with contextlib.suppress(OSError):  # not written yet, or gone with the job's clean-up
                    self.processes.add(f"{attempt}: {(self._jobs / attempt / 'pid').read_text().strip()}")
            self._stop.wait(0.5)

    def stop(self) -> set[str]:
        self._stop.set()
        self._thread.join(timeout=5)
        return self.seen


class _LastWords:
    """A Pod's log followed to its container's end (what `kubectl logs -f` prints), in a thread: what a
    Pod about to go said, read before its log goes with it."""

    def __init__(self, pods: OperatorPods, pod: str) -> None:
        self.text = ""
        self._pods, self._pod = pods, pod
        self._thread = threading.Thread(target=self._run, name=f"log-{pod}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            stream = self._pods.core.read_namespaced_pod_log(
                self._pod, self._pods.namespace, follow=True, _preload_content=False
            )
            for chunk in stream.stream():
                self.text += chunk.decode(errors="replace")
        except (client.ApiException, OSError) as exc:  # the Pod went before the stream began, or cut it
            self.text += f"\n(log stream ended: {exc})"

    def ended(self, timeout: float = 120) -> str:
        """Once the container ended (its log stream closed): all it said."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"Pod {self._pod} still runs after {timeout:.0f}s"
        return self.text


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
