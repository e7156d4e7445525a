"""The lab as a whole: `Lab.up()` builds N hosts, `Lab.down()` removes every trace, and the verbs
in between (VMs, exec, faults). Used by the `vemigrate lab` command, the test fixture and the demo."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt

from vemigrate.core.access import HostAccess
from vemigrate_dev.lab import accel as accel_mod
from vemigrate_dev.lab import ct, guest, host, network, vm
from vemigrate_dev.lab.process import CommandError, Tracked, run, stop_pids
from vemigrate_dev.lab.state import (
    DEFAULT_GUEST_BRIDGE,
    HostState,
    LabState,
    exclusive,
    lab_dir,
    names,
)

REQUIRED_TOOLS = (
    "ip",
    "tc",
    "nsenter",
    "unshare",
    "libvirtd",
    "virtlogd",
    "qemu-system-x86_64",
    "qemu-img",
    "ssh",
    "ssh-keygen",
    "cpio",
    "dpkg-deb",
)
POOL_XML = f"""<pool type='dir'>
  <name>default</name>
  <target><path>{host.POOL_PATH}</path></target>
</pool>"""


def missing_tools() -> list[str]:
    found = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
    if not Path("/usr/sbin/sshd").exists():
        found.append("sshd")
    return found


def why_not_runnable() -> str | None:
    """A sentence saying why the lab cannot run on this machine, or None when it can."""
    if os.geteuid() != 0:
        return "the lab needs root (network and mount namespaces, libvirtd as root)"
    missing = missing_tools()
    if missing:
        return f"the lab needs {', '.join(missing)} (run tools/setup.sh)"
    return None


@dataclass(frozen=True)
class LabHost:
    """One running lab host, as callers use it."""

    name: str
    address: str
    dir: Path
    holder_pid: int
    guest_bridge: str
    ssh_key: Path
    known_hosts: Path

    @property
    def uri(self) -> str:
        """libvirt URI reaching this host's libvirtd from the root namespace through its socket."""
        return f"qemu+unix:///system?socket={self.dir / 'run' / 'libvirt-sock'}"

    @property
    def ssh_uri(self) -> str:
        """libvirt URI other hosts (and the operator) use: over SSH, host key verified."""
        return f"qemu+ssh://root@{self.address}/system"

    def path(self, inside: str) -> Path:
        """A path inside this host's mount namespace, as seen from the root namespace."""
        return Path(f"/proc/{self.holder_pid}/root{inside}")

    def serial_log(self, vm_name: str) -> Path:
        return self.dir / "log" / "qemu" / f"{vm_name}-serial.log"

    def connect(self) -> Any:
        return libvirt.open(self.uri)


@dataclass(frozen=True)
class LabInfo:
    hosts: list[LabHost]
    accel: str
    subnet: str
    bridge_address: str
    ssh_key: Path
    known_hosts: Path
    up_seconds: float

    def host(self, name: str) -> LabHost:
        for h in self.hosts:
            if h.name == name:
                return h
        raise RuntimeError(f"no lab host named {name!r}")

    def access(self, name: str, namespace: str = "lab") -> HostAccess:
        """How the operator reaches this host (what its HypervisorHost and Secrets resolve to): for a driver
        made outside the operator, as benchmarks and tests make one."""
        h = self.host(name)
        return HostAccess(
            name=name,
            namespace=namespace,
            address=h.address,
            private_key=self.ssh_key.read_text(),
            known_hosts=self.known_hosts.read_text(),
            libvirt_uri=h.ssh_uri,
            migration_address=h.address,
        )


def _info(state: LabState) -> LabInfo:
    hosts = [
        LabHost(
            name=h.name,
            address=h.address,
            dir=h.dir,
            holder_pid=h.holder.pid if h.holder else 0,
            guest_bridge=h.guest_bridge,
            ssh_key=host.ssh_key_path(),
            known_hosts=host.known_hosts_path(),
        )
        for h in state.hosts
    ]
    return LabInfo(
        hosts=hosts,
        accel=state.accel,
        subnet=state.subnet,
        bridge_address=state.bridge_address,
        ssh_key=host.ssh_key_path(),
        known_hosts=host.known_hosts_path(),
        up_seconds=state.up_seconds,
    )


def _running_state() -> LabState:
    state = LabState.load()
    if state is None:
        raise RuntimeError("the lab is not up (run `vemigrate lab up`)")
    return state


def _connect(h: HostState) -> Any:
    try:
        return libvirt.open(host.socket_uri(h))
    except libvirt.libvirtError as exc:
        raise RuntimeError(f"cannot reach libvirtd on lab host {h.name}: {exc}") from exc


