"""Lab VMs: a qcow2 disk with a known payload in the host's pool, a libvirt domain booting the lab
guest, and the states the seed distinguishes (running, paused, stopped, suspended = managed save).
Also the shapes migration refuses: an internal snapshot, a linked clone (qcow2 backing file)."""

from __future__ import annotations

import hashlib
import re
import secrets
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import libvirt

from vemigrate_dev.lab.guest import PAYLOAD_OFFSET, payload
from vemigrate_dev.lab.host import BOOT_PATH, POOL_PATH, enter
from vemigrate_dev.lab.process import CommandError, run
from vemigrate_dev.lab.state import HostState

METADATA_NS = "https://vemigrate.io/lab"
KERNEL = f"{BOOT_PATH}/vemigrate-vmlinux"
INITRD = f"{BOOT_PATH}/vemigrate-initrd.gz"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_BOOTED = re.compile(r"VEMIGRATE-BOOTED boot=(\w+)")
_BEAT = re.compile(r"HB boot=(\w+) n=(\d+)")
_DISK = re.compile(r"DISK md5=(\w+)")


class VMState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"
    SUSPENDED = "suspended"


@dataclass(frozen=True)
class VMInfo:
    name: str
    uuid: str
    host: str
    state: VMState
    disk: str  # path inside the host
    serial_log: Path  # the host's serial log of this VM, as seen from the root namespace
    payload_md5: str  # what the guest must report as `DISK md5=` on any host it runs on
    boot_seconds: float | None  # from start to the guest's first console line, when started here


def serial_path(host: HostState, name: str) -> Path:
    return host.dir / "log" / "qemu" / f"{name}-serial.log"


def domain_xml(
    *,
    name: str,
    vm_uuid: str,
    accel: str,
    memory_mib: int,
    disk: str,
    bridge: str,
    mac: str,
    dirty_mib: int,
    payload_md5: str,
) -> str:
    cmdline = f"console=ttyS0 quiet panic=-1 vemigrate.dirty_mib={dirty_mib}"
    return f"""<domain type='{"kvm" if accel == "kvm" else "qemu"}'>
  <name>{escape(name)}</name>
  <uuid>{vm_uuid}</uuid>
  <metadata>
    <lab:guest xmlns:lab='{METADATA_NS}'><lab:payload-md5>{payload_md5}</lab:payload-md5></lab:guest>
  </metadata>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{KERNEL}</kernel>
    <initrd>{INITRD}</initrd>
    <cmdline>{escape(cmdline)}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{escape(disk)}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='bridge'>
      <source bridge='{escape(bridge)}'/>
      <mac address='{mac}'/>
      <model type='virtio'/>
    </interface>
    <serial type='file'>
      <source path='/var/log/libvirt/qemu/{escape(name)}-serial.log' append='on'/>
      <target port='0'/>
    </serial>
    <console type='file'>
      <source path='/var/log/libvirt/qemu/{escape(name)}-serial.log' append='on'/>
      <target type='serial' port='0'/>
    </console>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def _mac() -> str:
    return "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))


def check_name(name: str) -> None:
    if not _NAME.match(name):
        raise RuntimeError(f"VM name {name!r}: use letters, digits, '.', '_' or '-' (at most 63)")


def _host_path(host: HostState, inside: str) -> Path:
    """A path inside the host's mount namespace, reachable from the root namespace."""
    if host.holder is None:
        raise RuntimeError(f"lab host {host.name} is not running")
    return Path(f"/proc/{host.holder.pid}/root{inside}")


