"""A HypervisorHost cannot turn into a command in the operator, nor into a read of a Secret it was not
given: the real apiserver refuses every libvirtURI but an SSH one, and the real operator uses only
Secrets marked for hosts and never repeats what it read from one (status, Events, its log)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.cluster.objects import GROUP, HOSTS, MIGRATIONS, VERSION, host, migration, rejection
from tests.fixtures.operator import OperatorProcess, session_operator
from vemigrate.api.host import SECRET_MARK_LABEL
from vemigrate_dev.controlplane import ControlPlaneInfo

# One word, so asyncssh's own error would quote it ("Invalid known hosts entry: <line>").
LEAK = "payroll-db-password-Zq8T2vLk"


@pytest.mark.parametrize(
    "uri",
    [
        "qemu+ext:///system?command=/bin/sh",
        "qemu+tcp://h/system",
        "qemu+unix:///system?socket=/x",
        "qemu+tls://h/system",
        "qemu:///system",
        "qemu+ssh://root@h/system?command=/bin/sh",
        "qemu+ssh://root@h/system?no_verify=1",
        "qemu+ssh://root@h/system?keyfile=/var/run/secrets/kubernetes.io/serviceaccount/token",
        "qemu+ssh://root@h/session",
    ],
)
def test_a_libvirt_uri_that_is_not_plain_ssh_is_refused(custom: Any, namespace: str, uri: str) -> None:
    with pytest.raises(ApiException) as caught:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, HOSTS, host("h", libvirtURI=uri))
    status, message = rejection(caught.value)
    assert status == 422
    assert "spec.libvirtURI" in message
    assert "libvirtURI must" in message


@pytest.mark.parametrize(
    "uri",
    ["qemu+ssh://root@h/system", "lxc+ssh://root@192.0.2.10/system", "vz+ssh://root@h:2222/system", "qemu+ssh://h"],
)
def test_an_ssh_libvirt_uri_is_accepted(custom: Any, namespace: str, uri: str) -> None:
    created = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, HOSTS, host("h", libvirtURI=uri))
    assert created["spec"]["libvirtURI"] == uri


def _secret(name: str, data: dict[str, str], *, marked: bool) -> client.V1Secret:
    labels = {SECRET_MARK_LABEL: "true"} if marked else {"app.kubernetes.io/name": "payroll"}
    return client.V1Secret(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        data={k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    )


def _reachable(body: dict[str, Any]) -> dict[str, Any]:
    conditions = (body.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Reachable"), {})


def test_a_host_naming_an_unmarked_secret_is_refused_and_nothing_of_it_is_repeated(
    control_plane: ControlPlaneInfo, kube_admin: Any, namespace: str, tmp_path: Path
) -> None:
    """knownHostsSecretRef names someone else's Secret (unmarked): SecretNotMarked, on the host and on
    a migration using it. Once the Secret is marked, its text (not a known_hosts file) is still only
    named (InvalidKnownHosts). Its text is in no status, Event or operator log at any point."""
    core = client.CoreV1Api(kube_admin)
    custom = client.CustomObjectsApi(kube_admin)
    key = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
    core.create_namespaced_secret(namespace, _secret("node-ssh", {"ssh-privatekey": key}, marked=True))
    core.create_namespaced_secret(namespace, _secret("payroll", {"known_hosts": LEAK}, marked=False))
    for name in ("node-a", "node-b"):
        spec = {"credentialsSecretRef": {"name": "node-ssh"}, "knownHostsSecretRef": {"name": "payroll"}}
        body = host(name, **spec)
        del body["spec"]["hostKey"]
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, HOSTS, body)

    operator = OperatorProcess(
        control_plane.kubeconfig, tmp_path / "operator.log", ["--host-probe-seconds", "1", "--namespace", namespace]
    )
    operator.start()
    try:

        def wait_reason(reason: str) -> dict[str, Any]:
            deadline = time.monotonic() + 60
            while True:
                body = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, HOSTS, "node-a")
                if _reachable(body).get("reason") == reason:
                    return dict(body)
                assert time.monotonic() < deadline, f"{_reachable(body)}\n{operator.tail()}"
                time.sleep(0.2)

        condition = _reachable(wait_reason("SecretNotMarked"))
        assert f"Secret {namespace}/payroll" in condition["message"]
        assert f"{SECRET_MARK_LABEL}=true" in condition["message"]

        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, MIGRATIONS, migration("m"))
        deadline = time.monotonic() + 120
        while True:
            failed = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, MIGRATIONS, "m")
            if (failed.get("status") or {}).get("phase") == "Failed":
                break
            assert time.monotonic() < deadline, f"{failed.get('status')}\n{operator.tail()}"
            time.sleep(0.2)
        assert failed["status"]["failure"]["reason"] == "SecretNotMarked", failed["status"]

        marked = {"metadata": {"labels": {SECRET_MARK_LABEL: "true"}}}
        core.patch_namespaced_secret("payroll", namespace, marked)
        condition = _reachable(wait_reason("InvalidKnownHosts"))
        assert f"Secret {namespace}/payroll key known_hosts is not a valid known_hosts file" in condition["message"]
        time.sleep(2)  # a few more probes
    finally:
        operator.stop()

    said = {
        "hosts": json.dumps(custom.list_namespaced_custom_object(GROUP, VERSION, namespace, HOSTS)),
        "migrations": json.dumps(custom.list_namespaced_custom_object(GROUP, VERSION, namespace, MIGRATIONS)),
        "events": "\n".join(str(e.to_dict()) for e in core.list_namespaced_event(namespace).items),
        "operator log": operator.log.read_text(errors="replace"),
    }
    assert "SecretNotMarked" in said["events"]
    other = session_operator()
    if other is not None:  # it reconciles every namespace, this one too
        said["session operator log"] = other.log.read_text(errors="replace")
    assert [where for where, text in said.items() if LEAK in text] == []
