"""What the fault suite watches while a scenario runs, from outside the operator: the VE's copies on
both hosts sampled from libvirt every half second, the source's job at the moment a fault is injected,
files in the hosts' pool directories that are not the VE's, and the disks a successful copy left."""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import secrets
import signal
import subprocess
import tempfile
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libvirt

from vemigrate_dev.lab import Lab, LabHost, LabInfo
from vemigrate_dev.lab.guest import DISK_EVERY, PAYLOAD_OFFSET, PAYLOAD_SIZE
from vemigrate_dev.lab.state import LabState

JOBS_DIR = "/var/lib/libvirt/vemigrate/jobs"
POOL = "/var/lib/libvirt/images"
HOSTS = ("lab1", "lab2")  # source, target
PERIOD = 0.5  # seconds between two samples
ASK_TIMEOUT = 1.0  # a host whose libvirtd does not answer within this is unknown at that instant
LAB_FILES = (".vemigrate-fill",)  # the lab's own tool files in a pool (Lab.fill_disk), never foreign


def disks_of(xml: str) -> dict[str, str]:
    """A domain's file-backed disks: {target device: file}."""
    found = {}
    for disk in ET.fromstring(xml).findall("./devices/disk"):
        source, target = disk.find("source[@file]"), disk.find("target")
        if source is not None and target is not None:
            found[str(target.get("dev"))] = str(source.get("file"))
    return found


def domain_disks(lab: LabInfo, host: str, ve_uuid: str) -> dict[str, str] | None:
    """{device: file} of the domain with this UUID on `host`, or None when it has none."""
    conn = lab.host(host).connect()
    try:
        try:
            return disks_of(conn.lookupByUUIDString(ve_uuid).XMLDesc(0))
        except libvirt.libvirtError:
            return None
    finally:
        conn.close()


def file_md5(lab: LabInfo, host: str, path: str) -> str | None:
    """md5 of a file inside a host, read from the root namespace; None when it is not there."""
    digest = hashlib.md5()  # a checksum, not security
    try:
        with lab.host(host).path(path).open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except FileNotFoundError:
        return None
    return digest.hexdigest()


# -- the job on the source ------------------------------------------------------------------------
# The latest attempt's job of a migration: none (not started), running (no exit file, its lock held),
# exited, or lost (no exit file, lock free). $2 is how long the lock may stay taken before the job counts
# as running: 0 (flock -n) or some seconds.
_JOB = (
    'a=$(ls -1 "$1" 2>/dev/null | sort -n | tail -n 1)\n'
    '[ -n "$a" ] && [ -e "$1/$a/pid" ] || { echo none; exit 0; }\n'
    'cd "$1/$a" || { echo none; exit 0; }\n'
    # Exit looked at again once the lock is free: a job that ended between the two looks exited.
    'if [ -e exit ]; then echo exited; elif ! flock -w "$2" lock true; then echo running;\n'
    "elif [ -e exit ]; then echo exited; else echo lost; fi\n"
)


def job_state(uid: str, host: str = "lab1", settle: float = 0) -> str:
    """`settle`: seconds the lock may stay taken before the job counts as running. A job just killed is
    not lost at once: its processes take a moment to die, and the operator's own reads of the job (its
    long poll, the record read it wakes) each take the lock for a few milliseconds as it comes free.
    Those hold it in passing; a running job holds it throughout."""
    out = Lab.exec(host, ["sh", "-c", _JOB, "sh", f"{JOBS_DIR}/{uid}", f"{settle:g}"], capture=True)
    return out.stdout.strip() or f"unreadable ({out.stderr.strip()[:80]})"


def job_attempts(uid: str, host: str = "lab1") -> list[str]:
    """The attempt directories of a migration's jobs on the source (not the socket of its shared SSH
    connection beside them)."""
    lab = Lab.info()
    if lab is None:
        return []
    path = lab.host(host).path(f"{JOBS_DIR}/{uid}")
    return sorted(p.name for p in path.iterdir() if p.is_dir()) if path.is_dir() else []


# -- sampling libvirt on both hosts -----------------------------------------------------------------
@dataclass(frozen=True)
class Copy:
    running: bool  # libvirt reports it running (a paused copy runs nothing)
    complete: bool  # the domain is there and every disk file it names exists


