"""The operator's own API client: asyncio over aiohttp, on the event loop (no threads, so nothing it does
waits behind a host's blocking calls), one session for the process, every request under a deadline.
Credentials are loaded as client-go does: the Pod's ServiceAccount, else a kubeconfig."""

from __future__ import annotations

import json
import math
import os
import ssl
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import kubernetes
import yaml
from kubernetes.config.incluster_config import SERVICE_TOKEN_FILENAME
from yarl import URL

CALL_TIMEOUT = 30.0
# A projected ServiceAccount token is rotated by the kubelet in place: its file is read again this often
# (client-go's cached file token source does the same), and at once when the API server answers 401.
TOKEN_REREAD_SECONDS = 60.0
# Requests in flight at once. Each holds a connection of its own (HTTP/1.1); more would only queue at the
# API server's own limits.
CONNECTIONS = 16
MERGE_PATCH = "application/merge-patch+json"


class NoCredentials(Exception):
    """Neither a Pod's ServiceAccount nor a readable kubeconfig: the operator cannot reach any cluster."""


class ApiError(Exception):
    """The API server answered with an error. `message` is its own (a Status' message) when it gave one:
    it says why (RBAC, a namespace being deleted), which a bare status code does not."""

    def __init__(self, status: int, reason: str, message: str, request: str) -> None:
        super().__init__(f"{request}: {status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class ApiUnavailable(Exception):
    """No answer: the API server could not be reached, or did not answer within the request's deadline."""


def resource_path(
    namespace: str, plural: str, name: str = "", *, group: str = "", version: str = "v1", subresource: str = ""
) -> str:
    """A namespaced resource's path: the core group's (`/api/v1/...`) without `group`. Every part is
    quoted: names come from objects' specs, and one holding "/" or ".." must not reach another path."""
    parts = ["apis", group, version] if group else ["api", version]
    parts += ["namespaces", namespace, plural, name, subresource] if name else ["namespaces", namespace, plural]
    return "/" + "/".join(_segment(part) for part in parts if part)


def _segment(part: str) -> str:
    # "." and ".." are left as they are by quoting, and would be resolved as a path's dot segments.
    return part.replace(".", "%2E") if part.strip(".") == "" else quote(part, safe="")


def not_found(exc: BaseException) -> bool:
    return isinstance(exc, ApiError) and exc.status == 404


class Kube:
    """The API client. Its aiohttp session is opened by the first request, inside the running loop, and
    closed by `close` (the operator's cleanup handler)."""

    def __init__(
        self,
        configuration: kubernetes.client.Configuration,
        *,
        token_file: str | None = None,
        timeout: float = CALL_TIMEOUT,
        token_reread_seconds: float = TOKEN_REREAD_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # What the credentials were loaded into; kopf's login reads the same (handlers.login): one identity.
        self.configuration = configuration
        self.timeout = timeout
        self._token_file = token_file
        self._token_reread = token_reread_seconds
        self._clock = clock
        self._token: str | None = None
        self._token_read_at = -math.inf
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        # A kubeconfig's tls-server-name: the name the certificate is checked against, if not the host's.
        self._server_name: str | None = configuration.tls_server_name or None

    @classmethod
    def from_environment(cls, kubeconfig: str | None = None) -> Kube:
        """In a Pod: the ServiceAccount; elsewhere: the kubeconfig (KUBECONFIG or ~/.kube/config)."""
        configuration = kubernetes.client.Configuration()
        try:
            # The token file is ours to re-read (`_authorization`), not the loader's.
            kubernetes.config.load_incluster_config(client_configuration=configuration, try_refresh_token=False)  # type: ignore[no-untyped-call]
        except kubernetes.config.ConfigException as in_cluster:
            where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
            try:
                kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
                    config_file=kubeconfig, client_configuration=configuration
                )
            except (kubernetes.config.ConfigException, OSError, yaml.YAMLError) as error:
                # One line, not a traceback: say both places looked in and why each failed.
                reason = str(error).splitlines()[0] if str(error) else type(error).__name__
                raise NoCredentials(f"not in a Pod ({in_cluster}), and kubeconfig {where}: {reason}") from error
            return cls(configuration)
        return cls(configuration, token_file=SERVICE_TOKEN_FILENAME)

    def _authorization(self, *, reread: bool = False) -> str | None:
        """The Authorization header: the token file's current token when there is one, else the
        kubeconfig's token (its loader refreshes an expiring one), else none (client certificates)."""
        if self._token_file is not None:
            now = self._clock()
            if reread or self._token is None or now - self._token_read_at >= self._token_reread:
                self._token = Path(self._token_file).read_text().strip()  # a few bytes, once a minute
                self._token_read_at = now
            return f"Bearer {self._token}"
        bearer = self.configuration.auth_settings().get("BearerToken")
        return str(bearer["value"]) if bearer and bearer.get("value") else None

    def _ssl(self) -> ssl.SSLContext:
        cfg = self.configuration
        context = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
        if cfg.cert_file:
            context.load_cert_chain(cfg.cert_file, cfg.key_file)
        if not cfg.verify_ssl:  # insecure-skip-tls-verify
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _open(self) -> aiohttp.ClientSession:
        if self._closed:
            raise ApiUnavailable("the API client is closed: the operator is stopping")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                base_url=self.configuration.host.rstrip("/") + "/",
                connector=aiohttp.TCPConnector(ssl=self._ssl(), limit=CONNECTIONS),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"Accept": "application/json", "User-Agent": "vemigrate"},
            )
        return self._session

    async def close(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        """One request; its answer's JSON. An error answer raises ApiError, none (refused, timed out)
        ApiUnavailable. A 401 with a token file is tried once more with the file read again."""
        session = self._open()
        data = None if body is None else json.dumps(body)
        what = f"{method} {path}"
        url = URL(path.lstrip("/"), encoded=True)  # quoted already (`resource_path`), and kept as it is
        for attempt in (1, 2):
            headers = {"Content-Type": content_type} if data is not None else {}
            authorization = self._authorization(reread=attempt == 2)
            if authorization:
                headers["Authorization"] = authorization
            try:
                async with session.request(
                    method, url, data=data, headers=headers, server_hostname=self._server_name
                ) as response:
                    text = await response.text()
                    if response.status == 401 and attempt == 1 and self._token_file is not None:
                        continue  # the token may have been rotated since it was read
                    if response.status >= 400:
                        raise ApiError(response.status, response.reason or "", _message(text, response.reason), what)
                    answer: dict[str, Any] = json.loads(text) if text else {}
                    return answer
            except TimeoutError:
                raise ApiUnavailable(f"{what}: no answer within {self.timeout:g} s") from None
            except aiohttp.ClientError as exc:
                raise ApiUnavailable(f"{what}: {exc}") from exc
        raise AssertionError("unreachable: the second attempt returns or raises")


def _message(text: str, fallback: str | None) -> str:
    """The API server's own explanation (a Status object's `message`), else the answer's first line."""
    try:
        said = json.loads(text).get("message")
    except (ValueError, AttributeError):
        said = None
    return str(said or (text.strip().splitlines() or [fallback or ""])[0][:500])
