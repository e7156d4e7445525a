"""The operator's asyncio API client (kube/client.py) and the writers and readers on it (kube/status.py,
events.py, hosts.py) against the real kube-apiserver: as the admin (client certificate) and as
ServiceAccounts (tokens, a token file rotated in place, identities without the RBAC they need); an API
server that refuses or never answers; a status write while every thread is held; the session closed."""

from __future__ import annotations

import asyncio
import base64
import gc
import logging
import socket
import threading
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import pytest_asyncio
from kubernetes import client

from tests.cluster.objects import GROUP, HOSTS, MIGRATIONS, VERSION, host, migration
from tests.fixtures.controlplane import Rule
from tests.fixtures.operator import OperatorProcess
from vemigrate.api.common import SecretKeyRef
from vemigrate.api.host import SECRET_MARK_LABEL, HostStatus, HypervisorHost
from vemigrate.api.migration import MigrationStatus, Phase
from vemigrate.drivers.threads import HostThreads
from vemigrate.kube import events, hosts, status
from vemigrate.kube.client import ApiError, ApiUnavailable, Kube
from vemigrate_dev.controlplane import ControlPlaneInfo
from vemigrate_dev.controlplane_accounts import grant

pytestmark = pytest.mark.cluster

READ_SECRETS = [Rule(api_groups=[""], resources=["secrets"], verbs=["get"])]


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _secret(namespace: str, kube_admin: Any, name: str, *, marked: bool = True) -> client.V1Secret:
    labels = {SECRET_MARK_LABEL: "true"} if marked else {}
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        data={"password": base64.b64encode(b"hunter2").decode()},
    )
    created: client.V1Secret = client.CoreV1Api(kube_admin).create_namespaced_secret(namespace, body)
    return created


def _token(kube_admin: Any, namespace: str, account: str, bound_to: client.V1Secret | None = None) -> str:
    """A TokenRequest token for the ServiceAccount; bound to a Secret, it stops working once that is deleted
    (as a Pod's projected token does with its Pod)."""
    ref = (
        client.V1BoundObjectReference(
            api_version="v1", kind="Secret", name=bound_to.metadata.name, uid=bound_to.metadata.uid
        )
        if bound_to is not None
        else None
    )
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600, bound_object_ref=ref)
    )
    answer = client.CoreV1Api(kube_admin).create_namespaced_service_account_token(account, namespace, request)
    return str(answer.status.token)


def _token_file_kube(control_plane: ControlPlaneInfo, token_file: Path, clock: _Clock) -> Kube:
    """Configured as in a Pod: the server and its CA, and the token only in a file."""
    configuration = kubernetes.client.Configuration()
    configuration.host = control_plane.server
    configuration.ssl_ca_cert = str(control_plane.ca_cert)
    return Kube(configuration, token_file=str(token_file), clock=clock)


@pytest_asyncio.fixture(loop_scope="function")  # the test's own loop, in which the session is opened
async def admin(control_plane: ControlPlaneInfo) -> AsyncIterator[Kube]:
    """The client as the operator loads it outside a Pod: the admin's kubeconfig (client certificate)."""
    kube = Kube.from_environment(str(control_plane.kubeconfig))
    yield kube
    await kube.close()


def _create(kube_admin: Any, namespace: str, plural: str, body: dict[str, Any]) -> dict[str, Any]:
    created: dict[str, Any] = client.CustomObjectsApi(kube_admin).create_namespaced_custom_object(
        GROUP, VERSION, namespace, plural, body
    )
    return created


def _events(kube_admin: Any, namespace: str) -> list[Any]:
    return list(client.CoreV1Api(kube_admin).list_namespaced_event(namespace).items)


