"""Every manifest in examples/ is accepted by the real apiserver (`kubectl apply --dry-run=server`),
so the documentation never shows YAML that the CRDs refuse; Argo CD's kinds against the CRDs of the
release tests/fixtures/argocd_server.py runs."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from vemigrate_dev.controlplane import ControlPlaneInfo
from vemigrate_dev.controlplane_binaries import REPO_ROOT

EXAMPLES = sorted(
    path
    for path in (REPO_ROOT / "examples").rglob("*.y*ml")
    if "invalid" not in path.relative_to(REPO_ROOT / "examples").parts
)


@pytest.mark.parametrize("path", EXAMPLES, ids=[str(p.relative_to(REPO_ROOT)) for p in EXAMPLES])
def test_an_example_is_accepted_by_the_server(
    control_plane: ControlPlaneInfo, kube_admin: Any, path: Path, request: pytest.FixtureRequest
) -> None:
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert documents, f"{path} holds no manifest"
    if any(str(doc.get("apiVersion", "")).startswith("argoproj.io/") for doc in documents):
        # Argo CD's kinds: on the control plane where the tests' Argo CD installed its release's CRDs.
        argo = request.getfixturevalue("argocd_server")
        control_plane, kube_admin = argo.plane, argo.api
    core = client.CoreV1Api(kube_admin)
    # A dry run creates nothing, so namespaces the example uses must exist for real.
    for namespace in {doc.get("metadata", {}).get("namespace") for doc in documents} - {None}:
        try:
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
        except ApiException as exc:
            if exc.status != 409:
                raise
    result = subprocess.run(
        [
            str(control_plane.kubectl),
            f"--kubeconfig={control_plane.kubeconfig}",
            "apply",
            "--dry-run=server",
            "--validate=strict",
            "-f",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "(server dry run)" in result.stdout


def test_examples_exist() -> None:
    if not EXAMPLES:
        pytest.skip("examples/ has no manifests yet")
    kinds = {doc.get("kind") for path in EXAMPLES for doc in yaml.safe_load_all(path.read_text()) if doc}
    assert {"VirtualEnvironmentMigration", "HypervisorHost"} <= kinds
