"""Per-host concurrency limits admit exactly `maxOutbound` migrations, and the Queued message counts
each migration in flight once; a freed slot goes to the oldest waiter at once. Hosts at a loopback port
where nothing listens keep the admitted migrations waiting in Validating (HostUnreachable), so the slots
stay taken while the test looks."""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client

from tests.cluster.objects import GROUP, HOSTS, MIGRATIONS, loopback_hosts, migration
from tests.fixtures.operator import OperatorProcess
from vemigrate.api.common import VERSION
from vemigrate_dev.controlplane import ControlPlaneInfo


def test_a_host_limit_admits_exactly_that_many_and_counts_each_once(
    control_plane: ControlPlaneInfo, kube_admin: Any, namespace: str, tmp_path: Path
) -> None:
    operator = OperatorProcess(control_plane.kubeconfig, tmp_path / "operator.log", ["--namespace", namespace])
    operator.start()
    try:
        loopback_hosts(kube_admin, namespace, maxOutbound=2, maxInbound=5)
        custom = client.CustomObjectsApi(kube_admin)

        def create(i: int) -> None:
            spec = migration(f"m{i}", source={"host": "node-a", "name": f"ve{i}"}, target={"host": "node-b"})
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, MIGRATIONS, spec)

        def phases_become(wanted: Counter[str]) -> list[dict[str, Any]]:
            deadline = time.monotonic() + 60
            while True:
                found = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, MIGRATIONS)["items"]
                phases = Counter((o.get("status") or {}).get("phase") for o in found)
                if phases == wanted:
                    return list(found)
                assert time.monotonic() < deadline, f"{dict(phases)}, not {dict(wanted)}\n{operator.tail()}"
                time.sleep(0.5)

        create(0)
        phases_become(Counter({"Validating": 1}))
        time.sleep(2)  # the API (and the operator's index) show the first one in flight
        create(1)
        create(2)
        found = phases_become(Counter({"Validating": 2, "Queued": 1}))
        queued = next(o for o in found if o["status"]["phase"] == "Queued")
        assert queued["status"]["queuedReason"] == "Host 'node-a' limit: 2 of 2 outbound migrations in flight"
        time.sleep(3)  # and it stays that way: the third is not admitted behind the limit's back
        found = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, MIGRATIONS)["items"]
        assert Counter(o["status"]["phase"] for o in found) == Counter({"Validating": 2, "Queued": 1})
    finally:
        operator.stop()


def _watchers(
    custom: Any, namespace: str, operator: OperatorProcess
) -> tuple[Callable[[str], str], Callable[[str, str, float], None]]:
    """A migration's phase now, and a wait until it reaches one (failing with the operator's log)."""

    def phase(name: str) -> str:
        found = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, MIGRATIONS, name)
        return str((found.get("status") or {}).get("phase"))

    def becomes(name: str, wanted: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while phase(name) != wanted:
            assert time.monotonic() < deadline, f"{name} not {wanted} in {timeout} s\n{operator.tail()}"
            time.sleep(0.2)

    return phase, becomes


def test_a_freed_slot_goes_to_the_oldest_waiter_at_once(
    control_plane: ControlPlaneInfo, kube_admin: Any, namespace: str, tmp_path: Path
) -> None:
    operator = OperatorProcess(control_plane.kubeconfig, tmp_path / "operator.log", ["--namespace", namespace])
    operator.start()
    try:
        loopback_hosts(kube_admin, namespace, maxOutbound=1, maxInbound=5)
        custom = client.CustomObjectsApi(kube_admin)
        phase, becomes = _watchers(custom, namespace, operator)

        names = [f"m{i}" for i in range(4)]
        for i, name in enumerate(names):
            spec = migration(name, source={"host": "node-a", "name": f"ve{i}"}, target={"host": "node-b"})
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, MIGRATIONS, spec)
            if i == 0:
                becomes(name, "Validating", 60)
        for name in names[1:]:
            becomes(name, "Queued", 60)
        # The slot's holder goes: the oldest waiter takes it, woken by that (its own poll is 10 s away),
        # and only it. Then again with the next. The waiters were created within a second or so of each
        # other: the order the operator saw them created in decides.
        for holder, oldest in itertools.pairwise(names):
            custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, MIGRATIONS, holder)
            becomes(oldest, "Validating", 30)
            assert f"/{oldest}: Queued -> Validating (a pass woken by slot-freed)" in operator.tail(400)
            younger = names[names.index(oldest) + 1 :]
            assert [phase(n) for n in younger] == ["Queued"] * len(younger), operator.tail()
    finally:
        operator.stop()


def test_a_raised_host_limit_admits_a_waiter_at_once(
    control_plane: ControlPlaneInfo, kube_admin: Any, namespace: str, tmp_path: Path
) -> None:
    operator = OperatorProcess(control_plane.kubeconfig, tmp_path / "operator.log", ["--namespace", namespace])
    operator.start()
    try:
        loopback_hosts(kube_admin, namespace, maxOutbound=1, maxInbound=5)
        custom = client.CustomObjectsApi(kube_admin)
        _, becomes = _watchers(custom, namespace, operator)

        for i, wanted in enumerate(("Validating", "Queued")):
            spec = migration(f"m{i}", source={"host": "node-a", "name": f"ve{i}"}, target={"host": "node-b"})
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, MIGRATIONS, spec)
            becomes(f"m{i}", wanted, 60)
        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, HOSTS, "node-a", {"spec": {"maxOutbound": 2}})
        becomes("m1", "Validating", 30)
        assert "/m1: Queued -> Validating (a pass woken by slot-freed)" in operator.tail(400)
    finally:
        operator.stop()