def make_disk(
    conn: Any, host: HostState, name: str, disk_mib: int, seed: str, directory: str = POOL_PATH
) -> tuple[str, str]:
    """A qcow2 disk in the host's pool (or `directory`) with the payload at MiB 1; returns (path inside,
    payload md5)."""
    if disk_mib < 8:
        raise RuntimeError("a lab VM disk needs at least 8 MiB (the payload sits at MiB 1-5)")
    data = payload(seed)
    inside = f"{directory}/{name}.qcow2"
    target = _host_path(host, inside)
    if target.exists():
        raise RuntimeError(f"lab host {host.name} already has a disk {inside}")
    with tempfile.TemporaryDirectory(prefix="vemigrate-disk-") as tmp:
        raw = Path(tmp) / "disk.raw"
        with raw.open("wb") as f:
            f.truncate(disk_mib << 20)
            f.seek(PAYLOAD_OFFSET)
            f.write(data)
        try:
            run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(target)], timeout=120)
        except CommandError as exc:
            target.unlink(missing_ok=True)  # e.g. the pool is full: leave no half-written disk
            raise RuntimeError(f"cannot create the disk of {name} on lab host {host.name}: {exc}") from exc
    conn.storagePoolLookupByName("default").refresh(0)
    return inside, hashlib.md5(data).hexdigest()  # noqa: S324 - matches the guest's md5sum, not security


def wait_booted(host: HostState, name: str, since: int, timeout: float = 120) -> str:
    """Wait for the guest's boot line in its serial log after byte offset `since`; returns the boot id."""
    log = serial_path(host, name)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists():
            with log.open("rb") as f:
                f.seek(since)
                m = _BOOTED.search(f.read().decode(errors="replace"))
            if m:
                return m.group(1)
        time.sleep(0.1)
    raise CommandError(f"VM {name} on lab host {host.name} did not boot within {timeout:g} s (see {log})")


def create(
    conn: Any,
    host: HostState,
    *,
    accel: str,
    name: str,
    memory_mib: int = 256,
    disk_mib: int = 64,
    state: VMState = VMState.RUNNING,
    dirty_mib: int = 4,
    bridge: str | None = None,
    disk_dir: str = POOL_PATH,
) -> VMInfo:
    check_name(name)
    if conn.listDefinedDomains().count(name) or name in [d.name() for d in conn.listAllDomains()]:
        raise RuntimeError(f"lab host {host.name} already has a VM named {name}")
    vm_uuid = str(uuid.uuid4())
    disk, md5 = make_disk(conn, host, name, disk_mib, vm_uuid, disk_dir)
    xml = domain_xml(
        name=name,
        vm_uuid=vm_uuid,
        accel=accel,
        memory_mib=memory_mib,
        disk=disk,
        bridge=bridge or host.guest_bridge,
        mac=_mac(),
        dirty_mib=dirty_mib,
        payload_md5=md5,
    )
    dom = conn.defineXML(xml)
    boot_seconds = None
    if state != VMState.STOPPED:
        log = serial_path(host, name)
        since = log.stat().st_size if log.exists() else 0
        start = time.monotonic()
        dom.create()
        try:
            wait_booted(host, name, since)
        except CommandError as exc:
            # Under TCG on a loaded machine a guest kernel was seen to stall in early boot: one fresh start.
            state, reason = dom.state()
            said = f"{exc}; libvirt state {state} (reason {reason}), {dom.info()[4] / 1e9:.1f} s of guest CPU"
            print(f"[lab] {said}; starting it once more", file=sys.stderr, flush=True)
            dom.destroy()
            since = log.stat().st_size if log.exists() else 0
            dom.create()
            try:
                wait_booted(host, name, since)
            except CommandError as again:
                raise CommandError(f"{again} (after a first start that did not boot either: {said})") from exc
        boot_seconds = time.monotonic() - start
        if state == VMState.PAUSED:
            dom.suspend()
        elif state == VMState.SUSPENDED:
            dom.managedSave(0)
    return VMInfo(name, vm_uuid, host.name, state, disk, serial_path(host, name), md5, boot_seconds)


def snapshot(conn: Any, name: str, snap: str) -> None:
    """An internal qcow2 snapshot: the seed says VMs with snapshots cannot migrate."""
    check_name(snap)
    dom = conn.lookupByName(name)
    dom.snapshotCreateXML(f"<domainsnapshot><name>{escape(snap)}</name></domainsnapshot>", 0)