class Lab:
    """Entry points; the lab's state lives on disk under <cache>/lab, so these work across processes."""

    @staticmethod
    def up(
        hosts: int = 2,
        *,
        subnet: str | None = None,
        guest_bridges: Mapping[str, str] | None = None,
        pool_mib: int = 1024,
        accel: str | None = None,
    ) -> LabInfo:
        """Start `hosts` lab hosts (lab1, lab2, ...) after removing anything an earlier run left."""
        with exclusive("vemigrate lab up"):
            return Lab._up(hosts, subnet=subnet, guest_bridges=guest_bridges, pool_mib=pool_mib, accel=accel)

    @staticmethod
    def _up(
        hosts: int,
        *,
        subnet: str | None,
        guest_bridges: Mapping[str, str] | None,
        pool_mib: int,
        accel: str | None,
    ) -> LabInfo:
        reason = why_not_runnable()
        if reason:
            raise RuntimeError(reason)
        if not 1 <= hosts <= 50:
            raise RuntimeError("--hosts must be between 1 and 50")
        lab = names()
        plan = network.Plan.parse(subnet or os.environ.get("VEMIGRATE_LAB_SUBNET") or lab.subnet)
        bridges = dict(guest_bridges or {})
        host_names = [f"lab{i}" for i in range(1, hosts + 1)]
        unknown = set(bridges) - set(host_names)
        if unknown:
            raise RuntimeError(f"guest bridge given for unknown host(s): {', '.join(sorted(unknown))}")
        Lab.down()
        image = guest.ensure_image()
        chosen, _why = accel_mod.choose(image, accel)
        start = time.monotonic()
        state = LabState(subnet=str(plan.subnet), bridge_address=plan.bridge_address, accel=chosen, pool_mib=pool_mib)
        network.ensure_root_bridge(plan)
        host.prepare_lab_keys()
        caps = lab_dir() / "qemu-capabilities"
        try:
            for i, name in enumerate(host_names, start=1):
                h = HostState(
                    name=name,
                    address=plan.host_address(i),
                    netns=f"{lab.netns_prefix}{name}",
                    veth=lab.veth(name),
                    guest_bridge=bridges.get(name, DEFAULT_GUEST_BRIDGE),
                    dir=lab_dir() / "hosts" / name,
                )
                state.hosts.append(h)
                state.save()  # before anything exists, so a crash from here on is cleaned by `down`
                network.create_host_network(h, plan.subnet.prefixlen)
                host.prepare_host_dir(h, caps)
                _link_or_copy(image.kernel, h.dir / "lib" / "boot" / Path(vm.KERNEL).name)
                _link_or_copy(image.initrd, h.dir / "lib" / "boot" / Path(vm.INITRD).name)
                h.holder = host.start_holder(h, pool_mib)
                state.save()
                for daemon in host.DAEMONS:
                    h.daemons[daemon] = host.start_daemon(h, daemon)
                    state.save()
                conn = _connect(h)
                try:
                    pool = conn.storagePoolDefineXML(POOL_XML, 0)
                    pool.create(0)
                    pool.setAutostart(1)
                    # The first QEMU probe (seconds) happens here, once; later hosts and later
                    # runs reuse its result (libvirt checks the cache is still valid itself).
                    conn.getDomainCapabilities(None, "x86_64", "pc", "kvm" if chosen == "kvm" else "qemu", 0)
                finally:
                    conn.close()
                probed = h.dir / "cache" / "qemu" / "capabilities"
                if h is state.hosts[0] and probed.is_dir():
                    # Keep the shared copy current: libvirt rewrites it when QEMU or libvirt changed.
                    shutil.rmtree(caps, ignore_errors=True)
                    shutil.copytree(probed, caps)
            host.known_hosts_path().write_text("".join(host.host_key_line(h) for h in state.hosts))
        except BaseException:
            Lab.down()
            raise
        state.up_seconds = time.monotonic() - start
        state.save()
        return _info(state)

    @staticmethod
    def down() -> None:
        """Stop every process the lab started (by PID), remove namespaces, links, bridge and host
        directories. Also cleans what a crashed run left, with or without its state file."""
        if os.geteuid() != 0:
            raise RuntimeError("the lab needs root (network and mount namespaces, libvirtd as root)")
        with exclusive("vemigrate lab down"):
            Lab._down()

    @staticmethod
    def _down() -> None:
        state = LabState.load()
        errors: list[str] = []
        for h in state.hosts if state else []:
            _stop_containers(h)
            try:
                host.stop_host_processes(h, network.netns_pids(h.netns) if h.netns in network.list_netns() else [])
                network.remove_host_network(h.netns, h.veth)
            except CommandError as exc:
                errors.append(str(exc))
        # Anything left by a run whose state file was lost: our name prefixes identify it.
        for ns in network.leftover_netns():
            try:
                procs = []
                for pid in network.netns_pids(ns):
                    try:
                        procs.append(Tracked.of(pid))
                    except CommandError:
                        continue
                stop_pids(procs)
                network.remove_host_network(ns, "")
            except CommandError as exc:
                errors.append(str(exc))
        for link in network.leftover_links():
            run(["ip", "link", "del", link], check=False)
        _remove_container_cgroups()
        shutil.rmtree(lab_dir() / "hosts", ignore_errors=True)
        shutil.rmtree(host.shared_dir(), ignore_errors=True)
        LabState.path().unlink(missing_ok=True)
        if errors:
            raise RuntimeError("lab down left something behind: " + "; ".join(errors))

    @staticmethod
    def info() -> LabInfo | None:
        state = LabState.load()
        return _info(state) if state else None

    @staticmethod
    def create_vm(
        host_name: str,
        name: str,
        *,
        memory_mib: int = 256,
        disk_mib: int = 64,
        state: vm.VMState = vm.VMState.RUNNING,
        dirty_mib: int = 4,
        bridge: str | None = None,
        disk_dir: str = host.POOL_PATH,
    ) -> vm.VMInfo:
        """A VM with its disk in the host's pool, or in `disk_dir` (such as `Lab.shared_storage()`)."""
        lab = _running_state()
        h = lab.host(host_name)
        conn = _connect(h)
        try:
            return vm.create(
                conn,
                h,
                accel=lab.accel,
                name=name,
                memory_mib=memory_mib,
                disk_mib=disk_mib,
                state=state,
                dirty_mib=dirty_mib,
                bridge=bridge,
                disk_dir=disk_dir,
            )
        finally:
            conn.close()

    @staticmethod
    def shared_storage() -> str:
        """The path at which every lab host sees one directory of the machine: storage both hosts share
        (what NFS at the same path is to libvirt). Bound on hosts started before the lab had it."""
        for h in _running_state().hosts:
            if h.holder is not None:
                host.ensure_shared_storage(h.holder.pid)
        return host.SHARED_PATH

    @staticmethod
    def remove_vm(host_name: str, name: str) -> bool:
        """Destroy and undefine a VM, with its managed save, snapshots and disks; False if absent."""
        h = _running_state().host(host_name)
        conn = _connect(h)
        try:
            return vm.remove(conn, name)
        finally:
            conn.close()

    @staticmethod
    def snapshot(host_name: str, name: str, snap: str) -> None:
        h = _running_state().host(host_name)
        conn = _connect(h)
        try:
            vm.snapshot(conn, name, snap)
        finally:
            conn.close()

    @staticmethod
    def add_disk(host_name: str, name: str, path: str, dev: str, pattern: int) -> None:
        """Attach a 16 MiB qcow2 disk at `path`, its first 4 MiB the byte `pattern`, to a stopped VM."""
        h = _running_state().host(host_name)
        conn = _connect(h)
        try:
            vm.add_disk(conn, h, name, path, dev, pattern)
        finally:
            conn.close()

    @staticmethod
    def linked_clone(host_name: str, source: str, name: str) -> vm.VMInfo:
        lab = _running_state()
        h = lab.host(host_name)
        conn = _connect(h)
        try:
            return vm.linked_clone(conn, h, source, name, lab.accel)
        finally:
            conn.close()

    @staticmethod
    def create_ct(host_name: str, name: str, *, memory_mib: int = 64, running: bool = True) -> ct.CTInfo:
        """A libvirt LXC container with a private area directory as its root file system."""
        h = _running_state().host(host_name)
        try:
            conn = libvirt.open(ct.lxc_uri(h))
        except libvirt.libvirtError as exc:
            raise RuntimeError(f"libvirt's LXC driver is not available on lab host {h.name}: {exc}") from exc
        try:
            return ct.create(conn, h, _host_path(h, "/"), name=name, memory_mib=memory_mib, running=running)
        finally:
            conn.close()

    @staticmethod
    def heartbeats(host_name: str, name: str) -> vm.Heartbeats:
        return vm.Heartbeats.read(_running_state().host(host_name), name)

    @staticmethod
    def exec(host_name: str, argv: Sequence[str], *, capture: bool = False) -> subprocess.CompletedProcess[str]:
        """Run argv inside the host (no shell unless argv asks for one)."""
        h = _running_state().host(host_name)
        return subprocess.run([*host.enter(h), *argv], capture_output=capture, text=True, check=False)

    @staticmethod
    def link(host_name: str, up: bool) -> None:
        network.set_link(_running_state().host(host_name), up)

    @staticmethod
    def netem(host_name: str, *, rate: str | None = None, delay: str | None = None, loss: str | None = None) -> None:
        network.set_netem(_running_state().host(host_name), rate, delay, loss)

    @staticmethod
    def kill(host_name: str, daemon: str) -> int:
        """SIGKILL one daemon of the host (a crash, not a stop); returns its PID."""
        lab = _running_state()
        h = lab.host(host_name)
        proc = h.daemons.get(daemon)
        if daemon not in host.DAEMONS:
            raise RuntimeError(f"unknown daemon {daemon!r} (one of: {', '.join(host.DAEMONS)})")
        if proc is None or not proc.alive():
            raise RuntimeError(f"{daemon} is not running on lab host {host_name}")
        os.kill(proc.pid, signal.SIGKILL)
        proc.stop()  # waits until it is gone
        del h.daemons[daemon]
        lab.save()
        return proc.pid

    @staticmethod
    def start(host_name: str, daemon: str) -> int:
        """Start a daemon that `kill` stopped (or that died); returns its PID."""
        lab = _running_state()
        h = lab.host(host_name)
        proc = h.daemons.get(daemon)
        if proc is not None and proc.alive():
            return proc.pid
        h.daemons[daemon] = host.start_daemon(h, daemon)
        lab.save()
        return h.daemons[daemon].pid

    @staticmethod
    def fill_disk(host_name: str, leave_mib: int = 0) -> int:
        """Fill the host's VM storage so only `leave_mib` MiB stay free; returns the MiB used to fill.

        Filled in chunks that halve on ENOSPC: a copy writing into the pool at the same time takes
        room between the free-space read and the allocation, and one allocation of everything would
        then fail whole."""
        h = _running_state().host(host_name)
        pool = _host_path(h, host.POOL_PATH)
        filler = pool / ".vemigrate-fill"
        filler.unlink(missing_ok=True)
        page = os.sysconf("SC_PAGE_SIZE")
        chunk, filled = 64 << 20, 0
        with filler.open("wb") as f:
            while chunk >= page:
                st = os.statvfs(pool)
                room = st.f_bavail * st.f_frsize - (leave_mib << 20)
                size = min(chunk, room) // page * page
                if size < page:
                    break
                try:
                    os.posix_fallocate(f.fileno(), filled, size)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    chunk = size // 2
                    continue
                filled += size
        return filled >> 20

    @staticmethod
    def free_disk(host_name: str) -> None:
        h = _running_state().host(host_name)
        (_host_path(h, host.POOL_PATH) / ".vemigrate-fill").unlink(missing_ok=True)

    @staticmethod
    def disk_free_mib(host_name: str) -> int:
        h = _running_state().host(host_name)
        st = os.statvfs(_host_path(h, host.POOL_PATH))
        return st.f_bavail * st.f_frsize // (1 << 20)


