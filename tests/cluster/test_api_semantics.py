"""Server behaviour the operator relies on beyond validation: watches that start with the current
state and mark its end (needs etcd >= 3.5.13 for RequestWatchProgress), and finalizers."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from typing import Any

from tests.cluster.objects import GROUP, MIGRATIONS, VERSION, migration
from vemigrate_dev.controlplane import ControlPlaneInfo


def _watch(info: ControlPlaneInfo, path: str, seconds: int) -> Iterator[dict[str, Any]]:
    host, port = info.server.removeprefix("https://").rsplit(":", 1)
    connection = http.client.HTTPSConnection(host, int(port), context=info.ssl_context(), timeout=seconds + 5)
    try:
        connection.request("GET", f"{path}&timeoutSeconds={seconds}")
        response = connection.getresponse()
        assert response.status == 200, response.read()
        for line in response:
            yield json.loads(line)
    finally:
        connection.close()


def test_a_watch_with_initial_events_lists_then_bookmarks_then_streams(
    control_plane: ControlPlaneInfo, custom: Any, namespace: str
) -> None:
    for name in ("a", "b"):
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, MIGRATIONS, migration(name))
    path = (
        f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{MIGRATIONS}?watch=1&sendInitialEvents=true"
        "&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"
    )
    initial: list[str] = []
    streamed: list[str] = []
    ended_initial = False
    deadline = time.monotonic() + 30
    for event in _watch(control_plane, path, seconds=30):
        obj = event["object"]
        if event["type"] == "BOOKMARK":
            annotations = obj["metadata"].get("annotations", {})
            if annotations.get("k8s.io/initial-events-end") == "true":
                ended_initial = True
                custom.create_namespaced_custom_object(GROUP, VERSION, namespace, MIGRATIONS, migration("c"))
            continue
        assert event["type"] == "ADDED", event
        (streamed if ended_initial else initial).append(obj["metadata"]["name"])
        if streamed or time.monotonic() > deadline:
            break
    assert sorted(initial) == ["a", "b"]
    assert ended_initial
    assert streamed == ["c"]


def test_a_finalizer_holds_deletion_until_it_is_removed(custom: Any, namespace: str) -> None:
    body = migration("m")
    body["metadata"]["finalizers"] = ["vemigrate.io/finalizer"]
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, MIGRATIONS, body)
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, MIGRATIONS, "m")

    held = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, MIGRATIONS, "m")
    assert held["metadata"]["deletionTimestamp"]
    # Spec rules still hold while deleting; only the finalizer list may shrink.
    held["metadata"]["finalizers"] = []
    custom.replace_namespaced_custom_object(GROUP, VERSION, namespace, MIGRATIONS, "m", held)
    remaining = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, MIGRATIONS)["items"]
    assert remaining == []
