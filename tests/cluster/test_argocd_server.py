"""The real Argo CD of the local environment (tests/fixtures/argocd_server.py), with no lab: it fetches
a Git repository over `git daemon`, syncs it into the real apiserver, and judges our kinds with the
health scripts installed in argocd-cm, in Argo CD's own Lua sandbox. A HypervisorHost whose Secret is
missing needs no SSH to be probed, so the operator's verdict and Argo CD's reading of it are both real.
The lab scenarios are in tests/lab/test_argocd_real.py."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from kubernetes import client

from tests.fixtures.argocd import health_tests, script
from tests.fixtures.argocd_server import ArgoCluster, GitOps
from tests.fixtures.operator import OperatorProcess
from vemigrate.api.common import GROUP, VERSION
from vemigrate_dev.argocd import NAMESPACE, health_customizations
from vemigrate_dev.argocd_binaries import ensure_argo_binaries

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ"


def _host(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "HypervisorHost",
        "metadata": {"name": name},
        "spec": {"address": "192.0.2.10", "credentialsSecretRef": {"name": "absent"}, "hostKey": HOST_KEY},
    }


def test_our_health_test_yaml_passes_in_argo_cds_own_lua(argocd_server: ArgoCluster, tmp_path: Path) -> None:
    """Each kind's health_test.yaml, exact status and message, run by the built Argo CD's util/lua VM as
    the controller runs a customization (no string library); a script that uses one fails there."""
    binaries = ensure_argo_binaries(log=lambda _: None)
    dirs = [script(kind).parent for kind in ("VirtualEnvironmentMigration", "HypervisorHost")]
    done = subprocess.run([binaries.health_test, *dirs], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    cases = sum(len(health_tests(kind)) for kind in ("VirtualEnvironmentMigration", "HypervisorHost"))
    assert done.stdout.count("\nok ") + done.stdout.startswith("ok ") == cases, done.stdout

    bad = tmp_path / "Bad"
    shutil.copytree(dirs[0], bad)
    (bad / "health.lua").write_text('return {status = "Healthy", message = ("x"):upper()}\n')
    done = subprocess.run([binaries.health_test, bad], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "FAIL" in done.stdout, done.stdout + done.stderr


def test_argo_cd_has_our_health_checks_installed(argocd_server: ArgoCluster) -> None:
    config = client.CoreV1Api(argocd_server.api).read_namespaced_config_map("argocd-cm", NAMESPACE)
    for key, text in health_customizations().items():
        assert config.data[key] == text, key


def test_a_commit_is_synced_and_a_host_judged_by_our_health_script(
    argocd_server: ArgoCluster, gitops: GitOps, argocd_namespace: str, tmp_path: Path
) -> None:
    operator = OperatorProcess(
        argocd_server.plane.kubeconfig,
        tmp_path / "operator.log",
        ["--host-probe-seconds", "2", "--namespace", argocd_namespace],
    )
    operator.start()
    try:
        revision = gitops.commit("a host whose Secret is missing", {"host.yaml": _host("no-secret")})
        started = time.monotonic()
        gitops.create_application("hosts")
        # The operator may judge the host before Argo CD's sync operation has ended: wait for both.
        seen = gitops.wait(
            "hosts",
            lambda s: (
                (s.revision, s.sync, s.health) == (revision, "Synced", "Degraded")
                and s.operation not in ("", "Running")
            ),
            120,
            f"Synced to {revision[:8]}, Degraded, its sync operation ended",
        )
        took = time.monotonic() - started
        health = seen.resource("HypervisorHost", "no-secret")["health"]
        assert health["status"] == "Degraded" and "SecretNotFound" in health["message"], health
        assert seen.operation == "Succeeded", seen

        # A second commit is picked up with no webhook and no refresh request (reconciliation: 5 s).
        revision = gitops.commit("a second host", {"second.yaml": _host("second")})
        seen = gitops.synced_at("hosts", revision, "Degraded", timeout=60)
        assert {r["name"] for r in seen.resources} == {"no-secret", "second"}, seen.resources
        print(f"first sync and health in {took:.1f} s")
    finally:
        operator.stop()