_ABSENT = Copy(running=False, complete=False)


class _Prober:
    """One host's libvirt, asked from the sampler's thread and answered by a thread of its own with a
    connection of its own: a libvirtd that hangs (stopped) stalls only this host's answers, and the
    sampler counts those instants as unknown instead of waiting."""

    def __init__(self, host: LabHost, ve_uuid: str) -> None:
        self.host, self.uuid = host, ve_uuid
        self._asks: queue.Queue[bool] = queue.Queue()
        self._answers: queue.Queue[Copy | None] = queue.Queue()
        self._pending = False
        self._conn: Any = None
        self._thread = threading.Thread(target=self._serve, name=f"sampler-{host.name}", daemon=True)
        self._thread.start()

    def ask(self, timeout: float = ASK_TIMEOUT) -> Copy | None:
        """This host's copy now, or None when libvirtd did not answer in time (or at all)."""
        with contextlib.suppress(queue.Empty):
            while True:  # a late answer to an ask that timed out: the host is free again
                self._answers.get_nowait()
                self._pending = False
        if self._pending:
            return None
        self._pending = True
        self._asks.put(True)
        try:
            answer = self._answers.get(timeout=timeout)
        except queue.Empty:
            return None
        self._pending = False
        return answer

    def close(self) -> None:
        self._asks.put(False)
        self._thread.join(timeout=2)

    def _serve(self) -> None:
        while self._asks.get():
            self._answers.put(self._probe())
        self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                self._conn.close()
        self._conn = None

    def _probe(self) -> Copy | None:
        try:
            if self._conn is None:
                self._conn = libvirt.open(self.host.uri)
            dom = self._conn.lookupByUUIDString(self.uuid)
            running = dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
            files = disks_of(dom.XMLDesc(0)).values()
            return Copy(running=running, complete=all(self.host.path(f).exists() for f in files))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return _ABSENT
            self._drop()  # libvirtd killed or restarted: connect again next time
            return None


@dataclass
class Samples:
    """What the sampler saw: every instant at which the VE ran on both hosts, or had no complete copy."""

    count: int = 0
    unknown: int = 0  # instants at which a host's libvirtd did not answer (nothing is judged from those)
    duplicate_at: list[float] = field(default_factory=list)  # seconds since the start
    lost_at: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def duplicate(self) -> bool:
        return bool(self.duplicate_at)

    @property
    def lost(self) -> bool:
        return bool(self.lost_at)

    def describe(self) -> str:
        said = f"{self.count} samples over {self.seconds:.0f} s ({self.unknown} unknown)"
        if self.duplicate_at:
            said += f", running on both hosts at {_instants(self.duplicate_at)}"
        if self.lost_at:
            said += f", no complete copy at {_instants(self.lost_at)}"
        return said


def _instants(times: list[float]) -> str:
    shown = ", ".join(f"{t:.1f} s" for t in times[:5])
    return shown + (f" and {len(times) - 5} more" if len(times) > 5 else "")


class Sampler:
    """Samples the VE's copies on the source and the target every PERIOD seconds in a thread of its own,
    for at most `limit` seconds, until stopped.

    The hosts are read one after the other, never at one instant, so an instant counts only when the
    reading order proves it: source, then target, then the source again. The VE ran on both hosts if it
    ran on the source in both its readings and on the target in between (a copy that stopped on the
    source before the target started cannot look like that). No complete copy existed if neither the
    source (read first) nor the target (read after it) had one: the VE only ever moves from the source
    to the target, so a copy that left the source had arrived on the target before."""

    def __init__(self, lab: LabInfo, ve_uuid: str, limit: float = 900.0) -> None:
        self.samples = Samples()
        self._source, self._target = (_Prober(lab.host(h), ve_uuid) for h in HOSTS)
        self._limit = limit
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._start = time.monotonic()
        self._thread.start()

    def stop(self) -> Samples:
        """Stop sampling (again: a no-op) and say what was seen."""
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join(timeout=3 * ASK_TIMEOUT + 2)
            self._source.close()
            self._target.close()
        return self.samples

    def _run(self) -> None:
        s = self.samples
        while not self._stop.is_set():
            tick = time.monotonic()
            at = tick - self._start
            if at > self._limit:
                return
            first, target, again = self._source.ask(), self._target.ask(), self._source.ask()
            s.count += 1
            s.seconds = at
            if None in (first, target, again):
                s.unknown += 1
            if first is not None and target is not None and not (first.complete or target.complete):
                s.lost_at.append(at)
            if (
                first is not None
                and target is not None
                and again is not None
                and first.running
                and target.running
                and again.running
            ):
                s.duplicate_at.append(at)
            self._stop.wait(max(0.0, PERIOD - (time.monotonic() - tick)))


