"""Kubernetes Events on migrations and hosts, so `kubectl describe` tells the story."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kubernetes

from vemigrate.api.migration import Phase
from vemigrate.api.reasons import Reason
from vemigrate.kube.client import Kube

COMPONENT = "vemigrate"
log = logging.getLogger(__name__)


async def emit(kube: Kube, body: Mapping[str, Any], type_: str, reason: Reason | Phase, message: str) -> None:
    """Post one Event about `body`. Failing to post is logged, never fatal: Events are best effort."""
    meta = body.get("metadata", {})
    now = datetime.now(UTC)
    event = kubernetes.client.CoreV1Event(
        metadata=kubernetes.client.V1ObjectMeta(
            generate_name=f"{meta.get('name', 'vemigrate')}.", namespace=meta.get("namespace")
        ),
        involved_object=kubernetes.client.V1ObjectReference(
            api_version=body.get("apiVersion"),
            kind=body.get("kind"),
            name=meta.get("name"),
            namespace=meta.get("namespace"),
            uid=meta.get("uid"),
            resource_version=meta.get("resourceVersion"),
        ),
        type=type_,
        reason=reason,
        message=message[:1024],
        first_timestamp=now,
        last_timestamp=now,
        count=1,
        source=kubernetes.client.V1EventSource(component=COMPONENT),
        reporting_component=COMPONENT,
        reporting_instance=COMPONENT,
    )
    try:
        await kube.call(kube.core.create_namespaced_event, meta.get("namespace"), event)
    except kubernetes.client.ApiException as exc:
        detail = exc.reason  # the API's own message says why (RBAC, or a namespace being deleted)
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            detail = json.loads(exc.body or "{}").get("message") or detail
        log.warning("could not post Event %s for %s/%s: %s", reason, meta.get("namespace"), meta.get("name"), detail)
