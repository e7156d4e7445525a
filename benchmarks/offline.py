"""Offline copy: the operator's offline job (dd | zstd over SSH, sha256 on both ends, define on the
target) against the link's raw throughput, a plain SSH stream of the same bytes between the same lab
hosts, measured side by side in alternating order. Disks hold compressible data (Python source text
from this machine) or incompressible data (random bytes); compression on and off; the lab link as
it is (a veth: CPU-bound) and shaped to a slower rate with tbf."""

from __future__ import annotations

import os
import re
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmarks import report, stats
from benchmarks.harness import Migrations, Operator, say
from vemigrate.drivers.hostjob import JOBS_DIR
from vemigrate_dev.lab import Lab, LabInfo, VMState

POOL = "/var/lib/libvirt/images"
_NS = re.compile(r"^elapsed_ns=(\d+)$", re.MULTILINE)


@dataclass
class Disk:
    name: str
    uuid: str
    kind: str  # compressible | incompressible
    size: int  # bytes of the disk file
    path: dict[str, str]  # host -> where the file is there (offline copies land in <pool>/<UUID>/)
    zstd_ratio: float


def _sh(host: str, script: str, *args: str) -> str:
    done = Lab.exec(host, ["sh", "-c", script, "sh", *args], capture=True)
    if done.returncode != 0:
        raise RuntimeError(f"on {host}: exited {done.returncode}: {done.stderr.strip()[-400:]}")
    return done.stdout


def _text_chunks() -> Iterator[bytes]:
    """Python source files of this machine's interpreter and packages, forever: text a real disk holds."""
    roots = [Path(p) for p in sys.path if p.endswith(("site-packages", "python3.11")) and Path(p).is_dir()]
    files = sorted(f for root in roots for f in root.rglob("*.py") if f.is_file())
    if not files:
        raise RuntimeError("no Python sources found to fill a compressible disk")
    while True:
        for f in files:
            yield f.read_bytes()


def _fill(target: Path, size: int, kind: str) -> None:
    with target.open("wb") as out:
        left = size
        if kind == "incompressible":
            while left > 0:
                chunk = os.urandom(min(left, 1 << 20))
                out.write(chunk)
                left -= len(chunk)
            return
        for chunk in _text_chunks():
            out.write(chunk[:left])
            left -= min(left, len(chunk))
            if left == 0:
                return


def make_disk(lab: LabInfo, kind: str, size_mib: int) -> Disk:
    """A stopped VM on lab1 whose qcow2 disk is filled with `kind` data, fully allocated."""
    name = f"bench-off-{kind[:3]}"
    for h in ("lab1", "lab2"):
        Lab.remove_vm(h, name)
    vm = Lab.create_vm("lab1", name, state=VMState.STOPPED, disk_mib=size_mib, dirty_mib=0)
    host = lab.host("lab1")
    raw = f"{POOL}/{name}.raw"
    _fill(host.path(raw), size_mib << 20, kind)
    _sh("lab1", 'qemu-img convert -f raw -O qcow2 "$1" "$2" && rm -f "$1"', raw, vm.disk)
    size = host.path(vm.disk).stat().st_size
    packed = int(_sh("lab1", 'zstd -q -c -T0 <"$1" | wc -c', vm.disk).strip())
    return Disk(name, vm.uuid, kind, size, {"lab1": vm.disk}, size / max(packed, 1))


def remove_disk(disk: Disk) -> None:
    for h in ("lab1", "lab2"):
        Lab.remove_vm(h, disk.name)
        _sh(h, 'rm -rf -- "$1" "$2"', f"{POOL}/{disk.uuid}", f"{POOL}/raw.part")


def raw_stream(lab: LabInfo, disk: Disk, src: str, dst: str) -> float:
    """Seconds for a plain SSH stream of the disk file from src to a file on dst: a new connection with the
    SSH client and key the operator's job uses between nodes, and ssh's default options."""
    script = (
        's=$(date +%s%N); dd if="$1" bs=4M status=none | '
        'ssh -o BatchMode=yes -o StrictHostKeyChecking=yes root@"$2" "cat >$3"; '
        'rc=$?; e=$(date +%s%N); echo "elapsed_ns=$((e - s))"; exit $rc'
    )
    out = _sh(src, script, disk.path[src], lab.host(dst).address, f"{POOL}/raw.part")
    _sh(dst, 'rm -f -- "$1"', f"{POOL}/raw.part")
    match = _NS.search(out)
    return int(match.group(1)) / 1e9 if match else 0.0


