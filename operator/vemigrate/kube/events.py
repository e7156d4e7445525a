"""Kubernetes Events on migrations and hosts, so `kubectl describe` tells the story."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from vemigrate.api.migration import Phase
from vemigrate.api.reasons import Reason
from vemigrate.kube.client import ApiError, Kube, resource_path

COMPONENT = "vemigrate"
log = logging.getLogger(__name__)


async def emit(kube: Kube, body: Mapping[str, Any], type_: str, reason: Reason | Phase, message: str) -> None:
    """Post one Event about `body`. Failing to post is logged, never fatal: Events are best effort."""
    meta = body.get("metadata", {})
    namespace = str(meta.get("namespace") or "default")
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta.get('name', 'vemigrate')}.", "namespace": namespace},
        "involvedObject": {
            "apiVersion": body.get("apiVersion"),
            "kind": body.get("kind"),
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": COMPONENT,
    }
    try:
        await kube.request("POST", resource_path(namespace, "events"), event)
    except ApiError as exc:
        # The API's own message says why (RBAC, or a namespace being deleted).
        log.warning("could not post Event %s for %s/%s: %s", reason, namespace, meta.get("name"), exc.message)
