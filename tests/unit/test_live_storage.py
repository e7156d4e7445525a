"""Where a live migration's disks go: with spec.target.path into <path>/<UUID>/<dev>.<format> under a
destination XML naming them, at the source's paths without it, and left in place when both hosts see
the same file (a probe file, run here with a local sh on a real file system)."""

from __future__ import annotations

import base64
import os
import re
import shlex
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from tests.unit.builders import driver_plan, spec, ve
from vemigrate.api.migration import Mode
from vemigrate.core.access import HostAccess
from vemigrate.drivers import hostjob
from vemigrate.drivers.errors import PermanentError
from vemigrate.drivers.libvirt.driver import _known_sharing
from vemigrate.drivers.libvirt.facts import METADATA_NS, _Disk
from vemigrate.drivers.libvirt.jobs import (
    _CREATE_DIR,
    _CREATE_DISKS,
    _LOOK,
    _SHARED_PROBE,
    _STATS_AND_FORGET,
    live_argv,
    live_script,
    live_target_disk,
    read_removed,
    read_shared_probe,
    remove_local,
    shared_probe,
)
from vemigrate.drivers.protocol import MigrationPlan

pytestmark = pytest.mark.unit

UUID = "3f1c2a9e-8d7b-4c1e-9a55-0e6f6d1b2c3d"
UID = "0b7c9f6e-1111-4222-8333-444455556666"
TARGET = HostAccess(name="node-b", namespace="ns", address="192.0.2.2", port=2222)
VDA = _Disk("vda", "/var/lib/libvirt/images/web1.qcow2", "qcow2")
VDB = _Disk("vdb", "/var/lib/libvirt/images/data/web1.raw", "raw")
DOMAIN = (
    f"<domain type='kvm'><name>web1</name><uuid>{UUID}</uuid><devices>"
    f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{VDA.path}' index='2'/>"
    "<target dev='vda' bus='virtio'/><alias name='virtio-disk0'/></disk>"
    f"<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{VDB.path}'/>"
    "<target dev='vdb' bus='virtio'/></disk>"
    "<disk type='file' device='cdrom'><target dev='hdc' bus='ide'/></disk>"
    "</devices></domain>"
)


def plan(**overrides: Any) -> MigrationPlan:
    v = ve(disk_paths=(VDA.path, VDB.path))
    source = HostAccess(name="node-a", namespace="ns", address="192.0.2.1")
    return driver_plan(UID, spec(**overrides), v, source, TARGET, mode=Mode.LIVE)


def _written(text: str, name: str) -> str:
    """The file a job script writes with `printf %s <base64> | base64 -d >name`."""
    match = re.search(rf"printf %s (\S+) \| base64 -d >{re.escape(name)}\n", text)
    assert match, f"the script writes no {name}"
    return base64.b64decode(match.group(1)).decode()


def _seen_on_target(text: str) -> list[str]:
    """The files the job's last command on the target looks for (after `_STATS_AND_FORGET`'s three)."""
    start = text.index(shlex.quote(shlex.join(["sh", "-c", _STATS_AND_FORGET]))[:-1])
    words = shlex.split(shlex.split(text[start:].partition(" 9>&-")[0])[0])
    return words[words.index(_STATS_AND_FORGET) + 5 :]


def _sources(xml: str) -> dict[str, str]:
    root = ET.fromstring(xml)
    return {
        str(d.find("target").get("dev")): str(d.find("source").get("file"))  # type: ignore[union-attr]
        for d in root.findall("./devices/disk[@device='disk']")
    }


def test_with_target_path_the_disks_land_in_path_uuid_by_device() -> None:
    p = plan(target={"host": "node-b", "path": "/srv/ves-live/"})
    directory = f"/srv/ves-live/{UUID}"
    assert live_target_disk(p, VDA).path == f"{directory}/vda.qcow2"
    assert live_target_disk(p, VDB).path == f"{directory}/vdb.raw"
    text = live_script(p, copy_disks=True, disks=[(VDA, 1 << 30), (VDB, 1 << 20)], xml=(DOMAIN, DOMAIN))
    record = f"{hostjob.job_dir(UID, 1)}/created"
    # The directory is made (and recorded) by the job before the disks; each disk is pre-created there.
    make_dir = shlex.join(["sh", "-c", _CREATE_DIR, "sh", record, directory, "dir"])
    created = [f"{directory}/vda.qcow2", "qcow2", str(1 << 30), f"{directory}/vdb.raw", "raw", str(1 << 20)]
    make_disks = shlex.join(["sh", "-c", _CREATE_DISKS, "sh", record, *created])
    assert text.index(shlex.quote(make_dir)) < text.index(shlex.quote(make_disks)) < text.index("virsh -c")
    for name in ("dest.xml", "persistent.xml"):
        xml = _written(text, name)
        assert _sources(xml) == {"vda": f"{directory}/vda.qcow2", "vdb": f"{directory}/vdb.raw"}
        root = ET.fromstring(xml)
        assert root.findtext("uuid") == UUID, "the same VM: its UUID stays"
        assert root.find(f"./metadata/{{{METADATA_NS}}}migration").get("uid") == UID  # type: ignore[union-attr]
        assert root.find("./devices/disk/alias") is not None, "nothing else of the live definition changes"
    migrate = next(line for line in text.splitlines() if " migrate --live" in line)
    words = shlex.split(migrate)
    assert words[words.index("--xml") + 1] == "dest.xml"
    assert words[words.index("--persistent-xml") + 1] == "persistent.xml"
    assert "--copy-storage-all" in words and "--migrate-disks" not in words and "--unsafe" not in words
    assert _seen_on_target(text) == [f"{directory}/vda.qcow2", f"{directory}/vdb.raw"], "the copies, where they land"


