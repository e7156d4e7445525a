"""Hypothesis-generated VirtualEnvironmentMigration specs, sent to the real kube-apiserver with the
operator running: each one is either refused by the CRD with a message naming the field, or stored
and settled by the operator: a final phase with a specific reason and message, or a wait whose
reason names what it waits for. The operator never crashes, never logs an unhandled exception, and
stops writing once an object is settled (no loop). VEMIGRATE_HOSTILE_SPECS sets the number of specs.

The hosts are real objects: two with a real key Secret at a loopback port where nothing listens (no
traffic leaves 127.0.0.1), one whose Secret does not exist, and one that is never created."""

from __future__ import annotations

import os
import string
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.cluster.objects import GROUP, MIGRATIONS, VERSION, loopback_hosts, rejection
from tests.fixtures.operator import OperatorProcess
from vemigrate.api.checks import CheckName
from vemigrate_dev.controlplane import ControlPlaneInfo

EXAMPLES = int(os.environ.get("VEMIGRATE_HOSTILE_SPECS", "40"))

# Values chosen to break things: shell metacharacters, traversal, control bytes, wrong types.
_HOSTILE = [
    "$(reboot)",
    "a;rm -rf /",
    "x`id`",
    "../../etc/passwd",
    "' OR '1'='1",
    "name with space",
    "-rf",
    "--help",
    "web\n01",
    "\x00",
    "",
    "é",
    "a" * 300,
]
_text = st.text(st.characters(codec="utf-8"), max_size=40) | st.sampled_from(_HOSTILE)
_anything = st.none() | st.booleans() | st.integers(-(2**63), 2**63) | _text | st.just({"nested": [1]})
_gib = st.integers(1, 10**5)
_seconds = st.sampled_from([10, 12]) | st.integers(10, 10**5)
# Storable but awkward: names the CRD lets through still reach lookups, checks and Events.
_ve_name = st.sampled_from(["web-01", "db 02", "ct@101", "a:b+c", "_x", "9" * 128]) | st.from_regex(
    r"\A[A-Za-z0-9_][A-Za-z0-9 ._:+@-]{0,30}\Z"
)
_path = st.sampled_from(["/vz/private", "/vz/$(id)", "/ok;ls", "/a b", "/", "/x/'y'", "/vz/..."])


@st.composite
def _plausible(draw: st.DrawFn) -> dict[str, Any]:
    source, target = draw(st.permutations(["node-a", "node-b", "no-key", "ghost"]))[:2]
    spec: dict[str, Any] = {"source": {"host": source, "name": draw(_ve_name)}, "target": {"host": target}}
    optional: dict[str, st.SearchStrategy[Any]] = {
        "mode": st.sampled_from(["Auto", "Live", "Offline"]),
        "clone": st.booleans(),
        "tunnel": st.booleans(),
        "compression": st.booleans(),
        "bandwidthMiBps": st.integers(1, 10**5),
        "maxDowntimeMs": st.integers(1, 10**5),
        "autoConverge": st.booleans(),
        "postCopy": st.booleans(),
        "timeouts": st.fixed_dictionaries({}, optional={"progressSeconds": _seconds, "completionPerGiBSeconds": _gib}),
        "checks": st.fixed_dictionaries({"skip": st.lists(st.sampled_from([c.value for c in CheckName]), max_size=5)}),
        "dryRun": st.booleans(),
        "action": st.sampled_from(["Cancel", "ForceComplete"]),
        # Only past instants: a future one would rightly keep the object waiting, not final.
        "notBefore": st.sampled_from(["2020-01-01T00:00:00Z", "2026-01-01T12:00:00+02:00"]),
        "retry": st.fixed_dictionaries({"maxAttempts": st.just(1), "backoffSeconds": _seconds}),
    }
    for key, values in optional.items():
        if draw(st.booleans()):
            spec[key] = draw(values)
    if draw(st.booleans()):
        spec["target"]["path"] = draw(_path)
    if spec.get("clone") and draw(st.booleans()):
        spec["changeSid"] = True
    return spec


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    """A plausible spec, half the time with one field (or a nested one) replaced by something hostile."""
    spec = draw(_plausible())
    if draw(st.booleans()):
        fields = ["source", "target", "mode", "clone", "changeSid", "bandwidthMiBps", "timeouts", "checks", "action"]
        where = draw(st.sampled_from([*fields, "source.host", "source.name", "target.host", "target.path"]))
        parent, _, leaf = where.rpartition(".")
        holder = spec[parent] if parent else spec
        holder[leaf] = draw(_anything)
    return spec