def add_disk(conn: Any, host: HostState, name: str, path: str, dev: str, pattern: int) -> None:
    """A 16 MiB qcow2 disk at `path` whose first 4 MiB hold the byte `pattern`, attached as `dev` to the
    (stopped) VM's definition: a second disk of a known content, anywhere on the host."""
    if not path.startswith("/") or "'" in path or not re.fullmatch(r"[a-z]{2,4}", dev):
        raise RuntimeError(f"cannot add a disk at {path!r} as {dev!r}")
    make = (
        'mkdir -p "$(dirname "$1")" && qemu-img create -q -f qcow2 "$1" 16M && '
        'qemu-io -f qcow2 -c "write -P $2 0 4M" "$1" >/dev/null'
    )
    run([*enter(host), "sh", "-c", make, "sh", path, str(pattern)])
    xml = (
        f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{escape(path)}'/>"
        f"<target dev='{dev}' bus='virtio'/></disk>"
    )
    conn.lookupByName(name).attachDeviceFlags(xml, 2)  # VIR_DOMAIN_AFFECT_CONFIG


def linked_clone(conn: Any, host: HostState, source: str, name: str, accel: str) -> VMInfo:
    """A new VM whose disk is a qcow2 overlay on the (stopped) source's disk."""
    check_name(name)
    src = conn.lookupByName(source)
    if src.isActive():
        raise RuntimeError(f"stop VM {source} first: a running VM's disk cannot back a linked clone")
    xml = src.XMLDesc(0)
    base = re.search(r"<source file='([^']+)'", xml)
    md5 = re.search(r"<lab:payload-md5>(\w+)</lab:payload-md5>", xml)
    if not base or not md5:
        raise RuntimeError(f"VM {source} was not made by the lab")
    disk = f"{POOL_PATH}/{name}.qcow2"
    run([*enter(host), "qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base.group(1), disk])
    conn.storagePoolLookupByName("default").refresh(0)
    vm_uuid = str(uuid.uuid4())
    dirty = re.search(r"vemigrate\.dirty_mib=(\d+)", xml)
    bridge = re.search(r"<source bridge='([^']+)'", xml)
    memory_kib = int(src.info()[1])
    conn.defineXML(
        domain_xml(
            name=name,
            vm_uuid=vm_uuid,
            accel=accel,
            memory_mib=memory_kib // 1024,
            disk=disk,
            bridge=bridge.group(1) if bridge else host.guest_bridge,
            mac=_mac(),
            dirty_mib=int(dirty.group(1)) if dirty else 0,
            payload_md5=md5.group(1),
        )
    )
    return VMInfo(name, vm_uuid, host.name, VMState.STOPPED, disk, serial_path(host, name), md5.group(1), None)


def remove(conn: Any, name: str) -> bool:
    """Destroy and undefine a VM with its managed-save image, snapshots and disks (also the lab's
    disk `<name>.qcow2` left by a VM that is already undefined); False if there was no VM."""
    disks = [f"{POOL_PATH}/{name}.qcow2"]
    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        dom = None
    if dom is not None:
        disks += re.findall(r"<source file='([^']+)'", dom.XMLDesc(0))
        if dom.isActive():
            try:
                dom.destroy()
            except libvirt.libvirtError:
                if dom.isActive():
                    raise  # else it ended meanwhile (e.g. a migration out of it finishing)
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
    pool = conn.storagePoolLookupByName("default")
    pool.refresh(0)
    for path in set(disks):
        try:
            pool.storageVolLookupByName(Path(path).name).delete(0)
        except libvirt.libvirtError:
            continue  # not in the pool (or already gone)
    return dom is not None


@dataclass(frozen=True)
class Heartbeats:
    """What a VM's serial log says: boot ids, the beats (boot id, counter), the disk checksums seen."""

    boots: list[str]
    beats: list[tuple[str, int]]
    disk_md5s: list[str]

    @classmethod
    def parse(cls, text: str) -> Heartbeats:
        return cls(
            boots=_BOOTED.findall(text),
            beats=[(b, int(n)) for b, n in _BEAT.findall(text)],
            disk_md5s=_DISK.findall(text),
        )

    @classmethod
    def read(cls, host: HostState, name: str) -> Heartbeats:
        log = serial_path(host, name)
        return cls.parse(log.read_text(errors="replace") if log.exists() else "")
