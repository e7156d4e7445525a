"""The alert rules (charts/ve-migrate/files/vemigrate.rules.yaml): valid for Prometheus (`promtool
check rules`), behaving as their unit tests in tests/alerts/ say (`promtool test rules`), every alert
tested both firing and not firing, built only on metrics the operator exports, and documented: a
runbook per alert and every metric in docs/metrics.md."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric

from tests.fixtures.prometheus import RULES, prometheus_binary
from vemigrate import metrics

REPO = Path(__file__).resolve().parents[2]
ALERT_TESTS = sorted((REPO / "tests" / "alerts").glob("*.test.yaml"))
RUNBOOKS = REPO / "docs" / "runbooks"
METRICS_DOC = REPO / "docs" / "metrics.md"


def _alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


ALERTS = _alerts()
NAMES = [a["alert"] for a in ALERTS]


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([prometheus_binary("promtool"), *args], capture_output=True, text=True, timeout=120)


def test_promtool_checks_the_rules() -> None:
    out = _promtool("check", "rules", str(RULES))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in out.stdout


def test_promtool_unit_tests_pass() -> None:
    assert ALERT_TESTS, "no tests/alerts/*.test.yaml"
    out = _promtool("test", "rules", *map(str, ALERT_TESTS))
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in ALERT_TESTS:
        doc = yaml.safe_load(path.read_text())
        assert [(path.parent / f).resolve() for f in doc["rule_files"]] == [RULES.resolve()], path
        for case in doc["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert sorted(firing) == sorted(NAMES), "each alert has a test where it fires"
    assert sorted(quiet) == sorted(NAMES), "each alert has a test where it does not"


# The sections of prometheus-operator's and kube-prometheus's runbooks, in their order: what it means,
# what it does to users, how to find the cause, what to do.
RUNBOOK_SECTIONS = ["Meaning", "Impact", "Diagnosis", "Mitigation"]


def _sections(text: str) -> list[str]:
    return [line.removeprefix("## ").strip() for line in text.splitlines() if line.startswith("## ")]


@pytest.mark.parametrize("alert", ALERTS, ids=NAMES)
def test_alert_has_severity_summary_description_and_a_runbook(alert: dict[str, Any]) -> None:
    name = alert["alert"]
    assert re.fullmatch(r"Vemigrate[A-Z][A-Za-z]+", name)
    assert alert["labels"]["severity"] in {"warning", "critical"}
    annotations = alert["annotations"]
    assert annotations["summary"] and annotations["description"]
    assert annotations["runbook_url"] == f"docs/runbooks/{name}.md"
    runbook = (REPO / annotations["runbook_url"]).read_text()
    assert runbook.startswith(f"# {name}\n")
    assert _sections(runbook) == RUNBOOK_SECTIONS, f"{name}'s runbook"
    assert "kubectl" in runbook


def _families() -> list[Metric]:
    """The operator's own metrics (the standard process_* and python_info ones are documented as a group)."""
    return [f for f in metrics.REGISTRY.collect() if f.name.startswith("vemigrate_")]


def test_the_standard_process_metrics_are_exported_and_documented() -> None:
    names = {f.name for f in metrics.REGISTRY.collect() if not f.name.startswith("vemigrate_")}
    standard = {"process_resident_memory_bytes", "process_cpu_seconds", "process_start_time_seconds", "python_info"}
    assert standard <= names
    assert "| `process_*`, `python_info` |" in METRICS_DOC.read_text()


def _sample_names(family: Metric) -> set[str]:
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
    return {family.name + s for s in suffixes[family.type]}


def test_rules_use_only_metrics_the_operator_exports() -> None:
    exported = set().union(*(_sample_names(f) for f in _families()))
    for alert in ALERTS:
        used = set(re.findall(r"\bvemigrate_[a-z_]+", alert["expr"]))
        assert used, alert["alert"]
        assert used <= exported, f"{alert['alert']} uses {sorted(used - exported)}"


def test_metrics_doc_lists_every_metric_and_alert() -> None:
    doc = METRICS_DOC.read_text()
    wrappers = [m for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)]
    assert len(wrappers) == len(_families())
    for family in _families():
        name = min(_sample_names(family), key=len) if family.type != "histogram" else family.name
        row = next((line for line in doc.splitlines() if line.startswith(f"| `{name}` |")), None)
        assert row is not None, f"docs/metrics.md has no row for {name}"
        wrapper = next(w for w in wrappers if w._name == family.name)  # label names: no public accessor
        for label in wrapper._labelnames:
            assert f"`{label}`" in row, f"docs/metrics.md does not name label {label} of {name}"
    for name in NAMES:
        assert f"[{name}](runbooks/{name}.md)" in doc, f"docs/metrics.md does not link {name}"
    alerts = sorted(p.stem for p in RUNBOOKS.glob("Vemigrate*.md"))
    assert alerts == sorted(NAMES), "one runbook per alert, no more"


def test_every_other_runbook_is_for_a_failure_reason_the_api_lists() -> None:
    api = (REPO / "docs" / "api.md").read_text()
    for runbook in RUNBOOKS.glob("*.md"):
        if runbook.stem.startswith("Vemigrate"):
            continue
        text = runbook.read_text()
        assert text.startswith(f"# {runbook.stem}\n")
        assert _sections(text) == RUNBOOK_SECTIONS, f"{runbook.stem}'s runbook"
        assert f"`{runbook.stem}`" in api and f"(runbooks/{runbook.name})" in api, f"docs/api.md lacks {runbook.stem}"
