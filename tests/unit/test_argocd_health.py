"""Argo CD health checks (deploy/argocd/) run in Lua 5.1 in Argo CD's sandbox, against statuses the
operator really wrote in lab runs, in Argo CD's own layout: each <Kind>/health_test.yaml names the
testdata/<label>.yaml objects and the exact health Argo CD must show for each.

How the testdata were captured: `VEMIGRATE_CAPTURE_ARGOCD=1 pytest tests/lab/test_chart_operator.py
tests/lab/test_argocd_health_live.py` (as root, on the lab): the operator runs under the Helm chart's
RBAC, a watch records every version of the objects, and the last version seen in each state is stored,
trimmed to apiVersion, kind, name, namespace, generation, spec and status. Re-capture after a change to
the status the operator writes. The same lab tests put every live status to these scripts as well;
these tests keep them honest without a lab."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from tests.fixtures.argocd import ROOT, health, health_tests, run_health, samples_dir, script, stored
from vemigrate.api.migration import Phase, QueueCause

VEM, HVH = "VirtualEnvironmentMigration", "HypervisorHost"
SAMPLE_LIST = list(stored())
CASES = [(kind, case) for kind in (VEM, HVH) for case in health_tests(kind)]
CAPTURE_HOW = "capture it as tests/unit/test_argocd_health.py says"


def real(kind: str, label: str) -> dict[str, Any]:
    for k, lab, body in SAMPLE_LIST:
        if (k, lab) == (kind, label):
            return copy.deepcopy(body)
    pytest.fail(f"no testdata/{label}.yaml beside {script(kind).relative_to(ROOT)}: {CAPTURE_HOW}")


@pytest.mark.parametrize(("kind", "case"), CASES, ids=[f"{k}-{c['inputPath']}" for k, c in CASES])
def test_health_test_yaml(kind: str, case: dict[str, Any]) -> None:
    """Argo CD's own test format: the exact status and message for each input."""
    body = yaml.safe_load((script(kind).parent / case["inputPath"]).read_text())
    assert health(kind, body) == case["healthStatus"]


def test_every_testdata_is_tested_and_every_state_has_one() -> None:
    for kind in (VEM, HVH):
        named = {case["inputPath"] for case in health_tests(kind)}
        present = {f"testdata/{p.name}" for p in samples_dir(kind).glob("*.yaml")}
        assert named == present, f"{kind}: health_test.yaml and testdata/ differ: {sorted(named ^ present)}"
    phases = {(body.get("status") or {}).get("phase", "NoStatus") for k, _, body in SAMPLE_LIST if k == VEM}
    # Pending lasts until the operator's first pass, which writes the next phase at once: the real
    # object before that pass has no status at all, and that is the sample for it.
    missing = sorted(({p.value for p in Phase} - {"Pending"} | {"NoStatus"}) - phases)
    causes = {
        c["reason"]
        for k, _, body in SAMPLE_LIST
        if k == VEM and body.get("status", {}).get("phase") == "Queued"
        for c in body["status"]["conditions"]
        if c["type"] == "Progressing"
    }
    # A concurrency limit is judged like a missing host (Progressing, "Queued: " and why).
    missing += sorted({c.value for c in QueueCause} - {QueueCause.CONCURRENCY_LIMIT.value} - causes)
    labels = {label for k, label, _ in SAMPLE_LIST if k == HVH}
    missing += sorted({"Reachable", "Unreachable"} - labels)
    assert not missing, f"no real sample of {missing}; {CAPTURE_HOW}"


def test_the_sandbox_is_argo_cds() -> None:
    """The harness refuses what Argo CD's VM refuses, so a script passing here runs there."""
    body = real(VEM, "Succeeded")
    for call in ('string.format("%d", 1)', '("x"):upper()', "math.floor(1.5)", 'io.open("/etc/hostname")'):
        with pytest.raises(Exception, match=r"nil|index a string value"):
            run_health(f"local _ = {call}\nreturn {{status = 'Healthy', message = ''}}", body)
    assert run_health(
        "return {status = 'Healthy', message = tostring(os.time() > 0) .. table.concat({'a'})}", body
    ) == {
        "status": "Healthy",
        "message": "truea",
    }


def test_messages_say_why() -> None:
    assert health(VEM, real(VEM, "Succeeded"))["message"].startswith("Succeeded (Migrated)")
    failed = real(VEM, "Failed")
    assert health(VEM, failed)["message"].startswith(f"Failed ({failed['status']['failure']['reason']}): ")
    window = real(VEM, "Queued-window")
    assert health(VEM, window) == {"status": "Suspended", "message": f"Queued: {window['status']['queuedReason']}"}
    retry = real(VEM, "Queued-retry")
    failure = retry["status"]["failure"]
    assert health(VEM, retry)["message"].startswith(f"Queued to retry after {failure['reason']}: {failure['message']}")
    for phase in ("Validating", "Transferring", "Switchover", "Finalizing", "RollingBack"):
        body = real(VEM, phase)
        message = health(VEM, body)["message"]
        assert message.startswith(phase), message
        if phase == "RollingBack":
            assert "%" not in message, "a rollback's message carries no copy progress"
            continue
        percent = (body["status"].get("progress") or {}).get("percent")
        if percent is not None and body["status"].get("observedGeneration") == body["metadata"]["generation"]:
            assert f" {percent}%" in message, message
    assert "SecretForbidden" in health(HVH, real(HVH, "Unreachable"))["message"]


def test_a_queue_that_ends_by_itself_is_progressing_a_window_suspended() -> None:
    body = real(VEM, "Queued-host")
    for cause in (QueueCause.CONCURRENCY_LIMIT, QueueCause.WAITING_FOR_HOST):
        for condition in body["status"]["conditions"]:
            if condition["type"] == "Progressing":
                condition["reason"] = cause.value
        assert health(VEM, body)["status"] == "Progressing"
    for condition in body["status"]["conditions"]:
        if condition["type"] == "Progressing":
            condition["reason"] = QueueCause.MAINTENANCE_WINDOW.value
    assert health(VEM, body)["status"] == "Suspended"


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
        assert configmap["data"][f"resource.customizations.health.vemigrate.io_{kind}"] == text, (
            "run: python tools/argocd_scripts.py"
        )
        indented = "".join(f"    {line}" if line.strip() else line for line in text.splitlines(True))
        assert indented in docs, (
            f"docs/gitops.md does not carry {script(kind).relative_to(ROOT)}: run python tools/argocd_scripts.py"
        )


def test_the_example_applications_are_argo_cd_applications() -> None:
    apps = list(yaml.safe_load_all((ROOT / "deploy" / "argocd" / "application.yaml").read_text()))
    assert [a["kind"] for a in apps] == ["Application", "Application"]
    assert apps[0]["spec"]["source"]["path"] == "charts/ve-migrate"
    assert (ROOT / apps[0]["spec"]["source"]["path"] / "Chart.yaml").exists()
