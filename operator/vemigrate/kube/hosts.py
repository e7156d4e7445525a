"""HypervisorHost objects and their Secrets, resolved into HostAccess."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vemigrate.api import host as host_api
from vemigrate.api.common import GROUP, VERSION
from vemigrate.api.host import HostSpec, HypervisorHost
from vemigrate.api.reasons import Reason
from vemigrate.core.access import HostAccess
from vemigrate.kube.client import ApiError, Kube, not_found, resource_path


class HostConfigError(Exception):
    """The HypervisorHost cannot be used as configured (missing Secret or key). Waiting will not help."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _hosts_path(namespace: str, name: str = "") -> str:
    return resource_path(namespace, host_api.PLURAL, name, group=GROUP, version=VERSION)


async def get_host(kube: Kube, namespace: str, name: str) -> HypervisorHost | None:
    try:
        body = await kube.request("GET", _hosts_path(namespace, name))
    except ApiError as exc:
        if not_found(exc):
            return None
        raise
    return HypervisorHost.model_validate(body)


async def list_hosts(kube: Kube, namespace: str) -> list[HypervisorHost]:
    body = await kube.request("GET", _hosts_path(namespace))
    items: list[Any] = body.get("items") or []
    return [HypervisorHost.model_validate(item) for item in items]


async def _secret_data(kube: Kube, namespace: str, host: str, secret: str) -> dict[str, str | bytes]:
    """The Secret's data, still base64: only the key a host names is decoded (`_pick`). A Secret not
    marked for HypervisorHosts is refused before anything in it is used: a HypervisorHost's author
    may name any Secret of the namespace, including ones they cannot read themselves."""
    try:
        body = await kube.request("GET", resource_path(namespace, "secrets", secret))
    except ApiError as exc:
        if not_found(exc):
            raise HostConfigError(
                Reason.SECRET_NOT_FOUND, f"HypervisorHost {host!r} refers to Secret {secret!r}, which does not exist"
            ) from exc
        if exc.status == 403:
            raise HostConfigError(
                Reason.SECRET_FORBIDDEN,
                f"the operator may not read Secret {secret!r} (RBAC) used by HypervisorHost {host!r}: {exc.message}",
            ) from exc
        raise
    labels = (body.get("metadata") or {}).get("labels") or {}
    if labels.get(host_api.SECRET_MARK_LABEL) != host_api.SECRET_MARK_VALUE:
        mark = f"{host_api.SECRET_MARK_LABEL}={host_api.SECRET_MARK_VALUE}"
        raise HostConfigError(
            Reason.SECRET_NOT_MARKED,
            f"Secret {namespace}/{secret}, named by HypervisorHost {host!r}, is not marked for use by "
            f"HypervisorHosts: add the label {mark} to it (kubectl -n {namespace} label secret {secret} {mark})",
        )
    return dict(body.get("data") or {})


def _pick(
    data: dict[str, str | bytes], namespace: str, host: str, secret: str, keys: tuple[str, ...]
) -> tuple[str, str]:
    for key in keys:
        if key in data:
            try:
                return key, base64.b64decode(data[key]).decode()
            except ValueError:  # not base64 or not UTF-8; the error would quote the bytes
                raise HostConfigError(
                    Reason.SECRET_NOT_TEXT,
                    f"Secret {namespace}/{secret} key {key} (HypervisorHost {host!r}) is not text",
                ) from None
    have = ", ".join(sorted(data)) or "none"
    wanted = " or ".join(repr(k) for k in keys)
    raise HostConfigError(
        Reason.SECRET_KEY_MISSING, f"Secret {secret!r} of HypervisorHost {host!r} has no key {wanted} (it has: {have})"
    )


def _host_key_line(spec: HostSpec) -> str:
    assert spec.host_key is not None
    where = spec.address if spec.port == 22 else f"[{spec.address}]:{spec.port}"
    return f"{where} {spec.host_key.strip()}\n"


