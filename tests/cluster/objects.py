"""Manifests and API helpers shared by the cluster tests (field names exactly as in DESIGN.md)."""

from __future__ import annotations

import base64
import copy
import json
import socket
from typing import Any

import asyncssh
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from vemigrate.api.host import SECRET_MARK_LABEL

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


def loopback_hosts(kube_admin: Any, namespace: str, **spec: Any) -> None:
    """HypervisorHosts the operator can look up but never reach, with no traffic leaving 127.0.0.1:
    node-a and node-b (a real key Secret, a loopback port where nothing listens) and no-key (whose
    Secret does not exist). Keyword arguments add spec fields to node-a and node-b."""
    key = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
    secret = client.V1Secret(
        metadata=client.V1ObjectMeta(name="lab-ssh", labels={SECRET_MARK_LABEL: "true"}),
        data={"ssh-privatekey": base64.b64encode(key.encode()).decode()},
    )
    client.CoreV1Api(kube_admin).create_namespaced_secret(namespace, secret)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    custom = client.CustomObjectsApi(kube_admin)
    hosts = (("node-a", "lab-ssh", spec), ("node-b", "lab-ssh", spec), ("no-key", "absent", {}))
    for name, secret_name, extra in hosts:
        body = host(name, address="127.0.0.1", port=port, credentialsSecretRef={"name": secret_name}, **extra)
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, HOSTS, body)
