"""Containers through the operator: libvirt LXC containers on the lab hosts, published as `<host>-ct`
HypervisorHosts (lxc+ssh://). A stopped container moves offline, its private area copied and
verified, and the source is left as prlctl leaves it: private area and configuration renamed with
`.migrated`, not deleted. A running one cannot move live without Virtuozzo's /proc/vz/cpuid_override,
and the pre-flight check says so."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from tests.fixtures.operator import Migrations
from vemigrate_dev.controlplane import ControlPlaneInfo
from vemigrate_dev.lab import Lab, LabInfo
from vemigrate_dev.lab import kube as lab_kube
from vemigrate_dev.lab.ct import lxc_uri
from vemigrate_dev.lab.state import LabState


@pytest.fixture
def ct_hosts(lab: LabInfo, lxc: None, control_plane: ControlPlaneInfo, namespace: str) -> Iterator[LabInfo]:
    lab_kube.apply(lab, namespace, str(control_plane.kubeconfig), containers=True)
    yield lab
    state = LabState.load()
    assert state is not None
    for h in lab.hosts:  # every container the test made, and its files, wherever they ended up
        conn = libvirt.open(lxc_uri(state.host(h.name)))
        try:
            for dom in conn.listAllDomains(0):
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
        finally:
            conn.close()
        Lab.exec(h.name, ["sh", "-c", "rm -rf /var/lib/libvirt/ctmoved /var/lib/libvirt/images/private/* "
                          "/etc/libvirt/lxc/*.migrated"])  # fmt: skip


def _lxc(host: str) -> libvirt.virConnect:
    state = LabState.load()
    assert state is not None
    return libvirt.open(lxc_uri(state.host(host)))


def _tree(root: Path) -> dict[str, str]:
    """Every file's sha256 and every symlink's target under root, by relative path."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def test_stopped_container_moves_offline_and_the_source_is_renamed_migrated(
    ct_hosts: LabInfo, migrations: Migrations
) -> None:
    src, dst = ct_hosts.host("lab1"), ct_hosts.host("lab2")
    ct = Lab.create_ct("lab1", "ctoff1", running=True)  # runs once, so its root holds real state
    conn = _lxc("lab1")
    try:
        conn.lookupByName("ctoff1").destroy()
    finally:
        conn.close()
    area = src.path(ct.private)
    (area / "root" / "payload").write_bytes(os.urandom(3 * 1024 * 1024))
    before = _tree(area)

    target_path = "/var/lib/libvirt/ctmoved"
    spec = {"source": {"host": "lab1-ct", "name": "ctoff1"}, "target": {"host": "lab2-ct", "path": target_path}}
    migrations.create("ctoff1", spec)
    status = migrations.wait_phase("ctoff1", "Succeeded", "Failed", timeout=300)["status"]
    assert status["phase"] == "Succeeded", status
    assert status["mode"] == "Offline"
    assert status["result"]["sourceDisposition"] == "RenamedMigrated"
    assert status["result"]["targetUUID"] == ct.uuid

    # The target: defined with its private area at <path>/<UUID>, every file identical.
    moved = f"{target_path}/{ct.uuid}"
    conn = _lxc("lab2")
    try:
        target = conn.lookupByName("ctoff1")
        assert f"<source dir='{moved}'/>" in target.XMLDesc(0)
        assert _tree(dst.path(moved)) == before, "the private area arrived file for file"
        assert not dst.path(f"{moved}.vemigrate-{migrations.get('ctoff1')['metadata']['uid']}").exists()
        # And it runs there: its init appends heartbeats to the moved root.
        beat = dst.path(moved) / "var/log/heartbeat"
        copied = beat.read_text().count("HB ")
        target.create()
        deadline = time.monotonic() + 30
        while beat.read_text().count("HB ") < copied + 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert beat.read_text().count("HB ") >= copied + 2, "the moved container runs and writes its heartbeat"
    finally:
        conn.close()

    # The source, as prlctl leaves it: nothing deleted, everything renamed .migrated.
    conn = _lxc("lab1")
    try:
        with pytest.raises(libvirt.libvirtError):
            conn.lookupByName("ctoff1")
    finally:
        conn.close()
    assert not area.exists()
    assert _tree(src.path(f"{ct.private}.migrated")) == before
    config = src.path("/etc/libvirt/lxc/ctoff1.xml.migrated").read_text()
    assert ct.uuid in config and ct.private in config


def test_running_container_cannot_go_live_without_cpuid_override(ct_hosts: LabInfo, migrations: Migrations) -> None:
    Lab.create_ct("lab1", "ctlive1", running=True)
    migrations.create("ctlive1", {"source": {"host": "lab1-ct", "name": "ctlive1"}, "target": {"host": "lab2-ct"}})
    status = migrations.wait_phase("ctlive1", "Failed", "Succeeded", timeout=120)["status"]
    assert status["phase"] == "Failed" and status["mode"] == "Live"
    assert status["failure"]["reason"] == "PreflightFailed"
    failed = {c["name"]: c["message"] for c in status["checks"] if c["result"] == "Failed"}
    assert "/proc/vz/cpuid_override" in failed["CpuidOverride"], failed
    conn = _lxc("lab1")
    try:
        assert conn.lookupByName("ctlive1").isActive(), "the container keeps running where it was"
    finally:
        conn.close()
