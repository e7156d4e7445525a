"""Test tiers are markers, applied by directory: tests/unit (pure), tests/cluster (real apiserver),
tests/lab (real lab hosts), tests/faults (faults injected on the lab hosts), tests/image (the
operator's image built by `make image` and run by runc). Fixtures for the real
parts live in tests/fixtures/."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = [
    "tests.fixtures.controlplane",
    "tests.fixtures.node",
    "tests.fixtures.lab",
    "tests.fixtures.operator",
    "tests.fixtures.prometheus",
    "tests.fixtures.argocd_server",
]

# Directory -> markers. The fault suite runs on the lab hosts, so it is part of the lab tier too.
_TIERS = {
    "unit": ("unit",),
    "cluster": ("cluster",),
    "lab": ("lab",),
    "faults": ("lab", "faults"),
    "image": ("image",),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for directory, markers in _TIERS.items():
            if directory in parts:
                for marker in markers:
                    item.add_marker(getattr(pytest.mark, marker))