# -- files that are not the VE's ----------------------------------------------------------------------
@dataclass
class Foreign:
    """Files in the pool directory of both hosts that are not this VE's: a few planted for the scenario
    (named like another VM's disk, and like an earlier offline copy of another VE in <pool>/<UUID>/),
    and whatever was there already. Each is checksummed when the migration starts and again at the end;
    any change or removal counts as touched."""

    lab: LabInfo
    before: dict[tuple[str, str], str]
    planted: list[tuple[str, str]]

    roots: tuple[str, ...] = (POOL,)

    @classmethod
    def plant(
        cls, lab: LabInfo, tag: str, own: Mapping[str, Iterable[str]], roots: tuple[str, ...] = (POOL,)
    ) -> Foreign:
        """`own`: per host, the VE's own files (its disks on the source), which are not foreign.
        `roots`: the directories watched, the pool and e.g. the storage both hosts share."""
        planted: list[tuple[str, str]] = []
        for host in HOSTS:
            other = str(uuid.uuid4())
            for root in roots:
                for path in (f"{root}/{tag}-{host}-bystander.qcow2", f"{root}/{other}/vda.qcow2"):
                    where = lab.host(host).path(path)
                    where.parent.mkdir(exist_ok=True)
                    where.write_bytes(f"another VE's disk, not {tag}'s\n".encode() + secrets.token_bytes(256 << 10))
                    planted.append((host, path))
        return cls(lab, _pool_sums(lab, own, roots), planted, roots)

    def touched(self, own: Mapping[str, Iterable[str]]) -> list[str]:
        after = _pool_sums(self.lab, own, self.roots)
        said = []
        for (host, path), digest in sorted(self.before.items()):
            now = after.get((host, path))
            if now is None:
                said.append(f"{path} on {host} removed")
            elif now != digest:
                said.append(f"{path} on {host} changed")
        return said

    def remove(self) -> None:
        """The planted files go (they are the test's); what was there before stays."""
        for host, path in self.planted:
            where = self.lab.host(host).path(path)
            where.unlink(missing_ok=True)
            if where.parent not in {self.lab.host(host).path(root) for root in self.roots}:
                with contextlib.suppress(OSError):
                    where.parent.rmdir()
        self.planted = []


def _pool_sums(
    lab: LabInfo, own: Mapping[str, Iterable[str]], roots: tuple[str, ...] = (POOL,)
) -> dict[tuple[str, str], str]:
    sums: dict[tuple[str, str], str] = {}
    for host in HOSTS:
        mine = set(own.get(host, ()))
        for watched in roots:
            root = lab.host(host).path(watched)
            for directory, _dirs, files in os.walk(root):
                for name in files:
                    inside = f"{watched}/{Path(directory, name).relative_to(root)}"
                    if name in LAB_FILES or inside in mine or not Path(directory, name).is_file():
                        continue
                    digest = file_md5(lab, host, inside)
                    if digest is not None:
                        sums[(host, inside)] = digest
    return sums


# -- what a successful copy left ------------------------------------------------------------------------
def payload_md5(lab: LabInfo, host: str, path: str) -> str:
    """md5 of the lab payload as the guest sees it (MiB 1-5 of the virtual disk), read from a qcow2 that
    a running guest may hold open (-U). The guest rewrites sector 0 with its heartbeat, never this."""
    with tempfile.TemporaryDirectory(prefix="vemigrate-payload-") as tmp:
        out = Path(tmp) / "payload.raw"
        mib = 1 << 20
        # qemu-img dd's count is where the copy ends, counted from the start of the input, not from skip.
        blocks = [f"bs={mib}", f"skip={PAYLOAD_OFFSET // mib}", f"count={(PAYLOAD_OFFSET + PAYLOAD_SIZE) // mib}"]
        files = [f"if={lab.host(host).path(path)}", f"of={out}"]
        argv = ["qemu-img", "dd", "-U", "-f", "qcow2", "-O", "raw", *blocks, *files]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            return f"unreadable: {done.stderr.strip()[:200]}"
        return hashlib.md5(out.read_bytes()).hexdigest()  # a checksum, not security


