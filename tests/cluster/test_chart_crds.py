"""kopf's peering CRDs come with the chart unless `peering.installCRDs: false` (another kopf operator's
installation owns them). Checked with real `helm install`s into a control plane of this test's own,
since CRDs are cluster-wide and other tests of the session install them."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.fixtures.chart import install
from tests.fixtures.controlplane import session_state_dir
from vemigrate_dev.controlplane import ControlPlane, ControlPlaneInfo
from vemigrate_dev.controlplane_accounts import api_client

PEERING = ("clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev")


@pytest.fixture
def own_control_plane(control_plane: ControlPlaneInfo) -> Iterator[ControlPlaneInfo]:
    """A second, empty control plane (the session's is up, so its binaries are built)."""
    plane = ControlPlane(session_state_dir("crds"))
    info = plane.ensure_up()
    yield info
    plane.down()
    shutil.rmtree(plane.state_dir, ignore_errors=True)


def _crds(api: Any) -> set[str]:
    names = set()
    for name in PEERING:
        try:
            client.ApiextensionsV1Api(api).read_custom_resource_definition(name)
            names.add(name)
        except ApiException as error:
            assert error.status == 404, error
    return names


def test_the_peering_crds_are_left_out_when_someone_else_owns_them(
    own_control_plane: ControlPlaneInfo, tmp_path: Path
) -> None:
    api = api_client(own_control_plane.kubeconfig)
    try:
        assert _crds(api) == set(), "a fresh control plane has no kopf CRDs"
        install(own_control_plane, api, "ops-a", {"peering": {"installCRDs": False}}, tmp_path, release="a")
        assert _crds(api) == set(), "peering.installCRDs: false installed them anyway"
        install(own_control_plane, api, "ops-b", {}, tmp_path, release="b")
        assert _crds(api) == set(PEERING), "the default installs both"
    finally:
        api.close()  # type: ignore[no-untyped-call]
