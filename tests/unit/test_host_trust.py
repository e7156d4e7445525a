"""What a HypervisorHost's author can make the operator do: only SSH libvirt URIs, opened through the
operator's own verified connection; only Secrets marked for hosts; and nothing read from a Secret is
ever repeated in a message or an exception chain (status, Events and logs are made of those)."""

from __future__ import annotations

import base64
import traceback
from typing import Any

import asyncssh
import pytest

from vemigrate.api.common import SecretKeyRef
from vemigrate.api.host import SECRET_MARK_LABEL, HostSpec, HypervisorHost
from vemigrate.core.access import HostAccess
from vemigrate.drivers.errors import PermanentError
from vemigrate.drivers.libvirt import LibvirtDriver, connection
from vemigrate.drivers.libvirt.connection import _connection_plan
from vemigrate.drivers.ssh import SSHHost, _client_keys, known_hosts_for
from vemigrate.kube import hosts
from vemigrate.kube.client import ApiError

# Text that stands for some other Secret's content: it must never come back out.
LEAK = "s3cr3t-DO-NOT-ECHO-7f2c"


# -- spec.libvirtURI ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("uri", "hypervisor"),
    [
        (None, "qemu"),
        ("", "qemu"),
        ("qemu+ssh://root@node-a/system", "qemu"),
        ("qemu+ssh://node-a", "qemu"),
        ("vz+ssh://root@node-a:2222/system", "vz"),
        ("lxc+ssh://root@192.0.2.1/system", "lxc"),
        ("qemu+libssh2://root@[fd00::1]:22/system", "qemu"),
    ],
)
def test_ssh_uris_name_the_driver_and_nothing_else(uri: str | None, hypervisor: str) -> None:
    assert _connection_plan(uri, "node-a") == (hypervisor, "/system")


@pytest.mark.parametrize(
    ("uri", "named"),
    [
        ("qemu+ext:///system?command=/bin/sh", "not an SSH URI"),
        ("qemu+tcp://node-a/system", "not an SSH URI"),
        ("qemu+tls://node-a/system", "not an SSH URI"),
        ("qemu+unix:///system?socket=/run/other/libvirt-sock", "not an SSH URI"),
        ("qemu:///system", "not an SSH URI"),
        ("test:///default", "not an SSH URI"),
        ("xen+ssh://root@node-a/system", "not an SSH URI"),
        ("qemu+ssh://root@node-a/system?command=/bin/sh", "command"),
        ("qemu+ssh://root@node-a/system?socket=/tmp/s", "socket"),
        ("qemu+ssh://root@node-a/system?netcat=/tmp/x&keyfile=/root/.ssh/id", "keyfile, netcat"),
        ("qemu+ssh://root@node-a/system?no_verify=1", "no_verify"),
        ("qemu+ssh://root@node-a/system?known_hosts=/dev/null", "known_hosts"),
        ("qemu+ssh://root@node-a/system?mode=direct", "mode"),
        ("qemu+ssh://root@node-a/system#x", "fragment"),
        ("qemu+ssh://root@node-a/session", "form"),
        ("qemu+ssh://root@node-a/system\n", "form"),
        ("qemu+ssh://root@node-a/sys\ntem", "form"),
        ("qemu+ssh://-oProxyCommand=sh@node-a/system", "form"),
    ],
)
def test_other_uris_are_refused_with_a_reason_naming_the_field(uri: str, named: str) -> None:
    with pytest.raises(PermanentError) as caught:
        _connection_plan(uri, "node-a")
    assert caught.value.reason == "UnsafeLibvirtURI"
    assert "spec.libvirtURI of HypervisorHost 'node-a'" in caught.value.message
    assert named in caught.value.message