_FINAL = ("Succeeded", "Failed", "Cancelled")


def _settled(spec: dict[str, Any], body: dict[str, Any]) -> bool:
    """Final with a specific reason, or waiting for something the status names: a HostUnreachable
    host (DESIGN invariant 3: wait and observe, until spec.timeouts.progressSeconds) or a
    HypervisorHost that does not exist yet (Git may apply it later), or a host's concurrency limit."""
    status = body.get("status") or {}
    said = {c["type"]: c for c in status.get("conditions") or []}
    hosts = {spec["source"]["host"], spec["target"]["host"]}
    if status.get("phase") == "Queued":  # a host not created yet, or a host's concurrency limit
        return any(f"{h!r}" in status.get("queuedReason", "") for h in hosts)
    if status.get("phase") == "Validating":
        waiting = said.get("Progressing", {})
        return waiting.get("reason") == "HostUnreachable" and any(f"Host {h!r}" in waiting["message"] for h in hosts)
    if status.get("phase") not in ("Failed", "Cancelled"):
        return False
    if status["phase"] == "Failed":
        reason = status["failure"]["reason"]
        assert reason[:1].isupper() and set(reason) <= set(string.ascii_letters), status
        assert status["failure"]["message"], status
    assert said["Succeeded"]["status"] == "False" and said["Succeeded"]["message"], status
    return True


def test_generated_specs_are_refused_with_a_message_or_fail_with_a_reason(
    control_plane: ControlPlaneInfo, kube_admin: Any, namespace: str, tmp_path: Path
) -> None:
    operator = OperatorProcess(control_plane.kubeconfig, tmp_path / "operator.log", ["--namespace", namespace])
    operator.start()
    custom = client.CustomObjectsApi(kube_admin)
    loopback_hosts(kube_admin, namespace)
    stored: dict[str, dict[str, Any]] = {}
    refused: list[str] = []

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(spec=specs())
    def send(spec: dict[str, Any]) -> None:
        name = f"h{len(stored) + len(refused)}"
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VirtualEnvironmentMigration", "metadata": {"name": name}}
        try:
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, MIGRATIONS, {**body, "spec": spec})
        except ApiException as exc:
            status, message = rejection(exc)
            assert status == 422, (status, message, spec)
            assert "spec" in message, (message, spec)  # names the field it refuses
            refused.append(message)
            return
        stored[name] = spec

    try:
        send()
        assert stored, "no generated spec was valid: the strategy tests only the CRD"
        assert refused, "no generated spec was refused: the strategy tests only the operator"
        deadline = time.monotonic() + 120
        while True:
            assert operator.proc is not None and operator.proc.poll() is None, f"the operator died:\n{operator.tail()}"
            bodies = {n: custom.get_namespaced_custom_object(GROUP, VERSION, namespace, MIGRATIONS, n) for n in stored}
            unsettled = [(stored[n], b.get("status")) for n, b in bodies.items() if not _settled(stored[n], b)]
            if not unsettled:
                break
            assert time.monotonic() < deadline, f"no final phase or named wait: {unsettled}\n{operator.tail()}"
            time.sleep(0.5)
        assert any(b["status"]["phase"] == "Failed" for b in bodies.values()), "the strategy never reached a failure"
        # Settled means quiet: a final object is never written again, a waiting one only when its wait
        # ends (for a final phase, or admitted when a slot frees). A loop would keep bumping them.
        time.sleep(5)
        for name, body in bodies.items():
            now = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, MIGRATIONS, name)
            if now["metadata"]["resourceVersion"] == body["metadata"]["resourceVersion"]:
                continue
            before, after = body["status"], now["status"]
            moved_on = before["phase"] not in _FINAL and after["phase"] != before["phase"]
            assert moved_on and _settled(stored[name], now), f"{name}: {before} then {after}"
        log = (tmp_path / "operator.log").read_text()
        assert "Traceback" not in log, operator.tail(200)
        assert operator.proc is not None and operator.proc.poll() is None
    finally:
        operator.stop()
