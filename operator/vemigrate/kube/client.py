"""The kubernetes client, configured once, with blocking calls moved off the event loop onto threads of
its own: never the ones hosts' calls use, so a host that does not answer cannot hold up a status write."""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import kubernetes
import yaml

T = TypeVar("T")

CALL_TIMEOUT = 30.0
# API calls at once: every call ends by its request timeout, so these threads are never held for long.
KUBE_THREADS = 8


class NoCredentials(Exception):
    """Neither a Pod's ServiceAccount nor a readable kubeconfig: the operator cannot reach any cluster."""


class Kube:
    """Thin async wrapper: every call runs in one of the client's own threads under a deadline."""

    def __init__(self, api_client: Any) -> None:
        self.api_client = api_client
        self._threads = ThreadPoolExecutor(max_workers=KUBE_THREADS, thread_name_prefix="kube")
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.custom = kubernetes.client.CustomObjectsApi(api_client)

    @classmethod
    def from_environment(cls, kubeconfig: str | None = None) -> Kube:
        """In a Pod: the ServiceAccount; elsewhere: the kubeconfig (KUBECONFIG or ~/.kube/config)."""
        configuration = kubernetes.client.Configuration()
        try:
            kubernetes.config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
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
        return cls(kubernetes.client.ApiClient(configuration))

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        kwargs.setdefault("_request_timeout", CALL_TIMEOUT)
        return await asyncio.get_running_loop().run_in_executor(self._threads, functools.partial(fn, *args, **kwargs))


def not_found(exc: BaseException) -> bool:
    return isinstance(exc, kubernetes.client.ApiException) and exc.status == 404
