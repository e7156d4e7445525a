"""Bad input gets a specific reason on the resource, against the real lab hosts: a host key that
changed (the operator refuses to connect and says so), a VE that is not there, a host that does not
exist, a credentials Secret without the key it should hold, an option the host's driver cannot do."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import asyncssh
from kubernetes import client

from tests.fixtures.operator import Migrations
from tests.lab.evidence import domain
from vemigrate.api.common import GROUP, VERSION
from vemigrate.api.host import PLURAL as HOST_PLURAL
from vemigrate.api.host import SECRET_MARK_LABEL
from vemigrate_dev.lab import Lab, LabInfo
from vemigrate_dev.lab.kube import KEY_SECRET


def _host(kube_admin: Any, namespace: str, name: str, spec: dict[str, Any]) -> None:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "HypervisorHost", "metadata": {"name": name}}
    client.CustomObjectsApi(kube_admin).create_namespaced_custom_object(
        GROUP, VERSION, namespace, HOST_PLURAL, {**body, "spec": spec}
    )


def _failure(migrations: Migrations, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    migrations.create(name, spec)
    status = migrations.wait_phase(name, "Failed", "Succeeded", "Cancelled", timeout=120)["status"]
    assert status["phase"] == "Failed", status
    return dict(status["failure"])


def test_a_changed_host_key_is_refused_and_named(
    hosts: LabInfo, migrations: Migrations, kube_admin: Any, namespace: str
) -> None:
    impostor = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    _host(kube_admin, namespace, "lab2-rekeyed", {
        "address": hosts.host("lab2").address,
        "credentialsSecretRef": {"name": KEY_SECRET},
        "hostKey": impostor,  # what an administrator recorded; lab2 now presents another key
    })  # fmt: skip
    failure = _failure(
        migrations, "rekeyed", {"source": {"host": "lab1", "name": "any"}, "target": {"host": "lab2-rekeyed"}}
    )
    assert failure["reason"] == "HostKeyMismatch", failure
    assert "does not match its known_hosts: refusing to connect" in failure["message"]
    host = client.CustomObjectsApi(kube_admin).get_namespaced_custom_object(
        GROUP, VERSION, namespace, HOST_PLURAL, "lab2-rekeyed"
    )
    reachable = {c["type"]: c for c in host["status"]["conditions"]}["Reachable"]
    assert reachable["status"] == "False" and reachable["reason"] == "HostKeyMismatch", reachable


def test_a_ve_that_is_not_there(hosts: LabInfo, migrations: Migrations) -> None:
    failure = _failure(
        migrations, "ghost", {"source": {"host": "lab1", "name": "no-such-vm"}, "target": {"host": "lab2"}}
    )
    assert failure["reason"] == "VENotFound", failure
    assert "no-such-vm" in failure["message"] and "lab1" in failure["message"]


def test_a_host_that_does_not_exist(hosts: LabInfo, migrations: Migrations) -> None:
    spec = {
        "source": {"host": "lab1", "name": "any"},
        "target": {"host": "nowhere"},
        "timeouts": {"progressSeconds": 10},
    }
    migrations.create("lost", spec)
    queued = migrations.wait_phase("lost", "Queued", "Failed", timeout=60)["status"]
    assert "Waiting for HypervisorHost 'nowhere'" in (queued.get("queuedReason") or ""), queued
    status = migrations.wait_phase("lost", "Failed", timeout=120)["status"]
    assert status["failure"]["reason"] == "HostNotFound", status


def test_a_secret_without_its_key(hosts: LabInfo, migrations: Migrations, kube_admin: Any, namespace: str) -> None:
    client.CoreV1Api(kube_admin).create_namespaced_secret(
        namespace,
        {"metadata": {"name": "no-key", "labels": {SECRET_MARK_LABEL: "true"}}, "stringData": {"username": "root"}},
    )
    _host(kube_admin, namespace, "lab2-nokey", {
        "address": hosts.host("lab2").address,
        "credentialsSecretRef": {"name": "no-key"},
        "knownHostsSecretRef": {"name": "vemigrate-lab-known-hosts"},
    })  # fmt: skip
    failure = _failure(
        migrations, "nokey", {"source": {"host": "lab1", "name": "any"}, "target": {"host": "lab2-nokey"}}
    )
    assert failure["reason"] == "SecretKeyMissing", failure
    assert "'no-key'" in failure["message"] and "username" in failure["message"]


def test_an_option_the_drivers_cannot_do_fails_the_preflight_check_and_moves_nothing(
    hosts: LabInfo, migrations: Migrations, kube_admin: Any, namespace: str, vm_cleanup: Callable[[str], str]
) -> None:
    """libvirt cannot clone a running VM (nor run prlctl's --changesid): lab1 reports what its driver can do,
    and the DriverCapabilities check fails on it, naming the option and the host, before any job starts."""
    Lab.create_vm("lab1", vm_cleanup("cap1"))
    spec = {"source": {"host": "lab1", "name": "cap1"}, "target": {"host": "lab2"}, "clone": True, "changeSid": True}
    failure = _failure(migrations, "cap1", spec)
    assert failure["reason"] == "PreflightFailed" and "DriverCapabilities" in failure["message"], failure
    checks = {c["name"]: c for c in migrations.get("cap1")["status"]["checks"]}
    verdict = checks["DriverCapabilities"]
    assert verdict["result"] == "Failed", verdict
    assert "source lab1 cannot do" in verdict["message"], verdict
    assert "spec.clone of VM 'cap1', running (live) needs LiveClone" in verdict["message"], verdict
    assert "spec.changeSid needs ChangeSid" in verdict["message"], verdict
    api = client.CustomObjectsApi(kube_admin)
    deadline = time.monotonic() + 60
    while not (
        api.get_namespaced_custom_object(GROUP, VERSION, namespace, HOST_PLURAL, "lab1").get("status") or {}
    ).get("capabilities"):  # the host's own probe, on its timer: what `kubectl get hvh -o wide` shows
        assert time.monotonic() < deadline, "lab1's probe reported no capabilities"
        time.sleep(1)
    reported = api.get_namespaced_custom_object(GROUP, VERSION, namespace, HOST_PLURAL, "lab1")["status"]
    assert "LiveVM" in reported["capabilities"] and "LiveClone" not in reported["capabilities"], reported
    assert domain(hosts, "lab1", "cap1") is not None and domain(hosts, "lab2", "cap1") is None, "nothing moved"
