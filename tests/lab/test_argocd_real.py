"""GitOps with a real Argo CD (tests/fixtures/argocd_server.py) on the lab, with the operator running:
each scenario is driven only by commits to a Git repository that Argo CD fetches over `git daemon`,
and what is asserted is Argo CD's own view, read from the Application (`status.sync`,
`status.health`, and each resource's health in `status.resources`), next to what happened to the VEs.
The hosts' Secrets stay out of Git (docs/gitops.md) and are applied beside it."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.fixtures.argocd_server import GitOps, Seen
from tests.fixtures.operator import Migrations, OperatorProcess
from tests.lab.evidence import beating_on, domain, first_beat
from vemigrate.api.common import GROUP, VERSION
from vemigrate_dev.lab import Lab, LabInfo, VMState
from vemigrate_dev.lab import kube as lab_kube

VEM = "VirtualEnvironmentMigration"
APP = "fleet"
WAVE = "argocd.argoproj.io/sync-wave"
Cleanup = Callable[[str], str]


def _hosts(lab: LabInfo, gitops: GitOps, wave: str | None = None) -> list[dict[str, Any]]:
    """Apply the lab's Secrets (kept out of Git) and return lab1's and lab2's HypervisorHosts for Git,
    written as a user would: no namespace (the Application's destination gives it)."""
    core = client.CoreV1Api(gitops.api)
    namespace = gitops.namespace
    hosts = []
    for obj in lab_kube.objects(lab, namespace):
        if obj["kind"] == "Secret":
            core.create_namespaced_secret(namespace, obj)
        elif obj["metadata"]["name"] in ("lab1", "lab2"):
            manifest = copy.deepcopy(obj)
            manifest["metadata"].pop("namespace", None)
            manifest.pop("status", None)
            if wave is not None:
                manifest["metadata"]["annotations"] = {WAVE: wave}
            hosts.append(manifest)
    assert len(hosts) == 2, hosts
    return hosts


def _migration(name: str, wave: str | None = None, **spec: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if wave is not None:
        metadata["annotations"] = {WAVE: wave}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": VEM,
        "metadata": metadata,
        "spec": {"source": {"host": "lab1", "name": name}, "target": {"host": "lab2"}, "tunnel": False, **spec},
    }


def _succeeded_reason(status: dict[str, Any]) -> str:
    return str({c["type"]: c.get("reason") for c in status.get("conditions") or []}.get("Succeeded"))


def _stays_synced(gitops: GitOps, name: str, revision: str, seconds: float = 20, wait: float = 60) -> list[Seen]:
    """Look for `seconds`, and on until Argo CD has compared again at least once (every 5 s when idle, later
    on a busy machine: CI saw one comparison in 10 s), at most `wait` seconds more; Synced at every look."""
    start = time.monotonic()
    looks: list[Seen] = []
    while True:
        looks.append(gitops.look(name))
        elapsed = time.monotonic() - start
        compared = len({s.reconciled_at for s in looks}) >= 2
        if (elapsed >= seconds and compared) or elapsed >= seconds + wait:
            break
        time.sleep(1)
    assert all(s.sync == "Synced" and s.revision == revision for s in looks), [(s.sync, s.revision) for s in looks]
    assert compared, f"Argo CD did not compare again in {elapsed:.0f} s"
    return looks


def _synced_in(migrations: Migrations, name: str, timeout: float = 120) -> None:
    """Wait until Argo CD has created `name` (reading it before would be a 404)."""
    deadline = time.monotonic() + timeout
    while _missing(migrations, name):
        assert time.monotonic() < deadline, f"Argo CD did not create {name} in {timeout:g} s"
        time.sleep(0.5)


def _missing(migrations: Migrations, name: str) -> bool:
    try:
        migrations.get(name)
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


@pytest.fixture
def vems(gitops: GitOps, argocd_operator: OperatorProcess) -> Migrations:
    """Read-only here: every change comes from Git through Argo CD."""
    return Migrations(client.CustomObjectsApi(gitops.api), gitops.namespace, argocd_operator)


def test_synced_and_healthy_once_succeeded_then_prune_and_revert_move_nothing(
    lab: LabInfo, gitops: GitOps, vems: Migrations, vm_cleanup: Cleanup
) -> None:
    name = vm_cleanup("argo-a")
    Lab.create_vm("lab1", name, state=VMState.RUNNING)
    boot, _ = first_beat("lab1", name)
    hosts = _hosts(lab, gitops)
    first = gitops.commit("two hosts and a migration", {"hosts.yaml": hosts, f"{name}.yaml": _migration(name)})
    gitops.create_application(APP)

    seen = gitops.synced_at(APP, first, "Healthy", timeout=300)
    vem = vems.get(name)
    assert vem["status"]["phase"] == "Succeeded", vem["status"]
    health = seen.resource(VEM, name)["health"]
    assert health["status"] == "Healthy" and health["message"].startswith("Succeeded (Migrated)"), health
    for host in ("lab1", "lab2"):
        assert seen.resource("HypervisorHost", host)["health"]["status"] == "Healthy", seen.resources
    history = gitops.history[APP]
    healthy_at = next(i for i, s in enumerate(history) if s.health == "Healthy")
    assert "Progressing" in {s.health for s in history[:healthy_at]}, "Healthy only once the migration ended"
    # What the API server (defaults, generation, managedFields) and the operator (its finalizer, its
    # annotations, status) added stays out of Argo CD's comparison, reconciliation after reconciliation.
    assert "vemigrate.io/finalizer" in vem["metadata"].get("finalizers", []), vem["metadata"]
    assert vem["spec"].get("mode") == "Auto" and vem["spec"].get("compression") is True, "server-side defaults"
    _stays_synced(gitops, APP, first)
    synced_from = next(i for i, s in enumerate(history) if s.operation == "Succeeded" and s.sync == "Synced")
    assert all(s.sync == "Synced" for s in history[synced_from:]), [(s.sync, s.health) for s in history]
    assert domain(lab, "lab1", name) is None
    uuid = domain(lab, "lab2", name).UUIDString()

    # Prune: the commit removes the finished migration; the object goes, no VE is touched.
    pruned = gitops.commit(f"{name} is done: remove its migration", {f"{name}.yaml": None})
    seen = gitops.synced_at(APP, pruned, "Healthy", timeout=120)
    assert [r["kind"] for r in seen.resources] == ["HypervisorHost", "HypervisorHost"], seen.resources
    vems.gone(name, timeout=60)
    assert domain(lab, "lab2", name).UUIDString() == uuid and domain(lab, "lab1", name) is None
    assert beating_on("lab2", name, boot) > 0, "the same guest runs on, untouched"

    # A revert brings the manifest back: re-created, Succeeded with AlreadyOnTarget, nothing moves.
    reverted = gitops.repo.revert(f"Revert: {name}'s migration back in Git")
    seen = gitops.synced_at(APP, reverted, "Healthy", timeout=180)
    status = vems.wait_phase(name, "Succeeded", "Failed", timeout=60)["status"]
    assert _succeeded_reason(status) == "AlreadyOnTarget", status
    assert "Transferring" not in [t["phase"] for t in status["phaseTransitions"]], status["phaseTransitions"]
    health = seen.resource(VEM, name)["health"]
    assert health["status"] == "Healthy" and "AlreadyOnTarget" in health["message"], health
    assert domain(lab, "lab2", name).UUIDString() == uuid and domain(lab, "lab1", name) is None
    assert beating_on("lab2", name, boot) > 0, "never moved again"


def test_preflight_failure_is_degraded_with_the_reason(
    lab: LabInfo, gitops: GitOps, vems: Migrations, vm_cleanup: Cleanup
) -> None:
    name = vm_cleanup("argo-snap")
    Lab.create_vm("lab1", name, state=VMState.STOPPED)
    Lab.snapshot("lab1", name, "before")  # a VM with snapshots cannot migrate: a pre-flight check
    hosts = _hosts(lab, gitops)
    revision = gitops.commit("a migration that cannot pass", {"hosts.yaml": hosts, f"{name}.yaml": _migration(name)})
    gitops.create_application(APP)

    seen = gitops.synced_at(APP, revision, "Degraded", timeout=180)
    status = vems.get(name)["status"]
    assert status["phase"] == "Failed" and status["failure"]["reason"] == "PreflightFailed", status
    health = seen.resource(VEM, name)["health"]
    assert health["status"] == "Degraded", health
    assert health["message"].startswith("Failed (PreflightFailed)"), health
    assert status["failure"]["message"] in health["message"], (health, status["failure"])
    assert domain(lab, "lab2", name) is None and domain(lab, "lab1", name) is not None
    _stays_synced(gitops, APP, revision, seconds=10)


def test_sync_waves_move_b_only_after_a_is_healthy(
    lab: LabInfo, gitops: GitOps, vems: Migrations, vm_cleanup: Cleanup
) -> None:
    a, b = vm_cleanup("argo-wave-a"), vm_cleanup("argo-wave-b")
    # Stopped guests: offline moves are quick, and the order is what this is about.
    Lab.create_vm("lab1", a, state=VMState.STOPPED)
    Lab.create_vm("lab1", b, state=VMState.STOPPED)
    hosts = _hosts(lab, gitops, wave="-1")
    files = {"hosts.yaml": hosts, f"{a}.yaml": _migration(a, wave="0"), f"{b}.yaml": _migration(b, wave="1")}
    revision = gitops.commit("move A, then B", files)
    gitops.create_application(APP)

    # While A is not Succeeded, B must not exist: Argo CD holds wave 1 until wave 0 is Healthy.
    deadline = time.monotonic() + 420
    b_created_while: set[str] = set()
    while time.monotonic() < deadline:
        phase = "" if _missing(vems, a) else str((vems.get(a).get("status") or {}).get("phase", ""))
        if not _missing(vems, b):
            b_created_while.add(phase)
            break
        time.sleep(0.5)
    assert b_created_while == {"Succeeded"}, f"B was created while A was {b_created_while or 'not yet done'}"
    seen = gitops.synced_at(APP, revision, "Healthy", timeout=300)
    first, second = vems.get(a), vems.get(b)
    assert second["status"]["phase"] == "Succeeded", second["status"]
    created_b = datetime.fromisoformat(second["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
    done_a = datetime.fromisoformat(first["status"]["completionTime"].replace("Z", "+00:00"))
    assert created_b >= done_a.replace(microsecond=0), (created_b, done_a)  # creationTimestamp has whole seconds
    waves = {r["name"]: r["health"]["status"] for r in seen.resources if r["kind"] == VEM}
    assert waves == {a: "Healthy", b: "Healthy"}, seen.resources
    assert domain(lab, "lab1", a) is None and domain(lab, "lab1", b) is None


def test_cancel_committed_mid_transfer(lab: LabInfo, gitops: GitOps, vems: Migrations, vm_cleanup: Cleanup) -> None:
    name = vm_cleanup("argo-cancel")
    Lab.create_vm("lab1", name, state=VMState.RUNNING)
    boot, _ = first_beat("lab1", name)
    hosts = _hosts(lab, gitops)
    # 1 MiB/s while the guest dirties 4 MiB/s never converges on its own: it is mid-transfer until cancelled.
    manifest = _migration(name, bandwidthMiBps=1)
    gitops.commit("a slow migration", {"hosts.yaml": hosts, f"{name}.yaml": manifest})
    gitops.create_application(APP)
    _synced_in(vems, name)
    vems.copying(name, timeout=180)
    # Argo CD's view follows the object through its own watch and cache: a moment behind the API.
    moving = gitops.wait(
        APP,
        lambda seen: str((seen.resource(VEM, name).get("health") or {}).get("message")).startswith("Transferring"),
        timeout=60,
        what=f"{name} Transferring as Argo CD sees it",
    )
    assert moving.health == "Progressing", moving

    manifest["spec"]["action"] = "Cancel"
    revision = gitops.commit(f"cancel {name}", {f"{name}.yaml": manifest})
    seen = gitops.synced_at(APP, revision, "Healthy", timeout=180)
    status = vems.get(name)["status"]
    assert status["phase"] == "Cancelled", status
    health = seen.resource(VEM, name)["health"]
    # docs/gitops.md: a cancellation declared in Git is the declared state reached.
    assert health == {"status": "Healthy", "message": "Cancelled as spec.action asks; the VE stays on its source"}, (
        health
    )
    assert domain(lab, "lab2", name) is None, "nothing left on the target"
    assert beating_on("lab1", name, boot) > 0, "the same guest runs on its source"
    _stays_synced(gitops, APP, revision, seconds=10)
