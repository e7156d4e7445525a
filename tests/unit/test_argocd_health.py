"""Argo CD health checks (deploy/argocd/) run in Lua 5.1 the way Argo CD runs them, against statuses
the operator really wrote in lab runs, one per phase, stored in tests/unit/fixtures/argocd/.

How the samples were captured: `VEMIGRATE_CAPTURE_ARGOCD=1 pytest tests/lab/test_chart_operator.py
tests/lab/test_argocd_health_live.py` (as root, on the lab): the operator runs under the Helm chart's
RBAC, a watch records every version of the objects, and the last version seen in each phase is stored,
trimmed to apiVersion, kind, name, namespace, generation, spec and status. The same lab tests put every
live status to these scripts as well; these tests keep them honest without a lab."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from tests.fixtures.argocd import ROOT, SAMPLES, health, script, stored
from vemigrate.api.migration import Phase

VEM, HVH = "VirtualEnvironmentMigration", "HypervisorHost"
EXPECTED = {
    (VEM, "NoStatus"): "Progressing",
    (VEM, "Pending"): "Progressing",
    (VEM, "Queued"): "Suspended",
    (VEM, "Validating"): "Progressing",
    (VEM, "Transferring"): "Progressing",
    (VEM, "Switchover"): "Progressing",
    (VEM, "Finalizing"): "Progressing",
    (VEM, "RollingBack"): "Progressing",
    (VEM, "Succeeded"): "Healthy",
    (VEM, "Failed"): "Degraded",
    (VEM, "Cancelled"): "Healthy",
    (HVH, "Reachable"): "Healthy",
    (HVH, "Unreachable"): "Degraded",
}
SAMPLE_LIST = list(stored())


CAPTURE_HOW = "capture it as tests/unit/fixtures/argocd/README.md says"


def real(kind: str, label: str) -> dict[str, Any]:
    for k, lab, body in SAMPLE_LIST:
        if (k, lab) == (kind, label):
            return copy.deepcopy(body)
    pytest.fail(f"no stored sample {kind}-{label}.json in {SAMPLES}: {CAPTURE_HOW}")


def test_every_phase_has_a_real_sample() -> None:
    labels = {label for kind, label, _ in SAMPLE_LIST if kind == VEM}
    # Pending lasts until the operator's first pass, which writes the next phase at once: the real
    # object before that pass has no status at all, and that is the sample for it.
    wanted = {p.value for p in Phase} - {"Pending"} | {"NoStatus"}
    missing = sorted(wanted - labels) + sorted(
        {"Reachable", "Unreachable"} - {lab for k, lab, _ in SAMPLE_LIST if k == HVH}
    )
    assert not missing, f"samples not captured: {missing}; {CAPTURE_HOW}"


@pytest.mark.parametrize(("kind", "label", "body"), SAMPLE_LIST, ids=[f"{k}-{lab}" for k, lab, _ in SAMPLE_LIST])
def test_real_samples(kind: str, label: str, body: dict[str, Any]) -> None:
    assert (body.get("status") or {}).get("phase", "NoStatus") == label or kind == HVH
    judged = health(kind, body)
    assert judged["status"] == EXPECTED[(kind, label)], judged
    assert judged["message"], "Argo CD shows the message beside the status"


def test_messages_say_why() -> None:
    assert health(VEM, real(VEM, "Succeeded"))["message"].startswith("Succeeded (Migrated)")
    failed = real(VEM, "Failed")
    assert health(VEM, failed)["message"].startswith(f"Failed ({failed['status']['failure']['reason']}): ")
    queued = real(VEM, "Queued")
    assert health(VEM, queued)["message"] == f"Queued: {queued['status']['queuedReason']}"
    for phase in ("Validating", "Transferring", "Switchover", "Finalizing", "RollingBack"):
        body = real(VEM, phase)
        message = health(VEM, body)["message"]
        assert message.startswith(phase), message
        percent = (body["status"].get("progress") or {}).get("percent")
        if percent is not None and body["status"].get("observedGeneration") == body["metadata"]["generation"]:
            assert f" {percent}%" in message, message
    assert "SecretForbidden" in health(HVH, real(HVH, "Unreachable"))["message"]


def test_cancelled_is_degraded_unless_the_spec_asked_for_it() -> None:
    body = real(VEM, "Cancelled")
    assert body["spec"]["action"] == "Cancel"
    del body["spec"]["action"]
    assert health(VEM, body)["status"] == "Degraded"


def test_a_spec_the_operator_has_not_seen_yet_is_progressing() -> None:
    body = real(VEM, "Validating")
    body["metadata"]["generation"] = body["status"]["observedGeneration"] + 1
    judged = health(VEM, body)
    assert judged["status"] == "Progressing" and "observe generation" in judged["message"]
    # A final phase is never left: no later generation makes it look unfinished.
    body = real(VEM, "Failed")
    body["metadata"]["generation"] = (body["status"].get("observedGeneration") or 1) + 1
    assert health(VEM, body)["status"] == "Degraded"


def test_a_host_that_cannot_be_observed_is_waited_for() -> None:
    body = real(VEM, "Transferring")
    for condition in body["status"]["conditions"]:
        if condition["type"] == "Progressing":
            condition.update(status="Unknown", reason="HostUnreachable", message="lab2 does not answer")
    judged = health(VEM, body)
    assert judged == {"status": "Progressing", "message": judged["message"]}
    assert judged["message"].endswith("; waiting: lab2 does not answer")


def test_unknown_phases_and_hosts_not_probed_yet() -> None:
    body = real(VEM, "Validating")
    body["status"]["phase"] = "Teleporting"
    assert health(VEM, body)["status"] == "Unknown"
    host = real(HVH, "Reachable")
    del host["status"]
    assert health(HVH, host) == {"status": "Progressing", "message": "waiting for the first probe"}
    host = real(HVH, "Reachable")
    host["metadata"]["generation"] = host["status"]["observedGeneration"] + 1
    assert health(HVH, host)["status"] == "Progressing"
    host = real(HVH, "Reachable")
    for condition in host["status"]["conditions"]:
        condition["status"] = "Unknown"
    assert health(HVH, host)["status"] == "Unknown"


def test_the_argocd_cm_snippets_are_the_scripts() -> None:
    configmap = yaml.safe_load((ROOT / "deploy" / "argocd" / "argocd-cm.yaml").read_text())
    docs = (ROOT / "docs" / "gitops.md").read_text()
    for kind in (VEM, HVH):
        text = script(kind).read_text()
        assert configmap["data"][f"resource.customizations.health.vemigrate.io_{kind}"] == text
        indented = "".join(f"    {line}" if line.strip() else line for line in text.splitlines(True))
        assert indented in docs, f"docs/gitops.md does not carry {script(kind).relative_to(ROOT)} as it is"


def test_the_example_applications_are_argo_cd_applications() -> None:
    apps = list(yaml.safe_load_all((ROOT / "deploy" / "argocd" / "application.yaml").read_text()))
    assert [a["kind"] for a in apps] == ["Application", "Application"]
    assert apps[0]["spec"]["source"]["path"] == "charts/ve-migrate"
    assert (ROOT / apps[0]["spec"]["source"]["path"] / "Chart.yaml").exists()