def _host_path(h: HostState, inside: str) -> Path:
    if h.holder is None:
        raise RuntimeError(f"lab host {h.name} is not running")
    return Path(f"/proc/{h.holder.pid}/root{inside}")


def _stop_containers(h: HostState) -> None:
    """Containers first, through libvirt, while it still runs: see ct.destroy_all."""
    live = h.daemons.get("libvirtd")
    if live is None or not live.alive():
        return
    try:
        conn = libvirt.open(ct.lxc_uri(h))
    except libvirt.libvirtError:
        return  # no LXC driver: no containers
    try:
        ct.destroy_all(conn)
    except libvirt.libvirtError:
        pass  # best effort; the processes are killed by PID next
    finally:
        conn.close()


def _remove_container_cgroups() -> None:
    """libvirt (without systemd) files containers under /machine in every cgroup v1 hierarchy and
    leaves that group behind; remove the empty ones (rmdir refuses anything still in use)."""
    for machine in Path("/sys/fs/cgroup").glob("*/machine"):
        for group in machine.glob("lxc-*.libvirt-lxc"):
            with contextlib.suppress(OSError):
                group.rmdir()
        with contextlib.suppress(OSError):
            machine.rmdir()


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hosts only read the guest kernel (66 MB uncompressed): a hard link when the cache is on the
    same file system, a copy otherwise."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
