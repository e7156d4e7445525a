"""What the libvirt driver reads of a host and of a VE: the host's facts (libvirt's own, and one shell
round trip for what libvirt does not say: `_FACTS`, read by `_host_status`), and a VE's facts from its
domain XML and state: the disks a copy moves (`_disks`), a container's private area, what a copy would
leave behind (`unmoved_storage`), the VE's state, a failed post-copy, and the migration that made it
(the `<vemigrate:migration uid=.../>` metadata). No I/O here: functions of what libvirt returned, and of
the domain object they are given (`_state` asks it).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import libvirt

from vemigrate.api.host import Capability, CPUFacts, HostStatus, StorageFacts, VEKind, VersionFacts
from vemigrate.core.access import HostAccess
from vemigrate.core.observation import JobState, VEState
from vemigrate.drivers import hostfacts

DEFAULT_POOL_PATH = "/var/lib/libvirt/images"

# What the driver does (HostStatus.capabilities), by the host's hypervisor. What it lacks, start_job
# refuses too (the last guard, should the check be skipped): no clone of a running VM (libvirt moves it
# with its UUID), none of a suspended one (its saved memory keeps the UUID), no changeSid (libvirt has no
# Sysprep), no live container (the LXC driver cannot migrate), no live tuning for containers.
QEMU_CAPABILITIES = (
    Capability.LIVE_VM,
    Capability.OFFLINE_VM,
    Capability.CLONE,
    Capability.BANDWIDTH,
    Capability.MAX_DOWNTIME,
    Capability.AUTO_CONVERGE,
    Capability.POST_COPY,
)
LXC_CAPABILITIES = (Capability.OFFLINE_CONTAINER, Capability.CLONE, Capability.BANDWIDTH)
METADATA_NS = "https://vemigrate.io/migration"
METADATA_KEY = "vemigrate"
ET.register_namespace("vemigrate", METADATA_NS)

# Facts from the shell, in one round trip: df of the given paths (hostfacts.DF), bridges, addresses, link speeds,
# clock, kernel (hostfacts.SHELL), and whether QEMU migration TLS certificates are in place.
_FACTS = (
    hostfacts.DF
    + r"""for b in /sys/class/net/*/bridge; do [ -d "$b" ] && echo "bridge $(basename "$(dirname "$b")")"; done
"""
    + hostfacts.SHELL
    + r"""[ -e /proc/vz/cpuid_override ] && echo "cpuid yes" || echo "cpuid no"
key='^[[:space:]]*migrate_tls_x509_cert_dir[[:space:]]*=[[:space:]]*'
tls=$(sed -n "s/$key\"\(.*\)\"/\1/p" /etc/libvirt/qemu.conf 2>/dev/null)
[ -n "$tls" ] || tls=/etc/pki/qemu
[ -r "$tls/server-cert.pem" ] && [ -r "$tls/client-cert.pem" ] && echo "tls yes" || echo "tls no"
"""
)


@dataclass(frozen=True)
class _Disk:
    target: str  # vda
    path: str  # file on the host
    format: str


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


def _disk_bytes(conn: Any, dom: Any, paths: list[str]) -> int | None:
    """The disks' allocated size on the host, or None when libvirt cannot say at once. Read from the
    domain's block stats without waiting (NOWAIT): a domain busy with a job (the incoming side of a
    migration above all) would hold `blockInfo` on its state change lock for libvirt's 30 s, and with
    it the pass and the host's thread."""
    if not paths:
        return 0
    try:
        stats = conn.domainListGetStats(
            [dom], libvirt.VIR_DOMAIN_STATS_BLOCK, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT
        )
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
            raise
        # A driver without domain stats (LXC) has no migration job to wait on either.
        return sum(int(dom.blockInfo(path)[2]) for path in paths)
    block = stats[0][1] if stats else {}
    physical = {
        block.get(f"block.{i}.path"): block.get(f"block.{i}.physical") for i in range(int(block.get("block.count", 0)))
    }
    sizes = [physical.get(path) for path in paths]
    known = [int(size) for size in sizes if size is not None]
    return sum(known) if len(known) == len(sizes) else None


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


def _in_post_copy(state: list[int]) -> bool:
    """libvirt's `dom.state()` while post-copy is under way: the source paused, the target running, each
    with reason post-copy (not yet failed)."""
    kind, reason = state[0], state[1]
    if kind == libvirt.VIR_DOMAIN_PAUSED:
        return bool(reason == libvirt.VIR_DOMAIN_PAUSED_POSTCOPY)
    return bool(kind == libvirt.VIR_DOMAIN_RUNNING and reason == libvirt.VIR_DOMAIN_RUNNING_POSTCOPY)


def live_job_state(state: list[int]) -> JobState:
    """A running live job's state from the source domain's `dom.state()`: paused for the last copy is
    the switchover; in post-copy, and after a failed one, the VE is split between the hosts (post-copy
    too: such a job is never aborted or timed out, only finished, resumed or left to a person)."""
    if _in_post_copy(state) or _post_copy_failed(state):
        return JobState.POST_COPY
    if state[0] == libvirt.VIR_DOMAIN_PAUSED and state[1] == libvirt.VIR_DOMAIN_PAUSED_MIGRATION:
        return JobState.SWITCHOVER
    return JobState.RUNNING


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


def _dotted(version: int) -> str:
    """libvirt's version numbers: major * 1,000,000 + minor * 1,000 + micro."""
    return f"{version // 1_000_000}.{version // 1000 % 1000}.{version % 1000}"


def _host_status(facts: dict[str, Any], shell: str, paths: list[str], sent_ns: int, access: HostAccess) -> HostStatus:
    """`paths`: the storage paths the facts script was given, in that order (the first is the default)."""
    storage: list[StorageFacts] = []
    bridges: list[str] = []
    links = hostfacts.Links()
    offset_ms = None
    kernel = None
    tls = None
    cpuid = None
    for word, _rest, parts in links.read(shell):
        if word == "df":
            if df := hostfacts.storage(parts, paths):
                storage.append(StorageFacts(path=df.path, free_bytes=df.free_bytes, total_bytes=df.total_bytes))
        elif word == "bridge" and parts:
            bridges.append(parts[0])
        elif word == "clock" and parts:
            offset_ms = (int(parts[0]) - sent_ns) // 1_000_000
        elif word == "kernel" and parts:
            kernel = parts[0]
        elif word == "tls" and parts:
            tls = parts[0] == "yes"
        elif word == "cpuid" and parts:
            cpuid = parts[0] == "yes"
    return HostStatus(
        cpu=CPUFacts(vendor=facts["vendor"], model=facts["model"], count=facts["cpus"], features=facts["features"]),
        memory_total_bytes=facts["total"],
        memory_free_bytes=facts["free"],
        storage=storage,
        network=links.network(bridges, access.data_address),
        time_offset_ms=offset_ms,
        cpuid_override=cpuid,
        version=VersionFacts(
            product=f"libvirt {_dotted(facts['lib_version'])}",
            hypervisor=f"{facts['hypervisor']} {_dotted(facts['hv_version'])}",
            kernel=kernel,
        ),
        ve_types=[VEKind.CONTAINER] if facts["hypervisor"] == "LXC" else [VEKind.VM],
        capabilities=list(LXC_CAPABILITIES if facts["hypervisor"] == "LXC" else QEMU_CAPABILITIES),
        default_path=paths[0] if paths else DEFAULT_POOL_PATH,
        encrypted_disk_copy=tls,
        last_probe_time=datetime.now(UTC),
    )
