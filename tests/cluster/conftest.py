"""Fixtures of the cluster tier: typed-enough handles on the real apiserver."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client


@pytest.fixture
def custom(kube_admin: Any) -> Any:
    """CustomObjectsApi as cluster-admin."""
    return client.CustomObjectsApi(kube_admin)
