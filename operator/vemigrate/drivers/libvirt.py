"""The libvirt driver: QEMU/KVM hosts (qemu+ssh://) and Virtuozzo's libvirt driver (vz+ssh://).

How it reaches a host: one asyncssh connection with the host key verified against the host's
known_hosts Secret; libvirt-python talks to the host's libvirtd through a Unix socket forwarded over
that connection (`spec.libvirtURI`, SSH only, picks the driver: `lxc+ssh://`, `vz+ssh://`). Every
blocking libvirt call runs in a thread under a deadline: a hung call is a fact (state unknown), not
a reason to block.

How it migrates: the job is a script run detached on the source host (drivers/hostjob.py) so it
outlives the operator:
- live: `virsh migrate --live --p2p --persistent` (libvirt's virDomainMigrateToURI3 with
  VIR_MIGRATE_PEER2PEER) to `qemu+ssh://<target>/system`, which needs the source node to reach the
  target over SSH as root (the same requirement as prlctl migrate's RSA authentication between nodes).
  Encrypted by default: `--tunnelled` carries memory through libvirtd's SSH connection; local disks,
  which libvirt cannot tunnel, are copied with `--copy-storage-all` over QEMU's migration TLS
  (`--tls`), and when the hosts have no migration TLS the job refuses to start rather than copy in
  clear. `tunnel: false` is a direct QEMU stream, unencrypted.
- offline: each disk is streamed over SSH (`zstd` when compression is on), its sha256 compared on
  both ends, then the domain is defined on the target with the disks at `<path>/<UUID>/`.
- containers (libvirt LXC, `lxc+ssh://` hosts): offline only. The private area (the root file system
  directory) is streamed with tar into `<path>/<UUID>`, checked by a manifest of sha256 sums on both
  ends, and defined there; the source's private area and its configuration are then renamed with the
  `.migrated` suffix, as prlctl does, rather than deleted.
The domain carries `<vemigrate:migration uid=.../>` metadata, so the copy on the target is
recognisably this migration's.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import re
import shlex
import tempfile
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

import libvirt

from vemigrate.api.host import (
    LIBVIRT_URI,
    LIBVIRT_URI_SCHEME,
    CPUFacts,
    HostStatus,
    NetworkFacts,
    StorageFacts,
    VEKind,
    VersionFacts,
)
from vemigrate.api.migration import Mode, SourceDisposition
from vemigrate.core.access import HostAccess
from vemigrate.core.observation import ErrorClass, JobObservation, JobState, JobStats, VEFacts, VEState
from vemigrate.drivers import hostjob, jobfailure
from vemigrate.drivers.errors import DriverError, PermanentError, RetryableError, StateUnknownError
from vemigrate.drivers.jobfailure import EXIT_CHECKSUM
from vemigrate.drivers.protocol import MigrationPlan
from vemigrate.drivers.ssh import SSHHost

T = TypeVar("T")
CALL_TIMEOUT = 30.0
LIBVIRT_SOCKET = "/run/libvirt/libvirt-sock"
DEFAULT_POOL_PATH = "/var/lib/libvirt/images"
LXC_CONFIG_DIR = "/etc/libvirt/lxc"  # where the system libvirtd keeps container definitions
METADATA_NS = "https://vemigrate.io/migration"
METADATA_KEY = "vemigrate"
ET.register_namespace("vemigrate", METADATA_NS)
# libvirt prints every error to stderr by default; ours are raised, classified and reported instead.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

# libvirt error codes that mean "cannot tell what happened" rather than "it failed".
_UNKNOWN_CODES = {libvirt.VIR_ERR_RPC, libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_NO_CONNECT}
_PROGRESS = re.compile(r"^(\d+) bytes")
_DOWNTIME = re.compile(r"Total downtime:\s+(\d+)\s*ms")

# Facts from the shell, in one round trip: df of the given paths, bridges, addresses, link speeds,
# clock, kernel, and whether QEMU migration TLS certificates are in place.
_FACTS = r"""
for p in "$@"; do s=$(df -B1 --output=avail,size -- "$p" 2>/dev/null | tail -n 1) && printf 'df %s %s\n' "$s" "$p"; done
for b in /sys/class/net/*/bridge; do [ -d "$b" ] && echo "bridge $(basename "$(dirname "$b")")"; done
ip -o -4 addr show scope global 2>/dev/null | awk '{print "addr", $2, $4}'
for d in /sys/class/net/*; do s=$(cat "$d/speed" 2>/dev/null) && echo "speed $(basename "$d") $s"; done
echo "clock $(date +%s%N)"
echo "kernel $(uname -r)"
[ -e /proc/vz/cpuid_override ] && echo "cpuid yes" || echo "cpuid no"
key='^[[:space:]]*migrate_tls_x509_cert_dir[[:space:]]*=[[:space:]]*'
tls=$(sed -n "s/$key\"\(.*\)\"/\1/p" /etc/libvirt/qemu.conf 2>/dev/null)
[ -n "$tls" ] || tls=/etc/pki/qemu
[ -r "$tls/server-cert.pem" ] && [ -r "$tls/client-cert.pem" ] && echo "tls yes" || echo "tls no"
"""


@dataclass(frozen=True)
class _Disk:
    target: str  # vda
    path: str  # file on the host
    format: str


def _connection_plan(uri: str | None, host: str) -> tuple[str, str]:
    """(hypervisor, path) of `spec.libvirtURI`. Only SSH transports (the default `qemu+ssh://`, or
    `lxc+ssh://`, `vz+ssh://`), and the operator never opens the URI as written: libvirtd is reached
    through its own SSH connection with the verified host key, never through an ssh binary (which
    would consult some other known_hosts) or a command, socket or TCP port named in the URI. Anything
    else is refused before any connection is made (api/host.py says which URIs and why)."""
    if not uri:
        return "qemu", "/system"
    parsed = urlsplit(uri) if re.match(LIBVIRT_URI_SCHEME, uri) else None
    if parsed is None:
        problem = "is not an SSH URI: only qemu+ssh://, lxc+ssh:// and vz+ssh:// are allowed"
    elif "?" in uri or "#" in uri:
        names = sorted({name for name, _ in parse_qsl(parsed.query, keep_blank_values=True)})
        listed = f" ({', '.join(names)[:200]})" if names else ""
        problem = f"has query parameters or a fragment{listed}: none is allowed"
    elif not re.fullmatch(LIBVIRT_URI, uri):
        problem = "is not of the form <driver>+ssh://[user@]host[:port][/system]"
    else:
        return parsed.scheme.partition("+")[0], "/system"
    raise PermanentError("UnsafeLibvirtURI", f"spec.libvirtURI of HypervisorHost {host!r} {problem}")


def _classify(exc: libvirt.libvirtError, what: str) -> DriverError:
    code = exc.get_error_code()
    message = f"{what}: {exc.get_error_message() or exc}"
    if code in _UNKNOWN_CODES:
        return StateUnknownError("LibvirtUnreachable", message)
    if code in (libvirt.VIR_ERR_OPERATION_TIMEOUT, libvirt.VIR_ERR_AGENT_UNRESPONSIVE):
        return RetryableError("LibvirtTimeout", message)
    return PermanentError("LibvirtError", message)


def _state(dom: Any) -> VEState:
    state, reason = dom.state()
    if state == libvirt.VIR_DOMAIN_RUNNING:
        return VEState.RUNNING
    if state == libvirt.VIR_DOMAIN_PAUSED:
        migrating = reason in (libvirt.VIR_DOMAIN_PAUSED_MIGRATION, libvirt.VIR_DOMAIN_PAUSED_POSTCOPY)
        return VEState.MIGRATING if migrating else VEState.PAUSED
    if state in (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTDOWN):
        try:
            saved = dom.hasManagedSaveImage(0)
        except libvirt.libvirtError:  # LXC has no managed save
            saved = 0
        return VEState.SUSPENDED if saved else VEState.STOPPED
    return VEState.OTHER


def _disk_elements(root: ET.Element) -> list[ET.Element]:
    """The disks with a file on the host: those a migration copies."""
    return [
        disk
        for disk in root.findall("./devices/disk[@device='disk']")
        if disk.find("target") is not None and (s := disk.find("source")) is not None and s.get("file") is not None
    ]


def _disk_of(disk: ET.Element) -> _Disk:
    source, target, driver = disk.find("source"), disk.find("target"), disk.find("driver")
    assert source is not None and target is not None
    return _Disk(
        target.get("dev", ""), str(source.get("file")), driver.get("type", "raw") if driver is not None else "raw"
    )


def _disks(root: ET.Element) -> list[_Disk]:
    return [_disk_of(disk) for disk in _disk_elements(root)]


def _private_area(root: ET.Element) -> str | None:
    """A container's root file system directory: the mount whose target is `/`."""
    for fs in root.findall("./devices/filesystem[@type='mount']"):
        source, target = fs.find("source"), fs.find("target")
        if source is not None and target is not None and target.get("dir") == "/":
            return source.get("dir")
    return None


def _post_copy_failed(state: list[int]) -> bool:
    """libvirt's `dom.state()` after a failed post-copy migration: paused, or (on the target) still
    running, with reason post-copy failed. Each host then holds part of the VE's running state."""
    kind, reason = state[0], state[1]
    if kind == libvirt.VIR_DOMAIN_PAUSED:
        return bool(reason == libvirt.VIR_DOMAIN_PAUSED_POSTCOPY_FAILED)
    return bool(kind == libvirt.VIR_DOMAIN_RUNNING and reason == libvirt.VIR_DOMAIN_RUNNING_POSTCOPY_FAILED)


_NON_FILE_DISKS = {
    "block": "block device",
    "volume": "storage pool volume",
    "network": "network disk",
    "dir": "directory disk",
    "nvme": "NVMe disk",
    "vhostuser": "vhost-user disk",
}


def _disk_source(kind: str, source: ET.Element | None) -> str | None:
    """Where a disk's data is, in words a person can look up on the host; None: no medium."""
    if source is None:
        return None
    if kind == "volume" and source.get("volume"):
        return f"{source.get('pool', '?')}/{source.get('volume')}"
    if kind == "network":
        host = source.find("host")
        server = host.get("name", "") if host is not None else ""
        if host is not None and host.get("port"):
            server += f":{host.get('port')}"
        return f"{source.get('protocol', '?')}://{server}/{source.get('name', '')}".rstrip("/")
    for attribute in ("file", "dev", "dir", "path", "name"):
        if source.get(attribute):
            return source.get(attribute)
    return None


def unmoved_storage(root: ET.Element) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What a copy of this domain leaves behind, one description each: (what no copy moves: NVRAM,
    vTPM state, CD/DVD and floppy media; disks that are not files: block devices, pool volumes,
    network disks, which stay where they are). Only `<disk device='disk'>` files are copied."""
    unmovable: list[str] = []
    non_file: list[str] = []
    nvram = root.find("./os/nvram")
    if nvram is not None:
        path = (nvram.text or "").strip() or _disk_source(nvram.get("type", "file"), nvram.find("source"))
        unmovable.append(f"NVRAM {path}" if path else "NVRAM")
    for disk in root.findall("./devices/disk"):
        device, kind = disk.get("device", "disk"), disk.get("type", "file")
        target = disk.find("target")
        name = target.get("dev", "?") if target is not None else "?"
        where = _disk_source(kind, disk.find("source"))
        if device in ("cdrom", "floppy"):
            if where is not None:  # an empty drive moves with the definition
                unmovable.append(f"{name}: {device} {where}")
        elif where is not None and not (device == "disk" and kind == "file"):
            what = _NON_FILE_DISKS.get(kind, f"{kind} disk")
            non_file.append(f"{name}: {what} {where}" + (f" ({device})" if device != "disk" else ""))
    for tpm in root.findall("./devices/tpm"):
        backend = tpm.find("backend")
        kind = backend.get("type", "?") if backend is not None else "?"
        if kind == "emulator":
            unmovable.append("vTPM state (swtpm)")
        else:
            host_device = backend.find("device") if backend is not None else None
            path = host_device.get("path") if host_device is not None else None
            unmovable.append(f"TPM {kind}" + (f" {path}" if path else ""))
    return tuple(unmovable), tuple(non_file)


def _migration_uid(root: ET.Element) -> str | None:
    for element in root.iter(f"{{{METADATA_NS}}}migration"):
        return element.get("uid")
    return None


class LibvirtDriver:
    """One host reached through libvirt. See the module docstring for how."""

    def __init__(self, access: HostAccess) -> None:
        self.access = access
        self.ssh = SSHHost(access)
        self._conn: Any = None
        self._forward: Any = None
        self._sockdir: tempfile.TemporaryDirectory[str] | None = None
        self._lock = asyncio.Lock()

    # -- plumbing ---------------------------------------------------------------------------
    async def _libvirt(self) -> Any:
        async with self._lock:
            if self._conn is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    if self._conn.isAlive():  # a local check, no round trip
                        return self._conn
                stale, self._conn = self._conn, None
                with contextlib.suppress(libvirt.libvirtError, TimeoutError):
                    await asyncio.wait_for(asyncio.to_thread(stale.close), CALL_TIMEOUT)
            hypervisor, path = _connection_plan(self.access.libvirt_uri, self.access.name)
            if self._forward is not None:
                self._forward.close()
            self._sockdir = tempfile.TemporaryDirectory(prefix="vem-")
            local = str(Path(self._sockdir.name) / "libvirt-sock")
            self._forward = await self.ssh.forward_socket(local, LIBVIRT_SOCKET)
            uri = f"{hypervisor}+unix://{path}?socket={local}"
            try:
                self._conn = await asyncio.wait_for(asyncio.to_thread(libvirt.open, uri), CALL_TIMEOUT)
            except TimeoutError as exc:
                raise StateUnknownError("LibvirtTimeout", f"libvirtd on {self.access.name} did not answer") from exc
            except libvirt.libvirtError as exc:
                raise _classify(exc, f"connecting to libvirtd on {self.access.name}") from exc
            return self._conn

    async def _call(self, what: str, fn: Callable[[Any], T], timeout: float = CALL_TIMEOUT) -> T:
        """fn(connection) in a thread, under a deadline, with libvirt errors classified."""
        conn = await self._libvirt()
        try:
            return await asyncio.wait_for(asyncio.to_thread(fn, conn), timeout)
        except TimeoutError as exc:
            raise StateUnknownError(
                "LibvirtTimeout", f"{what} on {self.access.name} did not finish in {timeout:.0f} s"
            ) from exc
        except libvirt.libvirtError as exc:
            raise _classify(exc, f"{what} on {self.access.name}") from exc

    async def close(self) -> None:
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                # In a thread: closing talks to libvirtd through the forward this loop serves.
                with contextlib.suppress(libvirt.libvirtError, TimeoutError):
                    await asyncio.wait_for(asyncio.to_thread(conn.close), CALL_TIMEOUT)
            if self._forward is not None:
                self._forward.close()
                self._forward = None
        await self.ssh.close()

    @staticmethod
    def _lookup(conn: Any, name: str) -> Any:
        for lookup in (conn.lookupByName, conn.lookupByUUIDString):
            try:
                return lookup(name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() not in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_INVALID_ARG):
                    raise
        return None

    # -- facts ------------------------------------------------------------------------------
    async def probe(self) -> HostStatus:
        def read(conn: Any) -> dict[str, Any]:
            info = conn.getInfo()
            caps = ET.fromstring(conn.getCapabilities())
            pools = []
            for pool in conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
                path = ET.fromstring(pool.XMLDesc()).findtext("./target/path")
                if path:
                    pools.append((pool.name(), path))
            return {
                "cpus": info[2],
                "free": conn.getFreeMemory(),
                "total": info[1] * 1024 * 1024,
                "vendor": caps.findtext("./host/cpu/vendor"),
                "model": caps.findtext("./host/cpu/model"),
                "features": sorted(f.get("name", "") for f in caps.findall("./host/cpu/feature")),
                "hypervisor": conn.getType(),
                "hv_version": conn.getVersion(),
                "lib_version": conn.getLibVersion(),
                "pools": pools,
            }

        facts = await self._call("reading host facts", read)
        paths = [p for _, p in facts["pools"]] or [DEFAULT_POOL_PATH]
        sent = time.time_ns()
        shell = await self.ssh.run(["sh", "-c", _FACTS, "sh", *paths, "/"])
        received = time.time_ns()
        return _host_status(facts, shell.stdout, paths, (sent + received) // 2, self.access)

    async def find_ve(self, name: str) -> VEFacts | None:
        def read(conn: Any) -> tuple[VEFacts, list[str]] | None:
            dom = self._lookup(conn, name)
            if dom is None:
                return None
            root = ET.fromstring(dom.XMLDesc(0))
            disks = _disks(root)
            sizes = []
            for disk in disks:
                try:
                    sizes.append(dom.blockInfo(disk.path)[2])
                except libvirt.libvirtError:
                    sizes.append(0)
            # Every disk on the host, ours first: their backing files tell linked clones apart.
            others = [
                d.path
                for other in conn.listAllDomains(0)
                if other.UUIDString() != dom.UUIDString()
                for d in _disks(ET.fromstring(other.XMLDesc(0)))
            ]
            bridges = tuple(
                str(i.find("source").get("bridge"))  # type: ignore[union-attr]
                for i in root.findall("./devices/interface[@type='bridge']")
                if i.find("source") is not None
            )
            macs = tuple(str(m.get("address")) for m in root.findall("./devices/interface/mac"))
            private = _private_area(root)
            try:
                snapshots = dom.snapshotNum(0)
            except libvirt.libvirtError:  # LXC keeps no snapshots
                snapshots = 0
            storage = disks[0].path if disks else private
            unmovable, non_file_disks = unmoved_storage(root)
            facts = VEFacts(
                name=dom.name(),
                uuid=dom.UUIDString(),
                type=VEKind.CONTAINER if conn.getType() == "LXC" else VEKind.VM,
                state=_state(dom),
                memory_bytes=dom.maxMemory() * 1024,
                vcpus=dom.info()[3],
                disk_bytes=sum(sizes),
                bridges=bridges,
                snapshots=snapshots,
                storage_path=str(PurePosixPath(storage).parent) if storage else None,
                disk_paths=tuple(d.path for d in disks),
                private_area=private,
                macs=macs,
                post_copy_failed=_post_copy_failed(dom.state()),
                unmovable=unmovable,
                non_file_disks=non_file_disks,
            )
            return facts, others

        found = await self._call(f"looking up {name!r}", read)
        if found is None:
            return None
        facts, others = found
        if facts.private_area is not None:
            du = await self.ssh.run(["du", "-sb", "--", facts.private_area], check=False)
            size = du.stdout.split()[0] if du.ok and du.stdout.split() else ""
            facts = replace(facts, disk_bytes=int(size) if size.isdigit() else None)
        return replace(facts, linked_clone=await self._linked(list(facts.disk_paths), others))

    async def _linked(self, ours: list[str], others: list[str]) -> bool:
        """A linked clone (one of our disks has a backing file) or the base of one (another domain's
        disk is backed by ours). Read with qemu-img: libvirt shows backing chains of running domains only."""
        if not ours:
            return False
        script = 'for f in "$@"; do printf "%s\\t" "$f"; qemu-img info -U --output=json "$f" | tr -d "\\n"; echo; done'
        out = await self.ssh.run(["sh", "-c", script, "sh", *ours, *others])
        backing: dict[str, str | None] = {}
        for line in out.stdout.splitlines():
            path, _, info = line.partition("\t")
            with contextlib.suppress(ValueError):
                details = json.loads(info)
                backing[path] = details.get("full-backing-filename") or details.get("backing-filename")
        if any(backing.get(p) for p in ours):
            return True
        return any(backing.get(p) in ours for p in others)

    async def reaches(self, other: HostAccess) -> bool:
        return await self.ssh.reaches(other)

    # -- the job on the source --------------------------------------------------------------
    async def start_job(self, plan: MigrationPlan) -> None:
        if plan.ve is None:
            raise PermanentError("VENotFound", f"VE {plan.spec.source.name!r} is not on {self.access.name}")
        flags = libvirt.VIR_DOMAIN_XML_SECURE | libvirt.VIR_DOMAIN_XML_INACTIVE
        xml = await self._call("reading the domain", lambda c: self._lookup(c, plan.ve.uuid).XMLDesc(flags))  # type: ignore[union-attr]
        if plan.ve.type == VEKind.CONTAINER:
            if plan.mode == Mode.LIVE:
                raise PermanentError(
                    "LiveContainerUnsupported",
                    "libvirt's LXC driver cannot move a running container: stop it and migrate offline, "
                    "or migrate it live between Virtuozzo nodes (driver: prlctl)",
                )
            text = _container_script(plan, xml)
        elif plan.mode == Mode.LIVE:
            if plan.spec.clone:
                raise PermanentError(
                    "CloneNeedsStoppedVM",
                    "libvirt cannot clone a running VM live: stop it and migrate offline with clone, "
                    "or migrate without clone",
                )
            disks = [] if plan.ve.shared_storage else _disks(ET.fromstring(xml))
            sizes = await self._call(
                "reading disk sizes",
                lambda c: [self._lookup(c, plan.ve.uuid).blockInfo(d.path)[0] for d in disks],  # type: ignore[union-attr]
            )
            text = live_script(plan, copy_disks=bool(disks), disks=list(zip(disks, sizes, strict=True)))
        else:
            text = _offline_script(plan, xml)
        await self._mark(plan)
        await hostjob.start(self.ssh, plan.uid, plan.attempt, text)

    async def _mark(self, plan: MigrationPlan) -> None:
        """Tag the domain with the migration UID; live migration carries the tag to the target."""
        assert plan.ve is not None
        element = f"<migration uid='{plan.uid}'/>"

        def tag(conn: Any) -> None:
            dom = self._lookup(conn, plan.ve.uuid)  # type: ignore[union-attr]
            flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
            if dom.isActive():
                flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
            dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, element, METADATA_KEY, METADATA_NS, flags)

        await self._call("tagging the domain", tag)

    async def job(self, plan: MigrationPlan) -> JobObservation:
        record = await hostjob.read(self.ssh, plan.uid, plan.attempt)
        if record.state == "none":
            return JobObservation(state=JobState.NONE)
        if record.state == "running":
            if plan.mode == Mode.LIVE:
                return await self._live_progress(plan)
            return JobObservation(state=JobState.RUNNING, stats=_offline_stats(record.log_tail))
        if record.state == "lost":
            why = "the host restarted since it started" if record.rebooted else "its processes are gone"
            return JobObservation(
                state=JobState.FAILED,
                error_reason="JobLost",
                error_message=f"the migration job on {self.access.name} ended without an exit status: {why}",
                error_class=ErrorClass.RETRYABLE,
            )
        if record.exit_status == 0:
            stats = await self.ssh.run(["cat", f"{hostjob.job_dir(plan.uid, plan.attempt)}/stats"], check=False)
            return JobObservation(state=JobState.COMPLETED, stats=completed_stats(stats.stdout, record.log_tail))
        failure = jobfailure.classify(record.exit_status, record.log_tail)
        return JobObservation(
            state=JobState.CANCELLED if failure.aborted else JobState.FAILED,
            error_reason=failure.reason,
            error_message=failure.message,
            error_class=failure.error_class,
        )

    async def _live_progress(self, plan: MigrationPlan) -> JobObservation:
        assert plan.ve is not None

        def read(conn: Any) -> tuple[dict[str, int], VEState]:
            dom = self._lookup(conn, plan.ve.uuid)  # type: ignore[union-attr]
            return dom.jobStats(0), _state(dom)

        stats, state = await self._call("reading job statistics", read)
        job_state = JobState.RUNNING
        if state == VEState.MIGRATING:
            reason = await self._call("reading the domain state", lambda c: self._lookup(c, plan.ve.uuid).state()[1])  # type: ignore[union-attr]
            job_state = JobState.POST_COPY if reason == libvirt.VIR_DOMAIN_PAUSED_POSTCOPY else JobState.SWITCHOVER
        return JobObservation(
            state=job_state,
            stats=JobStats(
                bytes_processed=stats.get("data_processed"),
                bytes_remaining=stats.get("data_remaining"),
                bytes_total=stats.get("data_total"),
                dirty_rate_bytes_per_second=_dirty_rate(stats),
                iteration=stats.get("memory_iteration"),
            ),
        )

    async def abort_job(self, plan: MigrationPlan) -> None:
        if plan.mode == Mode.LIVE and plan.ve is not None:

            def abort(conn: Any) -> None:
                dom = self._lookup(conn, plan.ve.uuid)  # type: ignore[union-attr]
                if dom is not None and dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE:
                    dom.abortJob()

            with contextlib.suppress(PermanentError):
                await self._call("aborting the migration", abort)
        await hostjob.kill(self.ssh, plan.uid, plan.attempt)

    async def force_complete(self, plan: MigrationPlan) -> None:
        if plan.mode != Mode.LIVE or plan.ve is None:
            return

        def finish(conn: Any) -> None:
            dom = self._lookup(conn, plan.ve.uuid)  # type: ignore[union-attr]
            if plan.spec.post_copy:
                dom.migrateStartPostCopy(0)
            elif _state(dom) == VEState.RUNNING:
                dom.suspend()  # nothing left dirty: the next iteration converges; resumed on the target

        await self._call("forcing completion", finish)

    async def source_disposed(self, plan: MigrationPlan, disposition: SourceDisposition) -> bool:
        if disposition == SourceDisposition.KEPT:
            return True
        dom = await self._call("looking up the source", lambda c: self._lookup(c, plan.spec.source.name))
        return dom is None

    async def dispose_source(self, plan: MigrationPlan, disposition: SourceDisposition) -> None:
        if disposition == SourceDisposition.RENAMED_MIGRATED:
            await self._rename_migrated(plan)
            return
        if disposition != SourceDisposition.REMOVED:
            raise PermanentError("UnsupportedDisposition", f"libvirt VMs are removed, not {disposition.value}")

        def remove(conn: Any) -> list[str]:
            dom = self._lookup(conn, plan.spec.source.name)
            if dom is None:
                return []
            if dom.isActive():
                # Never remove a running copy: the target copy is verified, but this one still runs.
                raise PermanentError("SourceStillRunning", f"{dom.name()} still runs on {self.access.name}")
            root = ET.fromstring(dom.XMLDesc(0))
            files = [] if plan.ve is not None and plan.ve.shared_storage else [d.path for d in _disks(root)]
            # A disk another domain here also uses is that domain's too: it stays.
            shared = {
                d.path
                for other in conn.listAllDomains(0)
                if other.UUIDString() != dom.UUIDString()
                for d in _disks(ET.fromstring(other.XMLDesc(0)))
            }
            files = [f for f in files if f not in shared]
            flags = libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            dom.undefineFlags(flags | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
            return files

        files = await self._call("removing the source domain", remove)
        if files:
            await self.ssh.run(["rm", "-f", "--", *files])
            await self._refresh_pools(files)
            # An earlier offline migration put them in <path>/<UUID>/: that directory goes too, once empty.
            own = {str(PurePosixPath(f).parent) for f in files if PurePosixPath(f).parent.name == plan.ve.uuid}  # type: ignore[union-attr]
            if own:
                await self.ssh.run(["rmdir", "--ignore-fail-on-non-empty", "--", *own], check=False)

    async def _refresh_pools(self, removed: list[str]) -> None:
        """Tell libvirt's storage pools that files are gone. A directory pool keeps its list of volumes,
        and a disk-copying migration into this host later skips creating a disk the pool still lists
        (qemuMigrationDstPrecreateDisk), so QEMU fails to open it: moving a VM back here would fail."""

        def refresh(conn: Any) -> None:
            for directory in sorted({str(PurePosixPath(f).parent) for f in removed}):
                try:
                    conn.storagePoolLookupByTargetPath(directory).refresh(0)
                except libvirt.libvirtError:
                    continue  # no pool there (or an inactive one): nothing listed the file

        await self._call("refreshing storage pools", refresh)

    async def _rename_migrated(self, plan: MigrationPlan) -> None:
        """A container's source, as prlctl leaves it: the private area renamed `<dir>.migrated`, the
        configuration kept as `<name>.xml.migrated` in libvirt's configuration directory, and the domain
        undefined. Each step may be repeated, so a pass interrupted half-way is finished by the next."""

        def read(conn: Any) -> tuple[str, str | None] | None:
            dom = self._lookup(conn, plan.spec.source.name)
            if dom is None:
                return None
            if dom.isActive():
                raise PermanentError("SourceStillRunning", f"{dom.name()} still runs on {self.access.name}")
            xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE | libvirt.VIR_DOMAIN_XML_INACTIVE)
            return xml, _private_area(ET.fromstring(xml))

        found = await self._call("reading the source container", read)
        if found is None:
            return
        xml, private = found
        name = ET.fromstring(xml).findtext("name") or plan.spec.source.name
        # mv -T refuses to move into an existing <dir>.migrated (an earlier migration's): nothing is merged.
        rename = 'if [ -e "$1" ]; then mv -T -- "$1" "$1.migrated"; fi; cat >"$2.tmp" && mv -- "$2.tmp" "$2"'
        config = f"{LXC_CONFIG_DIR}/{name}.xml.migrated"
        await self.ssh.run(["sh", "-c", rename, "sh", private or "", config], input=xml)
        await self._call("undefining the source container", lambda c: self._lookup(c, name).undefine())

    async def forget_job(self, plan: MigrationPlan) -> None:
        await hostjob.forget(self.ssh, plan.uid)

    # -- the target -------------------------------------------------------------------------
    async def verify_target(self, plan: MigrationPlan) -> bool:
        def ours(conn: Any) -> list[str] | None:
            """The copy's disk paths when the domain is this migration's and in the right state."""
            dom = self._lookup(conn, _target_name(plan))
            if dom is None:
                return None
            root = ET.fromstring(dom.XMLDesc(0))
            if _migration_uid(root) != plan.uid or not dom.isPersistent():
                return None
            # Paused here means paused by a person (a paused VE moves live and stays paused); a domain
            # still paused by the migration itself reads MIGRATING, and is not a finished copy.
            if plan.mode == Mode.LIVE and _state(dom) not in (VEState.RUNNING, VEState.PAUSED):
                return None
            private = _private_area(root)
            return [d.path for d in _disks(root)] + ([private] if private else [])

        paths = await self._call("verifying the target copy", ours)
        if paths is None:
            return False
        # The job compared sha256 sums on both ends before defining the domain; the files must be there.
        present = await self.ssh.run(
            ["sh", "-c", 'for f in "$@"; do [ -e "$f" ] || exit 1; done', "sh", *paths], check=False
        )
        return present.ok

    async def target_leftovers(self, plan: MigrationPlan) -> bool:
        def ours(conn: Any) -> bool:
            dom = self._lookup(conn, _target_name(plan))
            return dom is not None and _migration_uid(ET.fromstring(dom.XMLDesc(0))) == plan.uid

        if await self._call("looking for leftovers", ours):
            return True
        owned = await self.ssh.run(["sh", "-c", _OWNED, "sh", _record(plan)])
        return bool(owned.stdout.strip())

    async def cleanup_target(self, plan: MigrationPlan) -> None:
        """Remove this migration's half-built copy: its domain (only an inactive one tagged with this
        migration's UID) and exactly the files and directories the job recorded as it created them,
        each only while the path still holds the very file recorded."""

        def remove(conn: Any) -> None:
            dom = self._lookup(conn, _target_name(plan))
            if dom is None or _migration_uid(ET.fromstring(dom.XMLDesc(0))) != plan.uid:
                return  # not this migration's: never touched
            if dom.isActive():
                # It may be the only running copy (post-copy, or a job that finished unseen): never stopped here.
                raise PermanentError("TargetActive", f"{dom.name()} runs on {self.access.name}; left as it is")
            if dom.isPersistent():
                if conn.getType() == "LXC":  # takes no undefine flags: it has no saved state or NVRAM
                    dom.undefine()
                else:
                    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)

        await self._call("removing the half-built target", remove)
        out = (await self.ssh.run(["sh", "-c", _REMOVE_OWNED, "sh", _record(plan)])).stdout
        removed = [line[len("removed ") :] for line in out.splitlines() if line.startswith("removed ")]
        kept = [line[len("kept ") :] for line in out.splitlines() if line.startswith("kept ")]
        if removed:
            await self._refresh_pools(removed)
        if kept:
            raise PermanentError(
                "TargetNotEmpty",
                f"left on {self.access.name}: {', '.join(kept)[:500]} (created by this migration, but it holds "
                "files this migration did not make)",
            )


# -- pure helpers -----------------------------------------------------------------------------
def _target_name(plan: MigrationPlan) -> str:
    return plan.ve.name if plan.ve is not None else plan.spec.source.name


def _target_dir(plan: MigrationPlan, ve_uuid: str) -> str:
    base = plan.spec.target.path or DEFAULT_POOL_PATH
    return f"{base.rstrip('/')}/{ve_uuid}"


def _copy_uuid(plan: MigrationPlan) -> str:
    """The copy's UUID: the VE's own, or for a clone a new one derived from the migration UID, so every
    pass (and a restarted operator) computes the same."""
    assert plan.ve is not None
    if plan.spec.clone:
        return str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"vemigrate:{plan.uid}"))
    return plan.ve.uuid


def _record(plan: MigrationPlan) -> str:
    """On the target: what this attempt's job created there, one `<kind> <identity> <path>` line each
    (kind: file, dir, or tree for a container's private area), appended the moment it is created."""
    return f"{hostjob.job_dir(plan.uid, plan.attempt)}/created"


# A file's identity: device, inode and birth time (a freed inode number is soon given to a new file).
_IDENT = 'ident() { stat -c %d:%i:%.9W -- "$1"; }\n'


# On the target, $1 the record, then (path, format, virtual size) per disk: each disk file is created
# for the live copy (libvirt copies into a file that exists, as OpenStack Nova pre-creates them) under a
# name of its own (mktemp), then linked to its path, which fails when anything is already there: that
# file is not this migration's, and stays as it is. Both names go into the record as they appear.
_CREATE_DISKS = (
    _IDENT
    + r"""
umask 077
rec=$1; shift
mkdir -p -- "$(dirname -- "$rec")" || exit 1
while [ $# -ge 3 ]; do
    path=$1 fmt=$2 size=$3; shift 3
    dir=$(dirname -- "$path")
    mkdir -p -- "$dir" && tmp=$(mktemp "$dir/.vemigrate-XXXXXXXX") || exit 1
    printf 'file %s %s\n' "$(ident "$tmp")" "$tmp" >>"$rec"
    chmod 600 -- "$tmp" && qemu-img create -q -f "$fmt" "$tmp" "$size" || exit 1
    if ! ln -T -- "$tmp" "$path" 2>/dev/null; then
        rm -f -- "$tmp"
        echo "error: $path already exists on the target; it is not this migration's and stays as it is" >&2
        exit 3
    fi
    printf 'file %s %s\n' "$(ident "$path")" "$path" >>"$rec"
    rm -f -- "$tmp"
done
"""
)

# On the target, $1 the record, $2 the directory, $3 its kind: the directory is made, failing when
# anything is already there, and recorded.
_CREATE_DIR = (
    _IDENT
    + r"""
umask 077
mkdir -p -- "$(dirname -- "$1")" "$(dirname -- "$2")" || exit 1
if ! mkdir -- "$2" 2>/dev/null; then
    echo "error: $2 already exists on the target; it is not this migration's and stays as it is" >&2
    exit 3
fi
printf '%s %s %s\n' "$3" "$(ident "$2")" "$2" >>"$1"
"""
)

# On the target, $1 the record, $2 the file, $3 zstd or cat: receives one file as `<file>.part` (both
# names recorded: the rename keeps the inode), printing its sha256 and size as written.
_RECEIVE = (
    _IDENT
    + r"""
part=$2.part
if ! (set -C; : >"$part") 2>/dev/null; then
    echo "error: $part already exists on the target; it is not this migration's and stays as it is" >&2
    exit 3
fi
id=$(ident "$part")
printf 'file %s %s\nfile %s %s\n' "$id" "$part" "$id" "$2" >>"$1"
if [ "$3" = zstd ]; then zstd -q -d -c; else cat; fi | tee -- "$part" | sha256sum | cut -d' ' -f1
stat -c %s -- "$part"
"""
)

_SAME = _IDENT + 'same() { [ -e "$2" ] && [ "$(ident "$2")" = "$1" ]; }\n'

# On the target, $1 the record: prints `<kind> <path>` for every entry still there as recorded.
_OWNED = (
    _SAME
    + r"""
[ -r "$1" ] || exit 0
while read -r kind id path; do same "$id" "$path" && printf '%s %s\n' "$kind" "$path"; done <"$1"
exit 0
"""
)

# On the target, $1 the record: removes exactly what it lists, files first, then directories newest
# first (a directory that still holds something else is kept and named), then the record itself.
_REMOVE_OWNED = (
    _SAME
    + r"""
[ -r "$1" ] || exit 0
while read -r kind id path; do
    [ "$kind" = file ] && same "$id" "$path" && rm -f -- "$path" && printf 'removed %s\n' "$path"
done <"$1"
tac -- "$1" | while read -r kind id path; do
    case $kind in
    dir) same "$id" "$path" && { rmdir -- "$path" 2>/dev/null || printf 'kept %s\n' "$path"; } ;;
    tree) same "$id" "$path" && rm -rf -- "$path" ;;
    esac
done
rm -f -- "$1"
rmdir -- "$(dirname -- "$1")" "$(dirname -- "$(dirname -- "$1")")" 2>/dev/null
exit 0
"""
)


def _create_dir(plan: MigrationPlan, directory: str, kind: str) -> str:
    return _on_target(plan, ["sh", "-c", _CREATE_DIR, "sh", _record(plan), directory, kind])


def _forget_record(plan: MigrationPlan) -> str:
    """The job's last line: the copy is complete, so nothing on the target is a leftover any more."""
    job, parent = hostjob.job_dir(plan.uid, plan.attempt), hostjob.migration_dir(plan.uid)
    return _on_target(plan, ["sh", "-c", 'rm -rf -- "$1" && { rmdir -- "$2" 2>/dev/null; true; }', "sh", job, parent])


def _define_on_target(plan: MigrationPlan, xml: str, uri: str) -> list[str]:
    # base64: no text of the domain (names, descriptions) is ever read by the shell.
    encoded = base64.b64encode(xml.encode()).decode()
    return [
        f"printf %s {encoded} | base64 -d >domain.xml",
        _on_target(plan, ["virsh", "-c", uri, "define", "/dev/stdin"]) + " <domain.xml",
    ]


def live_argv(plan: MigrationPlan, *, copy_disks: bool) -> list[str]:
    """The `virsh migrate` command for a live migration, one spec option at a time."""
    spec, ve = plan.spec, plan.ve
    assert ve is not None
    argv = ["virsh", "-c", "qemu:///system", "migrate", "--live", "--p2p", "--persistent", "--verbose"]
    argv.append("--abort-on-error")
    if spec.tunnel and copy_disks:
        # libvirt cannot tunnel a disk copy; QEMU's migration TLS encrypts memory and disks alike. The
        # EncryptedDiskCopy pre-flight check made sure both hosts have it.
        argv.append("--tls")
    elif spec.tunnel:
        argv.append("--tunnelled")
    if copy_disks:
        argv.append("--copy-storage-all")
    if spec.compression:
        argv.append("--compressed")
    if spec.bandwidth_mib_ps:
        argv += ["--bandwidth", str(spec.bandwidth_mib_ps)]
    if spec.auto_converge:
        argv.append("--auto-converge")
    if spec.post_copy:
        argv.append("--postcopy")
    argv += [ve.uuid, _destination(plan)]
    if not spec.tunnel and plan.target.migration_address:
        argv += ["--migrateuri", f"tcp://{plan.target.migration_address}"]
    return argv


def _destination(plan: MigrationPlan) -> str:
    t = plan.target
    return f"qemu+ssh://{t.user}@{t.data_address}:{t.port}/system"


def live_script(plan: MigrationPlan, *, copy_disks: bool, disks: Sequence[tuple[_Disk, int]] = ()) -> str:
    """`disks`: (disk, virtual size) of each disk the live copy creates on the target."""
    ve = plan.ve
    assert ve is not None
    lines = []
    if copy_disks and disks:
        created = [word for disk, size in disks for word in (disk.path, disk.format, str(size))]
        lines.append(_on_target(plan, ["sh", "-c", _CREATE_DISKS, "sh", _record(plan), *created]))
    if plan.spec.max_downtime_ms:
        setting = ["virsh", "-c", "qemu:///system", "migrate-setmaxdowntime", ve.uuid, str(plan.spec.max_downtime_ms)]
        lines.append(hostjob.command(setting))
    lines.append(hostjob.command(live_argv(plan, copy_disks=copy_disks)))
    # The completed job's statistics (downtime) are kept by the target's libvirtd.
    stats = ["virsh", "-c", _destination(plan), "domjobinfo", "--completed", ve.uuid]
    lines.append(hostjob.command(stats) + " >stats 2>&1 || true")
    lines.append(_forget_record(plan))
    return hostjob.script(lines)


_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}
_DATA = re.compile(r"Data (processed|total):\s+([\d.]+)\s+(\w+)")


def completed_stats(domjobinfo: str, log: str) -> JobStats:
    """A finished job's figures: `virsh domjobinfo --completed` for live jobs, the job log for offline."""
    downtime = _DOWNTIME.search(domjobinfo)
    data = {kind: int(float(value) * _UNITS.get(unit, 1)) for kind, value, unit in _DATA.findall(domjobinfo)}
    offline = _offline_stats(log)
    return JobStats(
        bytes_processed=data.get("processed", offline.bytes_processed or None),
        bytes_total=data.get("total", offline.bytes_total),
        downtime_ms=int(downtime.group(1)) if downtime else None,
    )


def _dirty_rate(stats: dict[str, int]) -> int | None:
    rate = stats.get("memory_dirty_rate")  # pages per second
    page = stats.get("memory_page_size", 4096)
    return rate * page if rate is not None else None


def _offline_stats(log: str) -> JobStats:
    """Bytes copied so far: finished disks (`done N`) plus dd's last progress line on the current one."""
    total = finished = current = 0
    for raw in log.splitlines():
        line = raw.split("\r")[-1].strip()
        if line.startswith("total "):
            total = int(line.split()[1])
        elif line.startswith("done "):
            finished += int(line.split()[1])
            current = 0
        elif match := _PROGRESS.match(line):
            current = int(match.group(1))
    return JobStats(bytes_processed=finished + current, bytes_total=total or None)


def _on_target(plan: MigrationPlan, argv: list[str]) -> str:
    """A script line that runs argv on the target over the source node's own SSH (host key checked)."""
    t = plan.target
    ssh = [
        "ssh",
        "-p",
        str(t.port),
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        f"{t.user}@{t.data_address}",
    ]
    return shlex.join([*ssh, "--", shlex.join(argv)])


def _copy_lines(plan: MigrationPlan, src: str, dst: str) -> list[str]:
    """Stream one file to the target, compressed unless told not to; its sha256 is taken from the stream
    on both ends as it passes (no second read of either file), and compared with its size."""
    q = shlex.quote
    part = f"{dst}.part"
    receive = ["sh", "-c", _RECEIVE, "sh", _record(plan), dst, "zstd" if plan.spec.compression else "cat"]
    pack = " | zstd -q -c -T0" if plan.spec.compression else ""
    return [
        "rm -f hash.fifo hash.local && mkfifo hash.fifo",
        "sha256sum <hash.fifo >hash.local &",
        f"got=$(dd if={q(src)} bs=4M status=progress | tee hash.fifo{pack} | {_on_target(plan, receive)})",
        "wait $!",
        f'want=$(printf "%s\\n%s" "$(cut -d" " -f1 hash.local)" "$(stat -c %s {q(src)})")',
        f'[ "$got" = "$want" ] || {{ echo "error: checksum mismatch for" {q(src)} >&2; exit {EXIT_CHECKSUM}; }}',
        _on_target(plan, ["mv", "--", part, dst]),
        f"echo done $(stat -c %s {q(src)})",
    ]


def _disk_file(disk: _Disk) -> str:
    """A disk's file name in <path>/<UUID>/: by its device, so two disks of one base name cannot meet."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", disk.target) or not re.fullmatch(r"[a-z0-9]{1,16}", disk.format):
        raise PermanentError("UnsupportedDisk", f"disk {disk.target!r} ({disk.format}) cannot name a file")
    return f"{disk.target}.{disk.format}"


def _target_xml(plan: MigrationPlan, xml: str, directory: str) -> str:
    """The domain as the target defines it: disks in <path>/<UUID>/, this migration's tag, and for a
    clone a new UUID and no MAC addresses (libvirt assigns new ones)."""
    root = ET.fromstring(xml)
    for disk in _disk_elements(root):
        source = disk.find("source")
        assert source is not None
        source.set("file", f"{directory}/{_disk_file(_disk_of(disk))}")
    for fs in root.findall("./devices/filesystem[@type='mount']"):
        source, target = fs.find("source"), fs.find("target")
        if source is not None and target is not None and target.get("dir") == "/":
            source.set("dir", directory)  # a container's private area is the directory itself
    if plan.spec.clone:
        uuid_el = root.find("uuid")
        if uuid_el is not None:
            uuid_el.text = _copy_uuid(plan)
        for interface in root.findall("./devices/interface"):
            mac = interface.find("mac")
            if mac is not None:
                interface.remove(mac)
    metadata = root.find("metadata")
    if metadata is None:
        metadata = ET.SubElement(root, "metadata")
    for old in metadata.findall(f"{{{METADATA_NS}}}migration"):
        metadata.remove(old)
    ET.SubElement(metadata, f"{{{METADATA_NS}}}migration", {"uid": plan.uid})
    return ET.tostring(root, encoding="unicode")


def _offline_script(plan: MigrationPlan, xml: str) -> str:
    """Copy every disk (and a suspended VM's saved memory) into <path>/<UUID>/ on the target, verify
    each by sha256, then define the VM there (and restore its saved state as a managed save)."""
    ve = plan.ve
    assert ve is not None
    _refuse_change_sid(plan)
    suspended = ve.state == VEState.SUSPENDED
    if suspended and plan.spec.clone:
        raise PermanentError(
            "CloneOfSuspendedVM", "a suspended VM's saved memory cannot take a new UUID: resume or stop it first"
        )
    directory = _target_dir(plan, _copy_uuid(plan))
    saved = f"{directory}/memory.save"
    copies = [(d.path, f"{directory}/{_disk_file(d)}") for d in _disks(ET.fromstring(xml))]
    if suspended:
        copies.append((_save_image(ve.name), saved))
    q = shlex.quote
    lines = [
        "echo total $(stat -c %s " + " ".join(q(src) for src, _ in copies) + " | awk '{s+=$1} END {print s+0}')",
        _create_dir(plan, directory, "dir"),
    ]
    for src, dst in copies:
        lines += _copy_lines(plan, src, dst)
    lines += _define_on_target(plan, _target_xml(plan, xml, directory), "qemu:///system")
    if suspended:
        lines.append(_on_target(plan, ["sh", "-c", 'cat >"$1"', "sh", f"{directory}/domain.xml"]) + " <domain.xml")
        # Restore paused into the defined domain, then save it the managed way: suspended, as it was.
        lines.append(
            _on_target(
                plan,
                ["virsh", "-c", "qemu:///system", "restore", saved, "--xml", f"{directory}/domain.xml", "--paused"],
            )
        )
        lines.append(_on_target(plan, ["virsh", "-c", "qemu:///system", "managedsave", "--running", "--", ve.name]))
        lines.append(_on_target(plan, ["rm", "-f", "--", saved, f"{directory}/domain.xml"]))
    lines.append(_forget_record(plan))
    return hostjob.script(lines)


# Names and sha256 of every file, and every symlink's target (never followed: a container's links
# point into its own root), sorted the same way on both hosts.
_MANIFEST = (
    "export LC_ALL=C; { find . -type f -print0 | sort -z | xargs -0 -r sha256sum --; "
    "find . -type l -printf '%p -> %l\\n' | sort; } | sha256sum | cut -d' ' -f1"
)


def _container_script(plan: MigrationPlan, xml: str) -> str:
    """Stream a stopped container's private area with tar into <path>/<UUID> on the target, compare
    manifests of both trees, then define the container there."""
    ve = plan.ve
    assert ve is not None
    _refuse_change_sid(plan)
    if ve.private_area is None:
        raise PermanentError("NoPrivateArea", f"container {ve.name} has no root file system directory to copy")
    q = shlex.quote
    private, directory = ve.private_area, _target_dir(plan, _copy_uuid(plan))
    unpack_tar = 'tar -C "$1" --numeric-owner -xpf -'
    unpack = ["sh", "-c", ("zstd -q -d -c | " if plan.spec.compression else "") + unpack_tar, "sh", directory]
    pack = " | zstd -q -c -T0" if plan.spec.compression else ""
    manifest = ["sh", "-c", 'cd "$1" && ' + _MANIFEST, "sh", directory]
    lines = [
        f"echo total $(du -sb -- {q(private)} | cut -f1)",
        _create_dir(plan, directory, "tree"),
        f"sum=$(cd {q(private)} && {_MANIFEST})",
        f"tar -C {q(private)} --numeric-owner -cpf - . | dd bs=4M status=progress{pack} | {_on_target(plan, unpack)}",
        f"remote=$({_on_target(plan, manifest)})",
        f'[ "$sum" = "$remote" ] || {{ echo "error: the private area of" {q(ve.name)} "differs on the target" >&2; '
        "exit 4; }",
        f"echo done $(du -sb -- {q(private)} | cut -f1)",
        *_define_on_target(plan, _target_xml(plan, xml, directory), "lxc:///system"),
        _forget_record(plan),
    ]
    return hostjob.script(lines)


def _refuse_change_sid(plan: MigrationPlan) -> None:
    if plan.spec.change_sid:
        raise PermanentError(
            "ChangeSidUnsupported",
            "libvirt has no --changesid: run Sysprep in the clone instead, and migrate without changeSid",
        )


def _save_image(name: str) -> str:
    return f"/var/lib/libvirt/qemu/save/{name}.save"


def _dotted(version: int) -> str:
    """libvirt's version numbers: major * 1,000,000 + minor * 1,000 + micro."""
    return f"{version // 1_000_000}.{version // 1000 % 1000}.{version % 1000}"


def _host_status(facts: dict[str, Any], shell: str, paths: list[str], sent_ns: int, access: HostAccess) -> HostStatus:
    storage: list[StorageFacts] = []
    bridges: list[str] = []
    subnets: list[str] = []
    speeds: dict[str, int] = {}
    addr_dev: dict[str, str] = {}
    offset_ms = None
    kernel = None
    tls = None
    cpuid = None
    for line in shell.splitlines():
        word, _, rest = line.partition(" ")
        parts = rest.split()
        if word == "df" and len(parts) >= 3 and parts[0].isdigit() and parts[1].isdigit():
            path = rest.split(None, 2)[2]  # the path asked about, spaces and all
            storage.append(StorageFacts(path=path, free_bytes=int(parts[0]), total_bytes=int(parts[1])))
        elif word == "bridge" and parts:
            bridges.append(parts[0])
        elif word == "addr" and len(parts) >= 2:
            subnets.append(str(ipaddress.ip_interface(parts[1]).network))
            addr_dev[parts[1].split("/")[0]] = parts[0]
        elif word == "speed" and len(parts) >= 2 and parts[1].lstrip("-").isdigit():
            speeds[parts[0]] = int(parts[1])
        elif word == "clock" and parts:
            offset_ms = (int(parts[0]) - sent_ns) // 1_000_000
        elif word == "kernel" and parts:
            kernel = parts[0]
        elif word == "tls" and parts:
            tls = parts[0] == "yes"
        elif word == "cpuid" and parts:
            cpuid = parts[0] == "yes"
    device = addr_dev.get(access.data_address)
    speed = speeds.get(device) if device else None
    return HostStatus(
        cpu=CPUFacts(vendor=facts["vendor"], model=facts["model"], count=facts["cpus"], features=facts["features"]),
        memory_total_bytes=facts["total"],
        memory_free_bytes=facts["free"],
        storage=storage,
        network=NetworkFacts(
            bridges=sorted(set(bridges)),
            subnets=sorted(set(subnets)),
            link_speed_mbps=speed if speed and speed > 0 else None,
        ),
        time_offset_ms=offset_ms,
        cpuid_override=cpuid,
        version=VersionFacts(
            product=f"libvirt {_dotted(facts['lib_version'])}",
            hypervisor=f"{facts['hypervisor']} {_dotted(facts['hv_version'])}",
            kernel=kernel,
        ),
        ve_types=[VEKind.CONTAINER] if facts["hypervisor"] == "LXC" else [VEKind.VM],
        default_path=paths[0] if paths else DEFAULT_POOL_PATH,
        encrypted_disk_copy=tls,
        last_probe_time=datetime.now(UTC),
    )
