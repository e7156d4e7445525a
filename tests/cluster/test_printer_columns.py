"""`kubectl get vem` and `kubectl get hvh` show the columns a person watches a migration by."""

from __future__ import annotations

import subprocess
from typing import Any

from tests.cluster.objects import GROUP, HOSTS, MIGRATIONS, VERSION, host, migration
from vemigrate_dev.controlplane import ControlPlaneInfo


def _kubectl_table(info: ControlPlaneInfo, *args: str) -> list[list[str]]:
    result = subprocess.run(
        [str(info.kubectl), f"--kubeconfig={info.kubeconfig}", "get", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return [line.split() for line in result.stdout.splitlines()]


def _in_order(wanted: list[str], header: list[str]) -> bool:
    positions = [header.index(name) for name in wanted if name in header]
    return len(positions) == len(wanted) and positions == sorted(positions)


def test_get_vem_shows_phase_source_target_mode_progress_age(
    control_plane: ControlPlaneInfo, custom: Any, namespace: str
) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, MIGRATIONS, migration("m"))
    stored = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, MIGRATIONS, "m")
    stored["status"] = {"phase": "Transferring", "mode": "Live", "progress": {"percent": 42}}
    custom.replace_namespaced_custom_object_status(GROUP, VERSION, namespace, MIGRATIONS, "m", stored)

    header, row = _kubectl_table(control_plane, "vem", "-n", namespace)
    assert _in_order(["NAME", "PHASE", "SOURCE", "TARGET", "MODE", "PROGRESS", "AGE"], header), header
    cells = dict(zip(header, row, strict=False))
    assert cells["NAME"] == "m"
    assert cells["PHASE"] == "Transferring"
    assert cells["SOURCE"] == "node-a"
    assert cells["TARGET"] == "node-b"
    assert cells["MODE"] == "Live"
    assert cells["PROGRESS"] == "42"
    # The long name and the short plural reach the same resource.
    assert _kubectl_table(control_plane, "virtualenvironmentmigrations", "-n", namespace)[1][0] == "m"
    assert _kubectl_table(control_plane, "vems", "-n", namespace)[1][0] == "m"


def test_get_vem_wide_shows_why_a_migration_ended(control_plane: ControlPlaneInfo, custom: Any, namespace: str) -> None:
    """REASON is status.reason: the reason of whichever final condition is True (a JSONPath in a printer
    column cannot pick it), so a Succeeded migration shows one too, not only a failed one."""
    ended = {
        "ok": {"phase": "Succeeded", "reason": "Migrated"},
        "bad": {
            "phase": "Failed",
            "reason": "PreflightFailed",
            "failure": {"phase": "Validating", "reason": "PreflightFailed"},
        },
    }
    for name, status in ended.items():
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, MIGRATIONS, migration(name))
        stored = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, MIGRATIONS, name)
        stored["status"] = status
        custom.replace_namespaced_custom_object_status(GROUP, VERSION, namespace, MIGRATIONS, name, stored)

    header, *rows = _kubectl_table(control_plane, "vem", "-n", namespace, "-o", "wide")
    assert header[-1] == "REASON", header
    reasons = {row[0]: row[-1] for row in rows}
    assert reasons == {"ok": "Migrated", "bad": "PreflightFailed"}


def test_get_hvh_shows_address_driver_reachable_age(
    control_plane: ControlPlaneInfo, custom: Any, namespace: str
) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, HOSTS, host("h", driver="prlctl"))
    stored = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, HOSTS, "h")
    stored["status"] = {
        "conditions": [
            {
                "type": "Reachable",
                "status": "True",
                "reason": "Probed",
                "message": "ssh and prlctl answered",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }
        ]
    }
    custom.replace_namespaced_custom_object_status(GROUP, VERSION, namespace, HOSTS, "h", stored)

    header, row = _kubectl_table(control_plane, "hvh", "-n", namespace)
    assert _in_order(["NAME", "ADDRESS", "DRIVER", "REACHABLE", "AGE"], header), header
    cells = dict(zip(header, row, strict=False))
    assert cells == {**cells, "NAME": "h", "ADDRESS": "192.0.2.10", "DRIVER": "prlctl", "REACHABLE": "True"}
