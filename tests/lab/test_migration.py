"""Migrations between lab hosts with plain libvirt-python: a running guest live with its local disk,
and a stopped guest's definition plus disk copy. No operator involved."""

from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path

import libvirt
import pytest

from vemigrate.devenv.lab import Heartbeats, Lab, LabHost, LabInfo, VMState
from vemigrate.devenv.lab.guest import DISK_EVERY, PAYLOAD_OFFSET, PAYLOAD_SIZE

LIVE_FLAGS = (
    libvirt.VIR_MIGRATE_LIVE
    | libvirt.VIR_MIGRATE_PEER2PEER
    | libvirt.VIR_MIGRATE_PERSIST_DEST
    | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    | libvirt.VIR_MIGRATE_NON_SHARED_DISK
)


def _wait(what: str, predicate: object, timeout: float) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _beats(h: LabHost, name: str) -> Heartbeats:
    log = h.serial_log(name)
    return Heartbeats.parse(log.read_text(errors="replace") if log.exists() else "")


def _disk_bytes(h: LabHost, inside: str, tmp_path: Path) -> bytes:
    raw = tmp_path / f"{h.name}.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(h.path(inside)), str(raw)], check=True)
    return raw.read_bytes()


def test_live_migration_with_local_disk_keeps_the_guest_running(lab: LabInfo, tmp_path: Path) -> None:
    src, dst = lab.hosts[0], lab.hosts[1]
    vm = Lab.create_vm(src.name, "live1", memory_mib=256, disk_mib=64, dirty_mib=4)
    _wait("first disk check on the source", lambda: _beats(src, "live1").disk_md5s, 60)
    before = _beats(src, "live1")
    assert before.disk_md5s[0] == vm.payload_md5
    boot_id = before.boots[-1]

    sconn, dconn = libvirt.open(src.uri), libvirt.open(dst.uri)
    try:
        dom = sconn.lookupByName("live1")
        # lab3's guest bridge has another name: libvirt refuses, and the guest runs on where it was.
        odd = lab.host("lab3")
        with pytest.raises(libvirt.libvirtError, match=src.guest_bridge):
            dom.migrateToURI3(odd.ssh_uri, {}, LIVE_FLAGS)
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        oconn = libvirt.open(odd.uri)
        assert "live1" not in [d.name() for d in oconn.listAllDomains()]
        oconn.close()

        start = time.monotonic()
        dom.migrateToURI3(dst.ssh_uri, {libvirt.VIR_MIGRATE_PARAM_BANDWIDTH: 1000}, LIVE_FLAGS)
        wall = time.monotonic() - start
        last_on_source = _beats(src, "live1").beats[-1]

        assert "live1" not in [d.name() for d in sconn.listAllDomains()]  # source undefined
        moved = dconn.lookupByName("live1")
        assert moved.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert moved.isPersistent()
        stats = moved.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
        print(f"live migration ({lab.accel}): {wall:.2f} s wall, downtime {stats.get('downtime')} ms")
        assert 0 < stats["downtime"] < 5000

        # The same boot keeps counting on the target: no reboot, no gap beyond the switchover.
        _wait("heartbeats on the target", lambda: len(_beats(dst, "live1").beats) >= 3, 30)
        after = _beats(dst, "live1")
        assert after.boots == []  # no boot line on the target: it never booted there
        assert {b for b, _ in after.beats} == {boot_id}
        assert after.beats[0][1] <= last_on_source[1] + 3
        assert after.beats[0][1] >= last_on_source[1]
        counters = [n for _, n in after.beats]
        assert counters == sorted(counters)

        # The guest re-reads its disk (caches dropped) on the target: the payload arrived intact.
        _wait("a disk check on the target", lambda: _beats(dst, "live1").disk_md5s, DISK_EVERY * 6 + 30)
        assert _beats(dst, "live1").disk_md5s == [vm.payload_md5]

        moved.destroy()
        disk = _disk_bytes(dst, vm.disk, tmp_path)
        assert hashlib.md5(disk[PAYLOAD_OFFSET : PAYLOAD_OFFSET + PAYLOAD_SIZE]).hexdigest() == vm.payload_md5
        assert disk[:512].startswith(f"HB boot={boot_id} n=".encode())
        moved.undefine()
    finally:
        sconn.close()
        dconn.close()


def _copy_volume(sconn: libvirt.virConnect, dconn: libvirt.virConnect, name: str) -> None:
    """Stream a stopped VM's disk file from one host's pool to the other's, byte for byte."""
    svol = sconn.storagePoolLookupByName("default").storageVolLookupByName(name)
    down = sconn.newStream(0)
    svol.download(down, 0, 0, 0)
    chunks = []
    while True:
        chunk = down.recv(1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    down.finish()
    data = b"".join(chunks)
    dpool = dconn.storagePoolLookupByName("default")
    dvol = dpool.createXML(
        f"<volume><name>{name}</name><capacity unit='bytes'>{len(data)}</capacity>"
        "<target><format type='raw'/></target></volume>",
        0,
    )
    up = dconn.newStream(0)
    dvol.upload(up, 0, len(data), 0)
    for i in range(0, len(data), 1 << 20):
        up.send(data[i : i + (1 << 20)])
    up.finish()
    dpool.refresh(0)


def test_offline_migration_copies_a_stopped_guest_disk_intact(lab: LabInfo) -> None:
    src, dst = lab.hosts[0], lab.hosts[1]
    vm = Lab.create_vm(src.name, "cold1", state=VMState.STOPPED, dirty_mib=0)
    sconn, dconn = libvirt.open(src.uri), libvirt.open(dst.uri)
    try:
        _copy_volume(sconn, dconn, "cold1.qcow2")
        sdigest = hashlib.sha256(src.path(vm.disk).read_bytes()).hexdigest()
        ddigest = hashlib.sha256(dst.path(vm.disk).read_bytes()).hexdigest()
        assert sdigest == ddigest

        # VIR_MIGRATE_OFFLINE moves only the definition (the disk went above).
        dom = sconn.lookupByName("cold1")
        dom.migrateToURI3(
            dst.ssh_uri,
            {},
            libvirt.VIR_MIGRATE_OFFLINE
            | libvirt.VIR_MIGRATE_PEER2PEER
            | libvirt.VIR_MIGRATE_PERSIST_DEST
            | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE,
        )
        assert "cold1" not in [d.name() for d in sconn.listAllDomains()]
        moved = dconn.lookupByName("cold1")
        assert moved.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF
        assert moved.UUIDString() == vm.uuid

        # And it boots there and finds its data.
        moved.create()
        _wait("the copied guest's disk check", lambda: _beats(dst, "cold1").disk_md5s, 90)
        assert _beats(dst, "cold1").disk_md5s[0] == vm.payload_md5
        moved.destroy()
        moved.undefine()
    finally:
        sconn.close()
        dconn.close()


def test_suspended_snapshot_and_linked_clone_shapes(lab: LabInfo) -> None:
    """The shapes the pre-flight checks look for: a managed-save image, a snapshot, a backing file."""
    h = lab.hosts[0]
    Lab.create_vm(h.name, "base1", state=VMState.STOPPED, dirty_mib=0)
    Lab.snapshot(h.name, "base1", "before-upgrade")
    clone = Lab.linked_clone(h.name, "base1", "clone1")
    conn = libvirt.open(h.uri)
    try:
        assert conn.lookupByName("base1").snapshotListNames(0) == ["before-upgrade"]
        info = subprocess.run(
            ["qemu-img", "info", "--force-share", str(h.path(clone.disk))],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "backing file: /var/lib/libvirt/images/base1.qcow2" in info
    finally:
        conn.close()
