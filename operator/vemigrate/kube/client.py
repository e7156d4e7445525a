"""The kubernetes client, configured once, with blocking calls moved off the event loop."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any, TypeVar

import kubernetes
import yaml

T = TypeVar("T")

CALL_TIMEOUT = 30.0


class NoCredentials(Exception):
    """Neither a Pod's ServiceAccount nor a readable kubeconfig: the operator cannot reach any cluster."""


class Kube:
    """Thin async wrapper: every call runs in a thread under a deadline."""

    def __init__(self, api_client: Any) -> None:
        self.api_client = api_client
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
        return await asyncio.to_thread(fn, *args, **kwargs)


def not_found(exc: BaseException) -> bool:
    return isinstance(exc, kubernetes.client.ApiException) and exc.status == 404