def through_operator(
    lab: LabInfo, migrations: Migrations, op: Operator, disk: Disk, src: str, dst: str, compression: bool
) -> tuple[float, float]:
    """(seconds of the operator's copy job, seconds from create to Succeeded). The job's own files on
    the source time it: `pid` is written when it starts, `exit` when it ends."""
    name = f"{disk.name}-{uuid.uuid4().hex[:6]}"
    spec = {"source": {"host": src, "name": disk.name}, "target": {"host": dst}, "mode": "Offline"}
    start = time.monotonic()
    uid = migrations.create(name, {**spec, "compression": compression})
    job = lab.host(src).path(f"{JOBS_DIR}/{uid}/1")  # attempt 1
    job_seconds = 0.0
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            job_seconds = (job / "exit").stat().st_mtime - (job / "pid").stat().st_mtime
            break
        except FileNotFoundError:
            time.sleep(0.02)
    body, seen = migrations.wait_final(name, alive=op.alive)
    status = body["status"]
    if status["phase"] != "Succeeded":
        raise RuntimeError(f"offline migration {name} ended {status['phase']}: {status.get('failure')}")
    migrations.delete(name)
    disk.path = {dst: f"{POOL}/{disk.uuid}/vda.qcow2"}  # <path>/<UUID>/<device>.<format>
    return job_seconds, seen - start


def compare(
    lab: LabInfo,
    migrations: Migrations,
    op: Operator,
    size_mib: int,
    repetitions: int,
    shaped_rate: str,
) -> report.Table:
    table = report.Table(
        f"Offline copy of a {size_mib} MiB disk: the operator's job vs a plain SSH stream (medians)",
        [
            "link",
            "data (zstd ratio)",
            "compression",
            "raw SSH stream",
            "operator copy job",
            "job / raw throughput",
            "operator create→Succeeded",
        ],
    )
    for link in ("veth as is", f"shaped to {shaped_rate}"):
        if link.startswith("shaped"):
            for h in ("lab1", "lab2"):
                Lab.netem(h, rate=shaped_rate)
        try:
            for kind in ("compressible", "incompressible"):
                disk = make_disk(lab, kind, size_mib)
                try:
                    for compression in (False, True):
                        raws: list[float] = []
                        jobs: list[float] = []
                        totals: list[float] = []
                        for first, second in stats.alternating(repetitions, "raw", "operator"):
                            for who in (first, second):
                                src = next(iter(disk.path))
                                dst = "lab2" if src == "lab1" else "lab1"
                                say(f"offline {link}, {kind}, compression {compression}: {who} {src} -> {dst}")
                                if who == "raw":
                                    raws.append(raw_stream(lab, disk, src, dst))
                                else:
                                    job, total = through_operator(lab, migrations, op, disk, src, dst, compression)
                                    jobs.append(job)
                                    totals.append(total)
                        raw_rate = [disk.size / s for s in raws]
                        job_rate = [disk.size / s for s in jobs]
                        table.add(
                            link,
                            f"{kind} ({disk.zstd_ratio:.1f}:1)",
                            "on" if compression else "off",
                            report.rate(stats.median(raw_rate)),
                            report.rate(stats.median(job_rate)),
                            f"{stats.median(stats.paired_ratios(job_rate, raw_rate)):.0%}",
                            report.seconds(stats.median(totals)),
                        )
                finally:
                    remove_disk(disk)
        finally:
            if link.startswith("shaped"):
                for h in ("lab1", "lab2"):
                    Lab.netem(h)
    table.notes += [
        "raw SSH stream: `dd | ssh root@<target> 'cat >file'` between the same two lab hosts, the same "
        "ssh binary and key as the job's node-to-node streams with ssh's own defaults (a new connection, "
        "OpenSSH's first cipher choice); the bytes of the disk file.",
        "operator copy job: the job script's own wall time on the source (its `pid` file to its `exit` "
        "file): `dd | tee (sha256) | [zstd -T0 |] ssh target '[zstd -d |] tee file.part | sha256'` "
        "(each end hashes the stream as it passes; the first stream's session makes the directory), then "
        "one session that names the files, runs `virsh define` and forgets the record; both on the "
        "migration's SSH connection to the target (made by the pre-flight checks, AES-GCM preferred); "
        "throughput = disk bytes / that time.",
        "operator create→Succeeded adds the pre-flight checks, the job start and the source's removal.",
    ]
    return table