async def test_status_is_patched_and_events_posted(admin: Kube, kube_admin: Any, namespace: str) -> None:
    body = _create(kube_admin, namespace, MIGRATIONS, migration("m1"))
    await status.patch_migration_status(admin, namespace, "m1", MigrationStatus(phase=Phase.VALIDATING, attempts=1))
    stored = client.CustomObjectsApi(kube_admin).get_namespaced_custom_object(
        GROUP, VERSION, namespace, MIGRATIONS, "m1"
    )
    assert stored["status"]["phase"] == "Validating" and stored["status"]["attempts"] == 1
    # The whole status as a merge patch: a field unset since is dropped by the server.
    await status.patch_migration_status(admin, namespace, "m1", MigrationStatus(phase=Phase.PENDING))
    stored = client.CustomObjectsApi(kube_admin).get_namespaced_custom_object(
        GROUP, VERSION, namespace, MIGRATIONS, "m1"
    )
    assert stored["status"]["phase"] == "Pending" and "attempts" in stored["status"]
    assert stored["status"]["attempts"] == 0 and stored["spec"] == body["spec"], "only the status changed"

    _create(kube_admin, namespace, HOSTS, host("node-a"))
    await status.patch_host_status(admin, namespace, "node-a", HostStatus(memory_total_bytes=2**30))
    stored = client.CustomObjectsApi(kube_admin).get_namespaced_custom_object(
        GROUP, VERSION, namespace, HOSTS, "node-a"
    )
    assert stored["status"]["memoryTotalBytes"] == 2**30

    await events.emit(admin, body, "Warning", "PreflightFailed", "x" * 2000)
    [event] = _events(kube_admin, namespace)
    assert (event.type, event.reason, len(event.message)) == ("Warning", "PreflightFailed", 1024)
    involved = event.involved_object
    assert (involved.kind, involved.name, involved.uid) == (
        "VirtualEnvironmentMigration",
        "m1",
        body["metadata"]["uid"],
    )
    assert event.metadata.name.startswith("m1.") and event.source.component == "vemigrate"
    assert event.first_timestamp is not None and event.count == 1


async def test_a_status_write_for_a_missing_object_is_an_api_error(admin: Kube, namespace: str) -> None:
    with pytest.raises(ApiError) as caught:
        await status.patch_migration_status(admin, namespace, "gone", MigrationStatus())
    assert caught.value.status == 404 and "not found" in caught.value.message


async def test_hosts_are_got_and_listed_and_a_missing_one_is_none(admin: Kube, kube_admin: Any, namespace: str) -> None:
    for name in ("node-a", "node-b"):
        _create(kube_admin, namespace, HOSTS, host(name, maxInbound=3))
    got = await hosts.get_host(admin, namespace, "node-a")
    assert isinstance(got, HypervisorHost) and got.spec.max_inbound == 3 and got.metadata["uid"]
    assert sorted(str(h.metadata["name"]) for h in await hosts.list_hosts(admin, namespace)) == ["node-a", "node-b"]
    assert await hosts.get_host(admin, namespace, "absent") is None
    # A name from a spec is one path segment, never a way to another resource.
    assert await hosts.get_host(admin, namespace, "../../../api/v1/secrets") is None
    assert await hosts.list_hosts(admin, f"{namespace}-none") == []


async def test_a_hosts_secrets_are_read_and_every_refusal_has_its_reason(
    admin: Kube, kube_admin: Any, namespace: str
) -> None:
    _secret(namespace, kube_admin, "node-a-ssh")
    _secret(namespace, kube_admin, "payroll", marked=False)
    hvh = HypervisorHost.model_validate(_create(kube_admin, namespace, HOSTS, host("node-a")))
    access = await hosts.resolve(admin, namespace, hvh)
    assert access.password == "hunter2" and access.credentials_origin == f"Secret {namespace}/node-a-ssh key password"

    def naming(secret: str) -> HypervisorHost:
        ref = SecretKeyRef(name=secret)
        return hvh.model_copy(update={"spec": hvh.spec.model_copy(update={"credentials_secret_ref": ref})})

    with pytest.raises(hosts.HostConfigError) as missing:
        await hosts.resolve(admin, namespace, naming("absent"))
    assert missing.value.reason == "SecretNotFound" and "'absent', which does not exist" in missing.value.message
    with pytest.raises(hosts.HostConfigError) as unmarked:
        await hosts.resolve(admin, namespace, naming("payroll"))
    assert unmarked.value.reason == "SecretNotMarked"


