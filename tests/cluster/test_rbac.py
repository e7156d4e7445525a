"""RBAC is really enforced: a ServiceAccount token gets exactly what its Role grants. The same helper
lets later tests run the operator under the permissions its Helm chart grants."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.cluster.objects import GROUP, HOSTS, MIGRATIONS, VERSION, migration
from tests.fixtures.controlplane import Rule
from vemigrate_dev.controlplane import ControlPlaneInfo
from vemigrate_dev.controlplane_accounts import api_client

READ_MIGRATIONS = Rule(api_groups=[GROUP], resources=[MIGRATIONS], verbs=["get", "list", "watch"])


def _denied(call: Callable[..., Any], *args: Any) -> ApiException:
    with pytest.raises(ApiException) as caught:
        call(*args)
    assert caught.value.status == 403, caught.value.body
    return caught.value


def test_a_token_lacking_a_permission_is_denied(
    control_plane: ControlPlaneInfo,
    custom: Any,
    namespace: str,
    service_account: Callable[..., Path],
) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, MIGRATIONS, migration("m"))
    kubeconfig = service_account(namespace, "reader", [READ_MIGRATIONS])
    reader: Any = client.CustomObjectsApi(api_client(kubeconfig))

    # Granted: reading migrations in its own namespace.
    listed = reader.list_namespaced_custom_object(GROUP, VERSION, namespace, MIGRATIONS)
    assert [item["metadata"]["name"] for item in listed["items"]] == ["m"]

    # Not granted: writing them, their status, other kinds, other namespaces.
    error = _denied(reader.create_namespaced_custom_object, GROUP, VERSION, namespace, MIGRATIONS, migration("n"))
    assert f"system:serviceaccount:{namespace}:reader" in str(error.body)
    stored = reader.get_namespaced_custom_object(GROUP, VERSION, namespace, MIGRATIONS, "m")
    stored["status"] = {"phase": "Failed"}
    _denied(reader.replace_namespaced_custom_object_status, GROUP, VERSION, namespace, MIGRATIONS, "m", stored)
    _denied(reader.list_namespaced_custom_object, GROUP, VERSION, namespace, HOSTS)
    _denied(reader.list_namespaced_custom_object, GROUP, VERSION, "default", MIGRATIONS)
    _denied(client.CoreV1Api(api_client(kubeconfig)).list_namespaced_secret, namespace)


def test_a_granted_permission_is_allowed_and_kubectl_agrees(
    control_plane: ControlPlaneInfo,
    namespace: str,
    service_account: Callable[..., Path],
) -> None:
    writer = Rule(api_groups=[GROUP], resources=[MIGRATIONS], verbs=["create", "get"])
    status_writer = Rule(api_groups=[GROUP], resources=[f"{MIGRATIONS}/status"], verbs=["update"])
    kubeconfig = service_account(namespace, "writer", [writer, status_writer])
    api: Any = client.CustomObjectsApi(api_client(kubeconfig))
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, MIGRATIONS, migration("m"))
    stored = api.get_namespaced_custom_object(GROUP, VERSION, namespace, MIGRATIONS, "m")
    stored["status"] = {"phase": "Pending"}
    api.replace_namespaced_custom_object_status(GROUP, VERSION, namespace, MIGRATIONS, "m", stored)

    def can_i(*args: str) -> str:
        result = subprocess.run(
            [str(control_plane.kubectl), f"--kubeconfig={kubeconfig}", "auth", "can-i", *args],
            capture_output=True,
            text=True,
            check=False,
        )
        return result.stdout.strip()

    assert can_i("create", "vem") == "yes"
    assert can_i("update", "vem", "--subresource=status") == "yes"
    assert can_i("delete", "vem") == "no"
    assert can_i("create", "hvh") == "no"


def test_a_cluster_wide_grant_reaches_every_namespace(
    control_plane: ControlPlaneInfo,
    kube_admin: Any,
    namespace: str,
    service_account: Callable[..., Path],
) -> None:
    kubeconfig = service_account(namespace, "watcher", [READ_MIGRATIONS], cluster_wide=True)
    api: Any = client.CustomObjectsApi(api_client(kubeconfig))
    api.list_cluster_custom_object(GROUP, VERSION, MIGRATIONS)
    api.list_namespaced_custom_object(GROUP, VERSION, "default", MIGRATIONS)
    _denied(api.list_cluster_custom_object, GROUP, VERSION, HOSTS)
