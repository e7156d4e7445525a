"""Manifests and API helpers shared by the cluster tests (field names exactly as in DESIGN.md)."""

from __future__ import annotations

import copy
import json
from typing import Any

from kubernetes.client.exceptions import ApiException

GROUP, VERSION = "vemigrate.io", "v1alpha1"
MIGRATIONS, HOSTS = "virtualenvironmentmigrations", "hypervisorhosts"


def migration(name: str, **spec: Any) -> dict[str, Any]:
    """A valid VirtualEnvironmentMigration; keyword arguments replace or add spec fields."""
    body: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "VirtualEnvironmentMigration",
        "metadata": {"name": name},
        "spec": {
            "source": {"host": "node-a", "name": "web-01"},
            "target": {"host": "node-b", "path": "/vz/private"},
        },
    }
    body["spec"].update(copy.deepcopy(spec))
    return body


def host(name: str, **spec: Any) -> dict[str, Any]:
    """A valid HypervisorHost; keyword arguments replace or add spec fields."""
    body: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "HypervisorHost",
        "metadata": {"name": name},
        "spec": {
            "address": "192.0.2.10",
            "driver": "libvirt",
            "credentialsSecretRef": {"name": f"{name}-ssh"},
            "hostKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
        },
    }
    body["spec"].update(copy.deepcopy(spec))
    return body


def rejection(exc: ApiException) -> tuple[int, str]:
    """The HTTP status and the apiserver's human message of a refused request."""
    try:
        message = str(json.loads(exc.body or "")["message"])
    except (TypeError, ValueError, KeyError):
        message = str(exc.body)
    return int(exc.status), message