def copies_differ(
    lab: LabInfo, ve_uuid: str, source: Mapping[str, str], payload: str | None, vm_name: str | None = None
) -> list[str]:
    """After a successful migration: each target disk against the source disk the job copied.
    `source`: {device: md5 of its file} read before the migration (a stopped VE: the job copies the
    files as they are); `payload`: the payload's md5 for a running VE, whose disk the guest kept
    writing, compared on the target's first disk (and, when that read differs, as the guest `vm_name`
    reads it itself)."""
    target = domain_disks(lab, HOSTS[1], ve_uuid)
    if target is None:
        return ["no domain on the target"]
    said = []
    for dev, want in source.items():
        got = file_md5(lab, HOSTS[1], target[dev]) if dev in target else None
        if got != want:
            said.append(f"{dev}: {'missing' if got is None else 'md5 ' + got + ' instead of ' + want}")
    if payload is not None:
        first = sorted(target)[0] if target else None
        got = payload_md5(lab, HOSTS[1], target[first]) if first else "no disk"
        if got != payload and first and vm_name:
            # `qemu-img dd -U` reads a qcow2 that the running QEMU may not have written all its metadata to
            # yet; the guest reading its own disk through that QEMU is the authority.
            guest = guest_payload_md5(lab, HOSTS[1], vm_name)
            if guest == payload:
                return said
            got = f"{got} (qemu-img -U), {guest or 'nothing'} (the guest's own read)"
        if got != payload:
            said.append(f"{first} payload: {got} instead of {payload}")
    return said


def guest_payload_md5(lab: LabInfo, host: str, vm_name: str, timeout: float = 4 * DISK_EVERY) -> str | None:
    """The next `DISK md5=` the guest prints on `host` (its payload re-read from its disk with caches
    dropped, every DISK_EVERY beats), or None if it prints none within `timeout` seconds."""
    before = len(Lab.heartbeats(host, vm_name).disk_md5s)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = Lab.heartbeats(host, vm_name).disk_md5s
        if len(seen) > before:
            return seen[-1]
        time.sleep(0.5)
    return None


def freeze(host: str, daemon: str, frozen: bool) -> None:
    """SIGSTOP (frozen) or SIGCONT one of a lab host's daemons, by the PID the lab recorded for it."""
    state = LabState.load()
    assert state is not None, "the lab is down"
    proc = state.host(host).daemons.get(daemon)
    assert proc is not None and proc.alive(), f"{daemon} is not running on {host}"
    os.kill(proc.pid, signal.SIGSTOP if frozen else signal.SIGCONT)


def domain_state(lab: LabInfo, host: str, ve_uuid: str) -> tuple[int, int] | None:
    """libvirt's (state, reason) of the VE's domain on `host`, or None when it has none."""
    conn = lab.host(host).connect()
    try:
        try:
            state, reason = conn.lookupByUUIDString(ve_uuid).state()
        except libvirt.libvirtError:
            return None
        return int(state), int(reason)
    finally:
        conn.close()


def in_post_copy(lab: LabInfo, ve_uuid: str) -> bool:
    """libvirt says post-copy runs: the source paused for it and the target running the VE in it."""
    source, target = domain_state(lab, HOSTS[0], ve_uuid), domain_state(lab, HOSTS[1], ve_uuid)
    return source == (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_POSTCOPY) and target == (
        libvirt.VIR_DOMAIN_RUNNING,
        libvirt.VIR_DOMAIN_RUNNING_POSTCOPY,
    )


def memory_moving(lab: LabInfo, ve_uuid: str) -> bool:
    """A live migration's memory is being sent (its disks' copy is done, or not part of it)."""
    conn = lab.host(HOSTS[0]).connect()
    try:
        try:
            return int(conn.lookupByUUIDString(ve_uuid).jobStats().get("memory_processed", 0)) > 0
        except libvirt.libvirtError:
            return False
    finally:
        conn.close()
