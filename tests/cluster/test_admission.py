"""Per-host concurrency limits admit exactly `maxOutbound` migrations, and the Queued message counts
each migration in flight once. Hosts at a loopback port where nothing listens keep the admitted
migrations waiting in Validating (HostUnreachable), so the slots stay taken while the test looks."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from kubernetes import client

from tests.cluster.objects import GROUP, MIGRATIONS, loopback_hosts, migration
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
