"""The target-side scripts that create, list and remove what a migration made, run with a local sh on
a real file system: whatever was in the way, or is not the very file recorded, comes through byte for
byte."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.unit.builders import driver_plan, host_facts, spec, ve
from vemigrate.api.migration import MigrationStatus, Mode
from vemigrate.core.access import HostAccess
from vemigrate.core.observation import VEState
from vemigrate.core.plan import resolve
from vemigrate.drivers.jobfailure import EXIT_IN_THE_WAY
from vemigrate.drivers.libvirt.jobs import (
    _CREATE_DIR,
    _CREATE_DISKS,
    _FINISH,
    _OWNED,
    _RECEIVE,
    _REMOVE_OWNED,
    _STATS_AND_FORGET,
    _offline_stats,
    _target_dir,
    on_target,
)

pytestmark = pytest.mark.unit
FOREIGN = b"someone else's disk\x00\xff" * 1000
UUID_OF_VE = "3f1c2a9e-8d7b-4c1e-9a55-0e6f6d1b2c3d"


def _sh(
    script: str, *args: object, input: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    argv = ["sh", "-c", script, "sh", *map(str, args)]
    return subprocess.run(argv, input=input, capture_output=True, timeout=30, env=env)


def _owned(record: Path) -> list[str]:
    """What the record still owns, after its own `record` line."""
    lines = _sh(_OWNED, record).stdout.decode().splitlines()
    if lines:
        assert lines[0] == f"record {record}", "a record that exists is itself a leftover, listed first"
    return lines[1:]


def test_a_disk_in_the_way_is_refused_and_nothing_of_it_is_removed(tmp_path: Path) -> None:
    record, images = tmp_path / "job" / "created", tmp_path / "images"
    images.mkdir()
    ours, theirs = images / "a.qcow2", images / "b.qcow2"
    theirs.write_bytes(FOREIGN)
    out = _sh(_CREATE_DISKS, record, ours, "qcow2", 1 << 20, theirs, "qcow2", 1 << 20)
    assert out.returncode == EXIT_IN_THE_WAY and b"already exists on the target" in out.stderr
    assert ours.read_bytes()[:4] == b"QFI\xfb", "the first disk was created as a qcow2 of its own"
    assert _owned(record) == [f"file {ours}"], "only what this job created is listed as its own"
    removed = _sh(_REMOVE_OWNED, record).stdout.decode()
    assert removed.splitlines() == [f"removed {ours}"]
    assert theirs.read_bytes() == FOREIGN
    assert sorted(p.name for p in images.iterdir()) == ["b.qcow2"], "no temporary file left either"
    assert not record.exists() and _sh(_OWNED, record).stdout == b""


def test_a_record_that_owns_nothing_any_more_is_still_a_leftover(tmp_path: Path) -> None:
    """Refused at the first disk: the record lists only the temporary file, already removed. Cleanup
    must still run (and remove the record), so the record is reported as a leftover."""
    record, disk = tmp_path / "job" / "created", tmp_path / "vm.qcow2"
    disk.write_bytes(FOREIGN)
    assert _sh(_CREATE_DISKS, record, disk, "qcow2", 1 << 20).returncode == EXIT_IN_THE_WAY
    assert _sh(_OWNED, record).stdout.decode().splitlines() == [f"record {record}"]
    _sh(_REMOVE_OWNED, record)
    assert not record.exists() and not record.parent.exists() and disk.read_bytes() == FOREIGN


def test_a_recorded_path_that_now_holds_another_file_stays(tmp_path: Path) -> None:
    """Storage both hosts see, or a file replaced after the record: the path is the same, the file is not."""
    record, disk = tmp_path / "created", tmp_path / "vm.raw"
    assert _sh(_CREATE_DISKS, record, disk, "raw", 4096).returncode == 0
    disk.unlink()
    disk.write_bytes(FOREIGN)  # a new inode at the recorded path
    assert _owned(record) == []
    _sh(_REMOVE_OWNED, record)
    assert disk.read_bytes() == FOREIGN


def test_a_directory_in_the_way_is_refused_and_an_own_one_keeps_what_others_put_in_it(tmp_path: Path) -> None:
    record, target = tmp_path / "created", tmp_path / "ves" / "uuid-1"
    target.mkdir(parents=True)
    (target / "data").write_bytes(FOREIGN)
    out = _sh(_CREATE_DIR, record, target, "dir")
    assert out.returncode == EXIT_IN_THE_WAY and _owned(record) == []
    _sh(_REMOVE_OWNED, record)
    assert (target / "data").read_bytes() == FOREIGN

    mine = tmp_path / "ves" / "uuid-2"
    assert _sh(_CREATE_DIR, record, mine, "dir").returncode == 0
    received = _sh(_RECEIVE, record, mine / "vda.raw", "cat", input=b"disk bytes")
    assert received.returncode == 0
    (mine / "someone-elses").write_bytes(FOREIGN)  # put there after this migration made the directory
    out = _sh(_REMOVE_OWNED, record).stdout.decode().splitlines()
    assert f"removed {mine}/vda.raw.part" in out and f"kept {mine}" in out
    assert (mine / "someone-elses").read_bytes() == FOREIGN
    assert not (mine / "vda.raw.part").exists()


def test_receive_reports_the_streams_hash_and_size_and_refuses_a_part_in_the_way(tmp_path: Path) -> None:
    record, dst = tmp_path / "created", tmp_path / "vda.raw"
    payload = b"x" * 100_000
    out = _sh(_RECEIVE, record, dst, "cat", input=payload)
    digest = subprocess.run(["sha256sum"], input=payload, capture_output=True, check=True).stdout.split()[0]
    assert out.stdout.split() == [digest, b"100000"]
    assert (tmp_path / "vda.raw.part").read_bytes() == payload
    again = _sh(_RECEIVE, record, dst, "cat", input=b"other")
    assert again.returncode == EXIT_IN_THE_WAY
    assert (tmp_path / "vda.raw.part").read_bytes() == payload, "a part file in the way is not overwritten"


@pytest.mark.parametrize("openssl", ["works", "fails", "missing"])
def test_the_receivers_hash_is_openssls_where_it_runs_and_sha256sums_otherwise(tmp_path: Path, openssl: str) -> None:
    """OpenSSL hashes the stream several times faster than sha256sum (the CPU's SHA instructions); a host
    where it is missing or broken hashes with sha256sum, to the same digest."""
    bin_dir, log = tmp_path / "bin", tmp_path / "openssl.log"
    bin_dir.mkdir()
    real = shutil.which("openssl")
    assert real is not None, "the machine's openssl (Debian's openssl package, installed by make setup)"
    body = {"works": f'echo "$*" >>{log}\nexec {real} "$@"', "fails": "exit 1", "missing": "exit 127"}[openssl]
    (bin_dir / "openssl").write_text(f"#!/bin/sh\n{body}\n")
    (bin_dir / "openssl").chmod(0o755)
    payload = bytes(range(256)) * 4099
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    out = _sh(_RECEIVE, tmp_path / "created", tmp_path / "vda.raw", "cat", input=payload, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().split() == [hashlib.sha256(payload).hexdigest(), str(len(payload))]
    if openssl == "works":
        assert log.read_text().splitlines() == ["dgst -sha256 -r", "dgst -sha256 -r"], "probed, then the stream"


def test_the_receiver_reports_the_bytes_that_landed(tmp_path: Path) -> None:
    """Progress is counted where the bytes are written (on stderr, which the job's log keeps), so a
    compressed run of zeros cannot put the source's count far ahead of the target's hashing."""
    record, dst = tmp_path / "created", tmp_path / "vda.raw"
    payload = b"\0" * (9 << 20) + b"end"
    out = _sh(_RECEIVE, record, dst, "cat", input=payload)
    assert out.returncode == 0 and out.stdout.decode().splitlines()[1] == str(len(payload))
    assert _offline_stats(out.stderr.decode()).bytes_processed == len(payload)


def test_after_the_targets_default_directory_changed_cleanup_removes_only_what_the_job_made(tmp_path: Path) -> None:
    """The job copied into the target's default directory A; then the host's default became B, where a VE of
    the same UUID is someone else's. The plan a later pass (or a restarted operator) resolves from status
    still names A, and the cleanup removes exactly what the job recorded in A; B stays as it was."""
    pool_a, pool_b, record = tmp_path / "pool-a", tmp_path / "pool-b", tmp_path / "job" / "created"
    pool_a.mkdir()
    pool_b.mkdir()
    uid, stopped = "0b7c9f6e-1111-4222-8333-444455556666", ve(state=VEState.STOPPED)
    source, target = (
        HostAccess(name="node-a", namespace="ns", address="192.0.2.1"),
        HostAccess(name="node-b", namespace="ns", address="192.0.2.2"),
    )
    then = host_facts(default_path=str(pool_a))
    started = driver_plan(uid, spec(), stopped, source, target, facts=then)
    directory = Path(_target_dir(started))
    assert directory == pool_a / stopped.uuid
    # What the job does there: its directory, then a disk received as <disk>.part and renamed.
    assert _sh(_CREATE_DIR, record, directory, "dir").returncode == 0
    disk = directory / "vda.qcow2"
    assert _sh(_RECEIVE, record, disk, "cat", input=b"the copy").returncode == 0
    Path(f"{disk}.part").rename(disk)
    stored = MigrationStatus(mode=Mode.OFFLINE, plan=resolve(uid, spec(), stopped, then, None).recorded())

    now = host_facts(default_path=str(pool_b))
    theirs = pool_b / stopped.uuid
    theirs.mkdir()
    (theirs / "vda.qcow2").write_bytes(FOREIGN)
    assert resolve(uid, spec(), stopped, now, None).target_path == str(pool_b), "the facts alone would say B"
    later = resolve(uid, spec(), None, now, stored)
    assert later.target_path == str(pool_a) and later.copy_uuid == stopped.uuid

    assert _owned(record) == [f"dir {directory}", f"file {disk}"], "what the job made, in A"
    _sh(_REMOVE_OWNED, record)
    assert not directory.exists() and list(pool_a.iterdir()) == []
    assert (theirs / "vda.qcow2").read_bytes() == FOREIGN and sorted(p.name for p in pool_b.iterdir()) == [stopped.uuid]


def _virsh_stand_in(tmp_path: Path, body: str) -> dict[str, str]:
    """A `virsh` first in PATH (no libvirtd in a unit test) that logs its arguments and stdin, then runs body."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "virsh").write_text(f'#!/bin/sh\necho "$*" >>{tmp_path}/virsh.log\ncat >>{tmp_path}/virsh.in\n{body}\n')
    (bin_dir / "virsh").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_the_first_receive_makes_the_directory_in_its_own_session_and_refuses_one_in_the_way(tmp_path: Path) -> None:
    record, directory = tmp_path / "job" / "created", tmp_path / "ves" / "uuid-1"
    out = _sh(_RECEIVE, record, directory / "vda.raw", "cat", directory, input=b"disk bytes")
    assert out.returncode == 0, out.stderr
    assert _owned(record) == [f"dir {directory}", f"file {directory}/vda.raw.part"]
    assert (directory / "vda.raw.part").read_bytes() == b"disk bytes"

    theirs = tmp_path / "ves" / "uuid-2"
    theirs.mkdir()
    (theirs / "vda.raw").write_bytes(FOREIGN)
    out = _sh(_RECEIVE, record, theirs / "vda.raw", "cat", theirs, input=b"would overwrite")
    assert out.returncode == EXIT_IN_THE_WAY and b"already exists on the target" in out.stderr
    assert sorted(p.name for p in theirs.iterdir()) == ["vda.raw"] and (theirs / "vda.raw").read_bytes() == FOREIGN
    _sh(_REMOVE_OWNED, record)
    assert (theirs / "vda.raw").read_bytes() == FOREIGN and not directory.exists()


def test_finish_names_the_copies_defines_the_domain_and_forgets_the_record(tmp_path: Path) -> None:
    job, directory = tmp_path / "jobs" / "uid" / "1", tmp_path / "ves" / "uuid-1"
    record = job / "created"
    disks = [directory / "vda.qcow2", directory / "vdb.qcow2"]
    for i, disk in enumerate(disks):
        assert (
            _sh(_RECEIVE, record, disk, "cat", *([directory] if i == 0 else []), input=disk.name.encode()).returncode
            == 0
        )
    env = _virsh_stand_in(tmp_path, "exit 0")
    out = _sh(_FINISH, "qemu:///system", job, job.parent, *disks, input=b"<domain/>", env=env)
    assert out.returncode == 0, out.stderr
    assert [d.read_bytes() for d in disks] == [b"vda.qcow2", b"vdb.qcow2"]
    assert sorted(p.name for p in directory.iterdir()) == ["vda.qcow2", "vdb.qcow2"], "no .part left"
    assert on_target(out.stdout.decode()) == {str(d) for d in disks}, "each copy reported once it has its name"
    assert (tmp_path / "virsh.log").read_text() == "-c qemu:///system define /dev/stdin\n"
    assert (tmp_path / "virsh.in").read_bytes() == b"<domain/>"
    assert not job.exists() and not job.parent.exists(), "the record is forgotten, and its empty parent"


@pytest.mark.parametrize("failure", ["in the way", "define fails"])
def test_finish_leaves_the_record_when_a_name_is_taken_or_the_define_fails(tmp_path: Path, failure: str) -> None:
    """A file at a copy's final name is not this migration's: it comes through byte for byte, nothing is
    defined, and the record stays, so that the cleanup removes the received copy (and only that)."""
    job, directory = tmp_path / "jobs" / "uid" / "1", tmp_path / "ves" / "uuid-1"
    record, disk = job / "created", directory / "vda.qcow2"
    assert _sh(_RECEIVE, record, disk, "cat", directory, input=b"the copy").returncode == 0
    if failure == "in the way":
        disk.write_bytes(FOREIGN)  # someone else's, put there while the copy ran
    env = _virsh_stand_in(tmp_path, "exit 1")
    out = _sh(_FINISH, "qemu:///system", job, job.parent, disk, input=b"<domain/>", env=env)
    if failure == "in the way":
        assert out.returncode == EXIT_IN_THE_WAY and b"already exists on the target" in out.stderr
        assert on_target(out.stdout.decode()) == set(), "someone else's file is no copy of this migration's"
        assert not (tmp_path / "virsh.log").exists(), "nothing defined"
    else:
        assert out.returncode == 1 and (tmp_path / "virsh.log").exists()
    assert record.exists()
    removed = _sh(_REMOVE_OWNED, record).stdout.decode().splitlines()
    if failure == "in the way":
        assert f"removed {disk}.part" in removed and f"kept {directory}" in removed
        assert disk.read_bytes() == FOREIGN
    else:
        assert f"removed {disk}" in removed, "the copy, linked to its final name, was recorded under it too"
        assert not directory.exists()


def test_finish_with_more_steps_to_come_keeps_the_record(tmp_path: Path) -> None:
    """A suspended VM's restore follows the define: the record must outlive this session."""
    job, directory = tmp_path / "jobs" / "uid" / "1", tmp_path / "ves" / "uuid-1"
    disk = directory / "vda.qcow2"
    assert _sh(_RECEIVE, job / "created", disk, "cat", directory, input=b"the copy").returncode == 0
    out = _sh(_FINISH, "qemu:///system", "", "", disk, input=b"<domain/>", env=_virsh_stand_in(tmp_path, "exit 0"))
    assert out.returncode == 0, out.stderr
    assert disk.read_bytes() == b"the copy" and (job / "created").exists()


def test_a_live_jobs_statistics_are_read_and_its_record_forgotten_in_one_session(tmp_path: Path) -> None:
    job = tmp_path / "jobs" / "uid" / "1"
    job.mkdir(parents=True)
    (job / "created").write_text("")
    there, gone = tmp_path / "images" / "web 1.qcow2", tmp_path / "images" / "vdb.raw"
    there.parent.mkdir()
    there.write_bytes(b"")
    env = _virsh_stand_in(tmp_path, "echo 'Total downtime: 68 ms'; echo 'error: a warning' >&2")
    out = _sh(_STATS_AND_FORGET, UUID_OF_VE, job, job.parent, there, gone, env=env)
    assert out.returncode == 0
    said = out.stdout.decode()
    assert said.splitlines()[:2] == ["Total downtime: 68 ms", "error: a warning"], "virsh's stderr too"
    # The copies found there, for the verification to take as seen; not the one that is missing.
    assert on_target(said) == {str(there)}
    assert (tmp_path / "virsh.log").read_text() == f"-c qemu:///system domjobinfo --completed {UUID_OF_VE}\n"
    assert not job.exists() and not job.parent.exists()
    env = _virsh_stand_in(tmp_path, "exit 1")
    job.mkdir(parents=True)
    (job.parent / "other").write_text("")
    assert _sh(_STATS_AND_FORGET, UUID_OF_VE, job, job.parent, env=env).returncode == 0, "statistics are best effort"
    assert not job.exists() and (job.parent / "other").exists(), "a parent with something else in it stays"