def test_without_target_path_live_keeps_the_source_paths() -> None:
    text = live_script(plan(), copy_disks=True, disks=[(VDA, 1 << 30)])
    assert "dest.xml" not in text and _CREATE_DIR not in text
    assert shlex.quote(VDA.path) in text or VDA.path in text
    assert live_target_disk(plan(), VDA) == VDA


def test_target_path_with_a_shared_disk_is_refused_before_anything_runs() -> None:
    with pytest.raises(PermanentError) as refused:
        live_script(
            plan(target={"host": "node-b", "path": "/srv/ves"}),
            copy_disks=True,
            disks=[(VDB, 1 << 20)],
            shared=["vda"],
            xml=(DOMAIN, DOMAIN),
        )
    assert refused.value.reason == "TargetPathOnSharedStorage" and "spec.target.path" in refused.value.message


def test_shared_disks_are_not_copied_and_mixed_copies_only_the_local_ones() -> None:
    only_shared = live_script(plan(), copy_disks=False, shared=["vda", "vdb"])
    assert _CREATE_DISKS not in only_shared
    words = shlex.split(next(line for line in only_shared.splitlines() if " migrate --live" in line))
    assert "--copy-storage-all" not in words and "--unsafe" in words and "--tunnelled" in words
    mixed = live_script(plan(), copy_disks=True, disks=[(VDB, 1 << 20)], shared=["vda"])
    words = shlex.split(next(line for line in mixed.splitlines() if " migrate --live" in line))
    assert words[words.index("--migrate-disks") + 1] == "vdb" and "--unsafe" in words
    assert VDA.path not in mixed, "nothing is made for the shared disk"
    assert _seen_on_target(mixed) == [VDB.path] and _seen_on_target(only_shared) == []
    assert live_argv(plan(), copy_disks=True)[-2] == UUID


def test_the_job_takes_the_checks_verdicts_only_when_they_cover_every_disk() -> None:
    probed = ve(disk_paths=(VDA.path, VDB.path), shared_disks=(VDB.path,))
    assert _known_sharing(probed, [VDA.path, VDB.path]) == {VDA.path: "local", VDB.path: "shared"}
    # Not probed (or a verdict unknown), or a disk the probe did not see: probed again at the job's start.
    assert _known_sharing(ve(disk_paths=(VDA.path, VDB.path)), [VDA.path]) is None
    assert _known_sharing(probed, [VDA.path, "/var/lib/libvirt/images/added.qcow2"]) is None


def _probe(look: str, *disks: Path) -> dict[str, str]:
    out = subprocess.run(
        ["sh", "-c", _SHARED_PROBE, "sh", look, *map(str, disks)], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    return read_shared_probe(out.stdout)


def test_the_probe_tells_shared_from_local_and_leaves_nothing_behind(tmp_path: Path) -> None:
    shared, local, readonly = tmp_path / "nfs", tmp_path / "local", tmp_path / "ro"
    for d in (shared, local, readonly):
        d.mkdir()
    disks = [shared / "a disk.qcow2", local / "b.qcow2", readonly / "c.qcow2"]
    for disk in disks:
        disk.write_bytes(b"guest data")
    readonly.chmod(0o555)
    # The "target" sees the shared directory only; a probe elsewhere is not there for it.
    look = shlex.join(["sh", "-c", f'grep -F -- {shlex.quote(str(shared))} | sh -c "$0"', _LOOK])
    try:
        verdicts = _probe(look, *disks)
    finally:
        readonly.chmod(0o755)
    # As root a read-only directory is still writable: then it is probed like any other.
    unprobed = "local" if os.geteuid() == 0 else "unknown"
    assert verdicts == {str(disks[0]): "shared", str(disks[1]): "local", str(disks[2]): unprobed}
    for disk in disks:
        assert [p.name for p in disk.parent.iterdir()] == [disk.name], "no probe file left"
    assert all(disk.read_bytes() == b"guest data" for disk in disks)


def test_a_target_that_does_not_answer_means_unknown_never_local(tmp_path: Path) -> None:
    disk = tmp_path / "a.qcow2"
    disk.write_bytes(b"x")
    assert _probe("false", disk) == {str(disk): "unknown"}
    assert [p.name for p in tmp_path.iterdir()] == ["a.qcow2"]


def test_a_probe_replaced_by_someone_else_is_not_removed(tmp_path: Path) -> None:
    """Between making the probe and removing it, the path came to hold another file: it stays."""
    disk = tmp_path / "a.qcow2"
    disk.write_bytes(b"x")
    swap = 'while read -r p; do rm -f -- "$p"; printf theirs >"$p"; done; exit 0'
    assert _probe(shlex.join(["sh", "-c", swap]), disk) == {str(disk): "local"}
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".vemigrate-probe")]
    assert len(left) == 1 and left[0].read_bytes() == b"theirs"