async def test_a_refused_uri_is_never_opened_nor_any_connection_made(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[Any] = []
    monkeypatch.setattr(connection.libvirt, "open", lambda uri: opened.append(uri))

    async def forward(self: SSHHost, local: str, remote: str) -> None:
        opened.append(("forward", remote))

    monkeypatch.setattr(SSHHost, "forward_socket", forward)
    access = HostAccess(name="node-a", namespace="ns", address="192.0.2.1", libvirt_uri="qemu+tcp://node-a/system")
    with pytest.raises(PermanentError) as caught:
        await LibvirtDriver(access).probe()
    assert caught.value.reason == "UnsafeLibvirtURI"
    assert opened == []


# -- what is read from Secrets is never repeated -------------------------------------------------
def _everything_said(exc: BaseException) -> str:
    """The message and the whole chain a log line with exc_info would print."""
    return str(exc) + "".join(traceback.format_exception(exc))


def test_a_bad_known_hosts_text_is_named_never_quoted() -> None:
    access = HostAccess(
        name="node-a",
        namespace="ns",
        address="192.0.2.1",
        known_hosts=f"{LEAK}\n",
        known_hosts_origin="Secret ns/payroll-db key known_hosts",
    )
    with pytest.raises(PermanentError) as caught:
        known_hosts_for(access)
    assert caught.value.reason == "InvalidKnownHosts"
    assert "Secret ns/payroll-db key known_hosts is not a valid known_hosts file" in caught.value.message
    assert LEAK not in _everything_said(caught.value)


def test_a_bad_private_key_is_named_never_quoted() -> None:
    key = f"-----BEGIN OPENSSH PRIVATE KEY-----\n{LEAK}\n-----END OPENSSH PRIVATE KEY-----\n"
    access = HostAccess(
        name="node-a",
        namespace="ns",
        address="192.0.2.1",
        private_key=key,
        credentials_origin="Secret ns/node-a-ssh key ssh-privatekey",
    )
    with pytest.raises(PermanentError) as caught:
        _client_keys(access)
    assert caught.value.reason == "InvalidPrivateKey"
    assert "Secret ns/node-a-ssh key ssh-privatekey is not an SSH private key" in caught.value.message
    assert LEAK not in _everything_said(caught.value)


async def test_connecting_with_a_bad_known_hosts_text_leaves_no_trace_of_it() -> None:
    """Through SSHHost, as the driver connects: the chain the operator might log holds no copy either."""
    access = HostAccess(
        name="node-a",
        namespace="ns",
        address="192.0.2.1",
        private_key=asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode(),
        known_hosts=f"{LEAK}\n",
        known_hosts_origin="Secret ns/payroll-db key known_hosts",
    )
    with pytest.raises(PermanentError) as caught:
        await SSHHost(access).connection()
    assert caught.value.reason == "InvalidKnownHosts"
    assert LEAK not in _everything_said(caught.value)


class _Secrets:
    """The one request `hosts.resolve` makes of the API (a Secret's GET), answered from a dict of Secrets
    as the API server's JSON; a missing one is the API's 404."""

    def __init__(self, *secrets: dict[str, Any]) -> None:
        self.secrets = {s["metadata"]["name"]: s for s in secrets}

    def read_namespaced_secret(self, name: str, namespace: str) -> dict[str, Any]:
        if name not in self.secrets:
            raise ApiError(404, "Not Found", f'secrets "{name}" not found', f"GET secrets/{name}")
        return self.secrets[name]

    async def request(self, method: str, path: str, body: Any = None, **_: Any) -> dict[str, Any]:
        assert method == "GET", path
        *_, namespace, plural, name = path.split("/")
        assert plural == "secrets", path
        return self.read_namespaced_secret(name, namespace)


def _secret(name: str, data: dict[str, bytes], *, marked: bool = True, type_: str = "Opaque") -> dict[str, Any]:
    labels = {SECRET_MARK_LABEL: "true"} if marked else {"app": "payroll"}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": labels},
        "type": type_,
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }


def _host(**spec: Any) -> HypervisorHost:
    fields: dict[str, Any] = {
        "address": "192.0.2.1",
        "credentials_secret_ref": SecretKeyRef(name="node-a-ssh"),
        "known_hosts_secret_ref": SecretKeyRef(name="known-hosts"),
    }
    return HypervisorHost(metadata={"name": "node-a"}, spec=HostSpec(**{**fields, **spec}))


KEY = {"ssh-privatekey": b"-----BEGIN OPENSSH PRIVATE KEY-----\n..."}
KNOWN = {"known_hosts": b"192.0.2.1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ\n"}


async def test_marked_secrets_are_used_and_their_origins_kept() -> None:
    kube: Any = _Secrets(_secret("node-a-ssh", KEY), _secret("known-hosts", KNOWN))
    access = await hosts.resolve(kube, "ns", _host(host_key="ssh-ed25519 AAAA"))
    assert access.private_key == KEY["ssh-privatekey"].decode()
    assert access.credentials_origin == "Secret ns/node-a-ssh key ssh-privatekey"
    assert access.known_hosts_origin == "Secret ns/known-hosts key known_hosts with spec.hostKey"


@pytest.mark.parametrize("unmarked", ["node-a-ssh", "known-hosts"])
async def test_an_unmarked_secret_is_refused_naming_it_and_the_label(unmarked: str) -> None:
    """Even one of type kubernetes.io/ssh-auth: other tools use that type for their own keys."""
    payroll = {"known_hosts": LEAK.encode(), "password": LEAK.encode(), "ssh-privatekey": LEAK.encode()}
    secrets = [
        _secret(name, payroll if name == unmarked else data, marked=name != unmarked, type_="kubernetes.io/ssh-auth")
        for name, data in (("node-a-ssh", KEY), ("known-hosts", KNOWN))
    ]
    kube: Any = _Secrets(*secrets)
    with pytest.raises(hosts.HostConfigError) as caught:
        await hosts.resolve(kube, "ns", _host())
    assert caught.value.reason == "SecretNotMarked"
    assert f"Secret ns/{unmarked}" in caught.value.message
    assert f"{SECRET_MARK_LABEL}=true" in caught.value.message
    assert LEAK not in _everything_said(caught.value)


async def test_a_secret_value_that_is_not_text_is_named_never_quoted() -> None:
    kube: Any = _Secrets(
        _secret("node-a-ssh", {"ssh-privatekey": b"\xff\xfe" + LEAK.encode()}), _secret("known-hosts", KNOWN)
    )
    with pytest.raises(hosts.HostConfigError) as caught:
        await hosts.resolve(kube, "ns", _host())
    assert caught.value.reason == "SecretNotText"
    assert "Secret ns/node-a-ssh key ssh-privatekey" in caught.value.message
    assert LEAK not in _everything_said(caught.value)