async def resolve(kube: Kube, namespace: str, hvh: HypervisorHost) -> HostAccess:
    """The host's spec with its credentials and known hosts read from its Secrets."""
    spec = hvh.spec
    name = str(hvh.metadata.get("name", ""))
    cred = spec.credentials_secret_ref
    data = await _secret_data(kube, namespace, name, cred.name)
    # An explicit key names the one to use; otherwise a private key wins over a password.
    wanted = (cred.key,) if cred.key else (host_api.PRIVATE_KEY_KEY, host_api.PASSWORD_KEY)
    key, value = _pick(data, namespace, name, cred.name, wanted)
    private_key, password = (None, value) if key == host_api.PASSWORD_KEY else (value, None)
    known = ""
    # Where the text came from, for messages that must not quote it (drivers/ssh.py).
    known_origin = []
    if spec.known_hosts_secret_ref is not None:
        ref = spec.known_hosts_secret_ref
        known_data = await _secret_data(kube, namespace, name, ref.name)
        known_key, known = _pick(known_data, namespace, name, ref.name, (ref.key or host_api.KNOWN_HOSTS_KEY,))
        known_origin.append(f"Secret {namespace}/{ref.name} key {known_key}")
    if spec.host_key:
        known += _host_key_line(spec)
        known_origin.append("spec.hostKey")
    metadata: dict[str, Any] = hvh.metadata
    return HostAccess(
        name=name,
        namespace=namespace,
        address=spec.address,
        port=spec.port,
        user=spec.user,
        driver=spec.driver.value,
        private_key=private_key,
        password=password,
        known_hosts=known,
        credentials_origin=f"Secret {namespace}/{cred.name} key {key}",
        known_hosts_origin=" with ".join(known_origin),
        libvirt_uri=spec.libvirt_uri,
        migration_address=spec.migration_address,
        max_inbound=spec.max_inbound,
        max_outbound=spec.max_outbound,
        # Spec changes bump the generation; status writes (every probe) do not, and must not renew
        # connections.
        version=f"{metadata.get('generation', '')}/{hash((private_key, password, known))}",
    )


@dataclass
class AccessCache:
    """Each host's access as last resolved, so that a migration's passes do not read the host's Secrets
    again every few seconds. An entry is used while the host's spec is the one it was read for and for at
    most `ttl` seconds; every host probe reads the Secrets afresh and stores what it read, so a rotated
    Secret is used from the next probe on. A host whose connection fails on its credentials or host keys
    is forgotten (`forget`): the next pass reads them again rather than trusting what may be stale."""

    ttl: float = 60.0
    clock: Callable[[], float] = time.monotonic
    _entries: dict[tuple[str, str], tuple[tuple[str, int], float, HostAccess]] = field(default_factory=dict)

    @staticmethod
    def _key(hvh: HypervisorHost) -> tuple[str, int]:
        # A recreated host has a new UID; a spec change a new generation. Status writes change neither.
        return str(hvh.metadata.get("uid", "")), int(hvh.metadata.get("generation") or 0)

    def cached(self, namespace: str, hvh: HypervisorHost) -> HostAccess | None:
        entry = self._entries.get((namespace, str(hvh.metadata.get("name", ""))))
        if entry is None:
            return None
        key, read_at, access = entry
        if key != self._key(hvh) or self.clock() - read_at > self.ttl:
            return None
        return access

    async def resolve(self, kube: Kube, namespace: str, hvh: HypervisorHost, *, fresh: bool = False) -> HostAccess:
        """The cached access when it is still current (and `fresh` is not asked), else the Secrets read now."""
        access = None if fresh else self.cached(namespace, hvh)
        if access is None:
            name = str(hvh.metadata.get("name", ""))
            self._entries.pop((namespace, name), None)  # a read that fails leaves nothing behind
            access = await resolve(kube, namespace, hvh)
            self._entries[(namespace, name)] = (self._key(hvh), self.clock(), access)
        return access

    def forget(self, namespace: str, name: str) -> None:
        self._entries.pop((namespace, name), None)