async def test_an_identity_without_rbac_gets_the_apis_own_message(
    control_plane: ControlPlaneInfo,
    kube_admin: Any,
    namespace: str,
    service_account: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A ServiceAccount that may read HypervisorHosts and nothing else: its Secret reads are refused with
    SecretForbidden and its Events dropped, each saying what the API server said."""
    _secret(namespace, kube_admin, "node-a-ssh")
    body = _create(kube_admin, namespace, HOSTS, host("node-a"))
    kubeconfig = service_account(namespace, "hosts-only", [Rule(api_groups=[GROUP], resources=[HOSTS], verbs=["get"])])
    kube = Kube.from_environment(str(kubeconfig))
    try:
        hvh = await hosts.get_host(kube, namespace, "node-a")  # the token is accepted for what it may do
        assert hvh is not None
        with pytest.raises(hosts.HostConfigError) as forbidden:
            await hosts.resolve(kube, namespace, hvh)
        assert forbidden.value.reason == "SecretForbidden"
        said = forbidden.value.message
        assert "may not read Secret 'node-a-ssh' (RBAC)" in said
        assert f'User "system:serviceaccount:{namespace}:hosts-only" cannot get resource "secrets"' in said
        with caplog.at_level(logging.WARNING, logger=events.__name__):
            await events.emit(kube, body, "Normal", "Probed", "answered")
        assert 'cannot create resource "events"' in caplog.text and "could not post Event Probed" in caplog.text
        assert _events(kube_admin, namespace) == []
    finally:
        await kube.close()


async def test_an_event_in_a_namespace_being_deleted_says_so(
    admin: Kube, kube_admin: Any, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    body = _create(kube_admin, namespace, HOSTS, host("node-a"))
    client.CoreV1Api(kube_admin).delete_namespace(namespace)  # stays Terminating: no controller-manager runs
    with caplog.at_level(logging.WARNING, logger=events.__name__):
        await events.emit(admin, body, "Warning", "Unreachable", "no answer")
    assert "because it is being terminated" in caplog.text


async def test_a_rotated_token_file_is_read_again(
    control_plane: ControlPlaneInfo, kube_admin: Any, namespace: str, tmp_path: Path
) -> None:
    """As a Pod's projected token: the kubelet replaces the file's token before the old one expires. The
    new one is used once the file is a minute old, and at once when the old one stops working (401)."""
    grant(kube_admin, namespace, "reader", READ_SECRETS)
    grant(kube_admin, namespace, "nobody", [])
    _secret(namespace, kube_admin, "node-a-ssh")
    hvh = HypervisorHost.model_validate(_create(kube_admin, namespace, HOSTS, host("node-a")))
    token_file, clock = tmp_path / "token", _Clock()
    token_file.write_text(_token(kube_admin, namespace, "nobody"))
    kube = _token_file_kube(control_plane, token_file, clock)
    try:
        with pytest.raises(hosts.HostConfigError, match="nobody"):
            await hosts.resolve(kube, namespace, hvh)
        token_file.write_text(_token(kube_admin, namespace, "reader"))
        clock.now += 30  # read half a minute ago: still the old token
        with pytest.raises(hosts.HostConfigError, match="nobody"):
            await hosts.resolve(kube, namespace, hvh)
        clock.now += 31
        assert (await hosts.resolve(kube, namespace, hvh)).password == "hunter2"

        # A token bound to an object stops working when the object goes (a projected token, its Pod).
        pod_stand_in = _secret(namespace, kube_admin, "pod-stand-in")
        token_file.write_text(_token(kube_admin, namespace, "reader", bound_to=pod_stand_in))
        clock.now += 61
        assert (await hosts.resolve(kube, namespace, hvh)).password == "hunter2"
        bound = token_file.read_text()
        client.CoreV1Api(kube_admin).delete_namespaced_secret("pod-stand-in", namespace)
        await _until_refused(control_plane, bound)
        token_file.write_text(_token(kube_admin, namespace, "reader"))  # the kubelet's next token
        assert (await hosts.resolve(kube, namespace, hvh)).password == "hunter2", "401, read again, retried"
        token_file.write_text("no-longer-a-token")
        clock.now += 61
        with pytest.raises(ApiError) as refused:
            await hosts.get_host(kube, namespace, "node-a")
        assert refused.value.status == 401
    finally:
        await kube.close()


async def _until_refused(control_plane: ControlPlaneInfo, token: str) -> None:
    """Until the API server refuses the token: it keeps a token's successful authentication for 10 s."""
    configuration = kubernetes.client.Configuration()
    configuration.host, configuration.ssl_ca_cert = control_plane.server, str(control_plane.ca_cert)
    configuration.api_key = {"BearerToken": f"Bearer {token}"}
    kube = Kube(configuration)
    try:
        for _ in range(300):
            try:
                await kube.request("GET", "/api/v1/namespaces/default/secrets/any")
            except ApiError as exc:
                if exc.status == 401:
                    return
            await asyncio.sleep(0.1)
        raise AssertionError("a token bound to a deleted object was still accepted after 30 s")
    finally:
        await kube.close()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A port that accepts connections and never answers (a hung API server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock


def _kube_at(address: str, timeout: float) -> Kube:
    configuration = kubernetes.client.Configuration()
    configuration.host = address
    return Kube(configuration, timeout=timeout)


async def test_an_api_server_that_refuses_or_never_answers_is_unavailable(listener: socket.socket) -> None:
    """Not a 404 nor a host's configuration error: the callers treat it as not known this pass."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    refusing = _kube_at(f"https://127.0.0.1:{port}", 5)
    hung = _kube_at(f"https://127.0.0.1:{listener.getsockname()[1]}", 0.5)
    try:
        with pytest.raises(ApiUnavailable, match="Cannot connect"):
            await hosts.get_host(refusing, "ns", "node-a")
        started = time.monotonic()
        with pytest.raises(ApiUnavailable, match=r"no answer within 0.5 s"):
            await hosts.get_host(hung, "ns", "node-a")
        assert time.monotonic() - started < 5, "the deadline ended the request"
    finally:
        await refusing.close()
        await hung.close()


async def test_a_status_write_needs_no_thread(admin: Kube, kube_admin: Any, namespace: str) -> None:
    """Every thread held (the loop's default executor, as libvirt calls once used, and a host's own):
    the status is written all the same."""
    _create(kube_admin, namespace, MIGRATIONS, migration("m1"))
    release = threading.Event()
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
    threads = HostThreads(f"{namespace}/frozen", size=1)
    held = [loop.run_in_executor(None, release.wait), asyncio.ensure_future(threads.run(release.wait, 30, "reading"))]
    try:
        await asyncio.wait_for(status.patch_migration_status(admin, namespace, "m1", MigrationStatus()), 10)
    finally:
        release.set()
        await asyncio.gather(*held)


def test_the_session_is_closed_and_a_closed_client_sends_nothing(control_plane: ControlPlaneInfo) -> None:
    """Closed, nothing is left for the garbage collector to find open (aiohttp would warn "Unclosed client
    session"); a request after `close` is refused rather than opening a session that nobody closes."""

    async def scenario() -> None:
        kube = Kube.from_environment(str(control_plane.kubeconfig))
        assert await hosts.list_hosts(kube, "default") == []
        await kube.close()
        with pytest.raises(ApiUnavailable, match="closed"):
            await hosts.list_hosts(kube, "default")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(scenario())
        gc.collect()
    assert [str(w.message) for w in caught if "nclosed" in str(w.message)] == []


def test_the_operator_closes_its_session_when_it_stops(
    control_plane: ControlPlaneInfo, kube_admin: Any, namespace: str, tmp_path: Path
) -> None:
    """SIGTERM: kopf's cleanup handler closes the client's session in the loop, once every daemon ended."""
    operator = OperatorProcess(control_plane.kubeconfig, tmp_path / "operator.log", ["--namespace", namespace])
    operator.start()
    try:
        _create(kube_admin, namespace, HOSTS, host("node-a", credentialsSecretRef={"name": "absent"}))
        deadline = time.monotonic() + 60
        while not any(e.reason == "SecretNotFound" for e in _events(kube_admin, namespace)):
            assert time.monotonic() < deadline, f"no probe was written:\n{operator.tail()}"
            time.sleep(0.2)
    finally:
        operator.stop()
    assert operator.proc is not None and operator.proc.returncode == 0, operator.tail()
    log = operator.log.read_text()
    assert "Activity 'close_connections' succeeded" in log and "nclosed" not in log, operator.tail()
