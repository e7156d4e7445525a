"""kopf's finalizer on migrations: a dry run never gets one (nothing of it is on a host, and its PATCH
was one API request in five), and its deletion is immediate; a real migration has it, and its deletion
still goes through the operator's deletion pass (cancelled, then released). The hosts are at a loopback
port where nothing listens (tests/cluster/objects.py), so no traffic leaves 127.0.0.1."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch

from tests.cluster.objects import GROUP, MIGRATIONS, loopback_hosts, migration
from tests.fixtures.operator import OperatorProcess
from vemigrate.api.common import VERSION
from vemigrate_dev.controlplane import ControlPlaneInfo

FINALIZER = "vemigrate.io/finalizer"


class Seen:
    """Every state of one object the watch delivered, from its creation on."""

    def __init__(self, custom: Any, namespace: str, name: str) -> None:
        self.states: list[tuple[str, dict[str, Any]]] = []
        self._watch = watch.Watch()
        self._thread = threading.Thread(target=self._run, args=(custom, namespace, name), daemon=True)
        self._thread.start()
        time.sleep(0.5)  # the watch is open before the object is made

    def _run(self, custom: Any, namespace: str, name: str) -> None:
        stream = self._watch.stream(
            custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            MIGRATIONS,
            field_selector=f"metadata.name={name}",
            timeout_seconds=120,
        )
        for event in stream:
            self.states.append((event["type"], event["object"]))
            if event["type"] == "DELETED":
                return

    def until(self, what: str, done: Any, log: OperatorProcess, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for kind, body in list(self.states):
                if done(kind, body):
                    return body
            time.sleep(0.2)
        raise AssertionError(f"{what}: not seen in {timeout:.0f} s; seen {self.summary()}\n{log.tail()}")

    def summary(self) -> list[tuple[str, Any, Any, bool]]:
        return [
            (
                k,
                (b.get("status") or {}).get("phase"),
                b["metadata"].get("finalizers"),
                "deletionTimestamp" in b["metadata"],
            )
            for k, b in self.states
        ]

    def close(self) -> None:
        self._watch.stop()


def _phase(body: dict[str, Any]) -> str | None:
    return (body.get("status") or {}).get("phase")


@pytest.fixture
def operator(
    control_plane: ControlPlaneInfo, kube_admin: Any, namespace: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    """An operator of its own for the namespace, whose hosts never answer."""
    process = OperatorProcess(control_plane.kubeconfig, tmp_path / "operator.log", ["--namespace", namespace])
    process.start()
    try:
        loopback_hosts(kube_admin, namespace)
        yield process
    finally:
        process.stop()


def test_a_dry_run_never_gets_a_finalizer_and_goes_at_once(
    operator: OperatorProcess, kube_admin: Any, namespace: str
) -> None:
    custom = client.CustomObjectsApi(kube_admin)
    # Its source host's key Secret does not exist: the dry run is admitted, validates, and fails for it.
    seen = Seen(custom, namespace, "dry")
    body = migration("dry", source={"host": "no-key", "name": "web-01"}, target={"host": "node-b"}, dryRun=True)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, MIGRATIONS, body)
    final = seen.until("the dry run's final phase", lambda k, b: _phase(b) == "Failed", operator)
    assert final["status"]["failure"]["phase"] == "Validating", final["status"]
    time.sleep(3)  # and nothing comes to add one after it ended
    assert [s for s in seen.summary() if s[2]] == [], f"a finalizer was added: {seen.summary()}"
    # Its Failed series comes from the watch's events (handlers.migration_event), and goes with the object.
    series = {"namespace": namespace}  # the only Failed migration of its namespace
    assert operator.metric_reaches("vemigrate_migration_failed", 1, **series) == 1, operator.tail()
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, MIGRATIONS, "dry")
    seen.until("the dry run's deletion", lambda k, b: k == "DELETED", operator, timeout=10)
    deadline = time.monotonic() + 10
    while operator.metric("vemigrate_migration_failed", **series) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert operator.metric("vemigrate_migration_failed", **series) == 0, "the deleted object's series stays"
    seen.close()

    # Deleted while unfinished (the hosts never answer: it waits in Validating), it goes at once too,
    # and its daemon stops: the operator writes nothing more for it.
    seen = Seen(custom, namespace, "dry-waiting")
    body = migration("dry-waiting", source={"host": "node-a", "name": "web-01"}, target={"host": "node-b"}, dryRun=True)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, MIGRATIONS, body)
    seen.until("the waiting dry run in Validating", lambda k, b: _phase(b) == "Validating", operator)
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, MIGRATIONS, "dry-waiting")
    seen.until("the waiting dry run's deletion", lambda k, b: k == "DELETED", operator, timeout=10)
    assert [s for s in seen.summary() if s[2]] == [], f"a finalizer was added: {seen.summary()}"
    seen.close()
    time.sleep(6)  # past its poll: a daemon left running would retry its pass and log the failure
    assert "reconcile pass of dry-waiting failed" not in operator.tail(400), operator.tail()
    assert not operator.died()


def test_deleting_a_real_migration_still_goes_through_its_finalizer(
    operator: OperatorProcess, kube_admin: Any, namespace: str
) -> None:
    custom = client.CustomObjectsApi(kube_admin)
    seen = Seen(custom, namespace, "real")
    body = migration("real", source={"host": "node-a", "name": "web-01"}, target={"host": "node-b"})
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, MIGRATIONS, body)
    held = seen.until(
        "the finalizer, in Validating",
        lambda k, b: _phase(b) == "Validating" and FINALIZER in (b["metadata"].get("finalizers") or []),
        operator,
    )
    assert held["metadata"]["finalizers"] == [FINALIZER]
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, MIGRATIONS, "real")
    # The deletion pass ran while the finalizer held the object: Cancelled, then released.
    cancelled = seen.until(
        "the deletion pass's Cancelled while the finalizer held it",
        lambda k, b: (
            _phase(b) == "Cancelled"
            and "deletionTimestamp" in b["metadata"]
            and FINALIZER in (b["metadata"].get("finalizers") or [])
        ),
        operator,
    )
    assert cancelled["status"]["failure"]["reason"] == "Cancelled", cancelled["status"]
    seen.until("the deletion", lambda k, b: k == "DELETED", operator, timeout=30)
    seen.close()
