"""Writing status: the status subresource only, through one writer per object."""

from __future__ import annotations

from typing import Any

from vemigrate.api import host as host_api
from vemigrate.api import migration as migration_api
from vemigrate.api.common import GROUP, VERSION, Model
from vemigrate.kube.client import MERGE_PATCH, Kube, resource_path


def wire(status: Model) -> dict[str, Any]:
    """The whole status as a merge patch: unset fields are sent as null, so the server drops stale ones."""
    return status.model_dump(mode="json", by_alias=True)


def _status_path(namespace: str, plural: str, name: str) -> str:
    return resource_path(namespace, plural, name, group=GROUP, version=VERSION, subresource="status")


async def patch_migration_status(kube: Kube, namespace: str, name: str, status: migration_api.MigrationStatus) -> None:
    await kube.request(
        "PATCH",
        _status_path(namespace, migration_api.PLURAL, name),
        {"status": wire(status)},
        content_type=MERGE_PATCH,
    )


async def patch_host_status(kube: Kube, namespace: str, name: str, status: host_api.HostStatus) -> None:
    await kube.request(
        "PATCH", _status_path(namespace, host_api.PLURAL, name), {"status": wire(status)}, content_type=MERGE_PATCH
    )