def _remove(look: str, *disks: Path) -> tuple[int, dict[str, str], set[str]]:
    """The source's disposal after a live copy: `_REMOVE_LOCAL` as `remove_local` builds it, with `look`."""
    argv = remove_local(TARGET, [str(d) for d in disks])
    argv[5] = look
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    return out.returncode, read_shared_probe(out.stdout), read_removed(out.stdout)


def _sees(directory: Path) -> str:
    """A look for a target that sees `directory` (storage both hosts share) and nothing else of the source."""
    return shlex.join(["sh", "-c", f'grep -F -- {shlex.quote(str(directory))} | sh -c "$0"', _LOOK])


def test_the_disposal_removes_the_local_disks_and_not_a_byte_of_the_shared_ones(tmp_path: Path) -> None:
    shared, local = tmp_path / "nfs", tmp_path / "local"
    shared.mkdir()
    local.mkdir()
    on_nfs, here = shared / "a disk.qcow2", local / "b.qcow2"
    on_nfs.write_bytes(b"the target runs from this")
    here.write_bytes(b"the stale source copy")
    rc, verdicts, removed = _remove(_sees(shared), on_nfs, here)
    assert rc == 0 and verdicts == {str(on_nfs): "shared", str(here): "local"} and removed == {str(here)}
    assert on_nfs.read_bytes() == b"the target runs from this"
    assert not here.exists()
    assert [p.name for p in shared.iterdir()] == [on_nfs.name] and list(local.iterdir()) == [], "no probe left"


@pytest.mark.parametrize("why", ["the target does not answer", "one disk cannot be probed"])
def test_one_unknown_verdict_and_the_disposal_removes_nothing(tmp_path: Path, why: str) -> None:
    here = tmp_path / "b.qcow2"
    here.write_bytes(b"guest data")
    if why == "the target does not answer":
        rc, verdicts, removed = _remove("false", here)
        assert verdicts == {str(here): "unknown"}
    else:
        gone = tmp_path / "no-such-directory" / "c.qcow2"  # no probe file can be made next to it
        rc, verdicts, removed = _remove(_sees(tmp_path / "nfs"), here, gone)
        assert verdicts == {str(here): "local", str(gone): "unknown"}
    assert rc == 0 and removed == set()
    assert here.read_bytes() == b"guest data"


def test_a_disposal_whose_removal_fails_says_so(tmp_path: Path) -> None:
    """A "disk" rm cannot remove (here a directory in its place): the command fails, and reports only
    what it did remove."""
    stuck, here = tmp_path / "stuck.qcow2", tmp_path / "b.qcow2"
    stuck.mkdir()
    here.write_bytes(b"x")
    rc, verdicts, removed = _remove(_sees(tmp_path / "nfs"), stuck, here)
    assert rc != 0 and verdicts == {str(stuck): "local", str(here): "local"}
    assert removed == {str(here)} and stuck.is_dir()


def test_the_probe_argv_runs_the_look_over_the_sources_ssh_with_the_host_key_checked() -> None:
    argv = shared_probe(TARGET, ["/nfs/a.qcow2"])
    look = argv[4]
    assert look.startswith("ssh -p 2222 -o BatchMode=yes -o StrictHostKeyChecking=yes -o Ciphers=")
    assert " root@192.0.2.2 -- " in look
    assert shlex.split(look)[-1] == shlex.join(["sh", "-c", _LOOK])
    assert argv[5:] == ["/nfs/a.qcow2"]
    with pytest.raises(ValueError):
        shared_probe(TARGET, ["/nfs/a\nb"])
