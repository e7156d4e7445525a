"""Writing status: the status subresource only, through one writer per object."""

from __future__ import annotations

from typing import Any

from vemigrate.api import host as host_api
from vemigrate.api import migration as migration_api
from vemigrate.api.common import GROUP, VERSION, Model
from vemigrate.kube.client import Kube


def wire(status: Model) -> dict[str, Any]:
    """The whole status as a merge patch: unset fields are sent as null, so the server drops stale ones."""
    return status.model_dump(mode="json", by_alias=True)


async def patch_migration_status(kube: Kube, namespace: str, name: str, status: migration_api.MigrationStatus) -> None:
    await kube.call(
        kube.custom.patch_namespaced_custom_object_status,
        GROUP,
        VERSION,
        namespace,
        migration_api.PLURAL,
        name,
        {"status": wire(status)},
    )


async def patch_host_status(kube: Kube, namespace: str, name: str, status: host_api.HostStatus) -> None:
    await kube.call(
        kube.custom.patch_namespaced_custom_object_status,
        GROUP,
        VERSION,
        namespace,
        host_api.PLURAL,
        name,
        {"status": wire(status)},
    )
