"""Test tiers are markers, applied by directory: tests/unit (pure), tests/cluster (real apiserver),
tests/lab (real lab hosts). Fixtures for the real parts live in tests/fixtures/."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = [
    "tests.fixtures.controlplane",
    "tests.fixtures.lab",
    "tests.fixtures.operator",
    "tests.fixtures.prometheus",
]

_TIERS = ("unit", "cluster", "lab")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for tier in _TIERS:
            if tier in parts:
                item.add_marker(getattr(pytest.mark, tier))
