"""No credential ever leaves its Secret: not into a migration's or a host's spec or status, not into
Events, not into the operator's log, not into any process's arguments while a migration runs
(the operator's, nor the job's ssh, dd, zstd and virsh on the lab hosts). Checked from outside, with
the lab's real private key and a second, wrong key that makes a host fail authentication."""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from kubernetes import client

from tests.fixtures.operator import Migrations, OperatorProcess
from vemigrate.api.common import GROUP, VERSION
from vemigrate.api.host import PLURAL as HOST_PLURAL
from vemigrate.api.host import PRIVATE_KEY_KEY, SECRET_MARK_LABEL
from vemigrate.api.migration import PLURAL
from vemigrate_dev.lab import Lab, LabInfo, VMState
from vemigrate_dev.lab.kube import KNOWN_HOSTS_SECRET

Cleanup = Callable[[str], str]


def _fragments(pem: str) -> list[str]:
    """The lines of a private key's body: any one of them in a text means the key leaked."""
    return [line for line in pem.splitlines() if len(line) >= 20 and "PRIVATE KEY" not in line]


class ArgvSampler:
    """Every distinct command line on the machine (lab hosts share its PID namespace), read every
    50 ms from /proc while it runs."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    self.seen.add(cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
                except OSError:
                    continue
            self._stop.wait(0.05)

    def __enter__(self) -> ArgvSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture
def wrong_key_host(hosts: LabInfo, kube_admin: Any, namespace: str) -> Iterator[str]:
    """lab2 once more, as `lab2-wrongkey`, with a private key the host does not accept."""
    pem = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
    core = client.CoreV1Api(kube_admin)
    core.create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": "wrong-key", "labels": {SECRET_MARK_LABEL: "true"}},
            "type": "kubernetes.io/ssh-auth",
            "data": {PRIVATE_KEY_KEY: base64.b64encode(pem.encode()).decode()},
        },
    )
    spec = {
        "address": hosts.host("lab2").address,
        "credentialsSecretRef": {"name": "wrong-key", "key": PRIVATE_KEY_KEY},
        "knownHostsSecretRef": {"name": KNOWN_HOSTS_SECRET, "key": "known_hosts"},
    }
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "HypervisorHost", "metadata": {"name": "lab2-wrongkey"}}
    client.CustomObjectsApi(kube_admin).create_namespaced_custom_object(
        GROUP, VERSION, namespace, HOST_PLURAL, {**body, "spec": spec}
    )
    yield pem


def test_no_credential_in_spec_status_events_logs_or_process_arguments(
    hosts: LabInfo,
    wrong_key_host: str,
    migrations: Migrations,
    operator: OperatorProcess,
    kube_admin: Any,
    namespace: str,
    vm_cleanup: Cleanup,
) -> None:
    name = vm_cleanup("sec1")
    Lab.create_vm("lab1", name, state=VMState.STOPPED)
    log_start = operator.log.stat().st_size
    with ArgvSampler() as argv:
        migrations.create("sec-moved", {"source": {"host": "lab1", "name": name}, "target": {"host": "lab2"}})
        # Authentication is refused before any VE is looked up: this one needs none.
        denied_spec = {"source": {"host": "lab1", "name": "sec-none"}, "target": {"host": "lab2-wrongkey"}}
        migrations.create("sec-denied", denied_spec)
        denied = migrations.wait_phase("sec-denied", "Failed", "Succeeded", timeout=180)["status"]
        moved = migrations.wait_phase("sec-moved", "Succeeded", "Failed", timeout=300)["status"]
    assert moved["phase"] == "Succeeded", moved
    assert denied["phase"] == "Failed" and denied["failure"]["reason"] == "AuthenticationFailed", denied
    assert any("job.sh" in line for line in argv.seen), "the sampler saw the migration job run"

    custom = client.CustomObjectsApi(kube_admin)
    texts = {
        "migrations": str(custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)),
        "hosts": str(custom.list_namespaced_custom_object(GROUP, VERSION, namespace, HOST_PLURAL)),
        "events": str(client.CoreV1Api(kube_admin).list_namespaced_event(namespace).to_dict()),
        "operator log": operator.log.read_bytes()[log_start:].decode(errors="replace"),
        "process arguments": "\n".join(sorted(argv.seen)),
    }
    assert "AuthenticationFailed" in texts["events"] + texts["migrations"], "the failure itself is reported"
    lab_key = hosts.ssh_key.read_text()
    for secret, pem in (("the lab's key", lab_key), ("the wrong key", wrong_key_host)):
        fragments = _fragments(pem)
        assert fragments, f"{secret} has a body to look for"
        for where, text in texts.items():
            leaked = [f for f in fragments if f in text]
            assert not leaked, f"{secret} appears in the {where}"
