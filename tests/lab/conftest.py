"""Helpers for the lab tier. libvirt prints every error to stderr before raising it; the tests read
the exceptions instead."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import libvirt
import pytest

from vemigrate_dev.controlplane import ControlPlaneInfo
from vemigrate_dev.lab import Lab, LabInfo
from vemigrate_dev.lab import kube as lab_kube
from vemigrate_dev.lab.ct import lxc_driver_installed
from vemigrate_dev.lab.host import ensure_prlctl_standin


def _quiet(_ctx: Any, _err: Any) -> None:
    return None


libvirt.registerErrorHandler(_quiet, None)


@pytest.fixture
def vm_cleanup(lab: LabInfo) -> Iterator[Callable[[str], str]]:
    """Register VM names; after the test they are removed from every lab host (with their disks),
    pass or fail, so the shared session lab stays clean for the tests after it."""
    names: list[str] = []

    def register(name: str) -> str:
        names.append(name)
        return name

    yield register
    info = Lab.info()
    for h in info.hosts if info else []:
        for name in names:
            Lab.remove_vm(h.name, name)


@pytest.fixture(autouse=True)
def no_guest_outlives_its_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """A guest left behind keeps burning CPU under TCG and starves every later test's guests (two
    cores): remove whatever VM a test left on a lab host, and say so in the summary."""
    yield
    info = Lab.info()
    for h in info.hosts if info else []:
        try:
            conn = h.connect()
        except libvirt.libvirtError:
            continue  # the host is down: a fault test's business
        try:
            left = [d.name() for d in conn.listAllDomains()]
        finally:
            conn.close()
        for name in left:
            Lab.remove_vm(h.name, name)
        if left:
            warnings.warn(f"{request.node.nodeid} left VMs {left} on {h.name}; removed", stacklevel=1)


@pytest.fixture
def lxc() -> None:
    """Containers need libvirt's LXC driver: skip without it (fail under CI, which installs it)."""
    if lxc_driver_installed():
        return
    reason = "libvirt's LXC driver is not installed (package libvirt-daemon-driver-lxc; run tools/setup.sh)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def hosts(lab: LabInfo, control_plane: ControlPlaneInfo, namespace: str) -> LabInfo:
    """The lab's HypervisorHosts and Secrets in this test's namespace, for the operator's tests."""
    lab_kube.apply(lab, namespace, str(control_plane.kubeconfig))
    return lab


@pytest.fixture
def vz(lab: LabInfo, control_plane: ControlPlaneInfo, namespace: str) -> LabInfo:
    """Every lab host with the stand-in on its PATH, published as <host>-vz with driver prlctl."""
    for h in lab.hosts:
        ensure_prlctl_standin(h.dir, h.holder_pid)
    lab_kube.apply(lab, namespace, str(control_plane.kubeconfig), prlctl=True)
    return lab
