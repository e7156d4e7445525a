"""One lab host: its directories and configuration, the process that holds its mount and UTS
namespaces, and the daemons inside (virtlogd, libvirtd, sshd), each started and stopped by PID."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import uuid
from collections.abc import Sequence
from pathlib import Path

from vemigrate_dev.lab import tls
from vemigrate_dev.lab.process import CommandError, Tracked, run, spawn, stop_pids, wait_for
from vemigrate_dev.lab.state import HostState, lab_dir

# Per-host directory -> where it appears inside the host's mount namespace.
BIND_MOUNTS = (
    ("etc", "/etc/libvirt"),
    ("run", "/run/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("log", "/var/log/libvirt"),
    ("cache", "/var/cache/libvirt"),
)
POOL_PATH = "/var/lib/libvirt/images"
# One directory of the machine bound at this path in every lab host: storage both hosts share, as NFS
# mounted at the same path on each looks to libvirt (the same files, visible at once on both).
SHARED_PATH = "/var/lib/libvirt/shared"
BOOT_PATH = "/var/lib/libvirt/boot"
DAEMONS = ("virtlogd", "libvirtd", "sshd")

# Runs as the holder: private mounts, then sleeps forever so the namespaces outlive every daemon.
# Arguments arrive as positional parameters, never spliced into the script text.
_HOLDER_SCRIPT = r"""
set -eu
hostdir=$1; name=$2; pool_mib=$3; ssh_config=$4; shared=$5
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/libvirt /run/sshd
mount --bind "$hostdir/etc" /etc/libvirt
mount --bind "$hostdir/run" /run/libvirt
mount --bind "$hostdir/lib" /var/lib/libvirt
mount --bind "$hostdir/log" /var/log/libvirt
mount --bind "$hostdir/cache" /var/cache/libvirt
# Disks live on a size-limited tmpfs, so `lab fill-disk` fills this host and never the machine.
mount -t tmpfs -o "size=${pool_mib}m,mode=0711" tmpfs /var/lib/libvirt/images
mount --bind "$shared" /var/lib/libvirt/shared
# sysfs of this network namespace: libvirt looks up bridges and taps under /sys/class/net. The
# cgroup mounts are carried over (LXC containers need them) minus the cgroup2 one: libvirt's LXC
# driver fails on this machine's hybrid v1 + v2 layout and works on the v1 controllers alone.
mkdir /run/.cgroup
mount --rbind /sys/fs/cgroup /run/.cgroup
mount -t sysfs sysfs /sys
mount --move /run/.cgroup /sys/fs/cgroup
rmdir /run/.cgroup
if [ -d /sys/fs/cgroup/unified ] && [ -e /sys/fs/cgroup/cpu ]; then umount /sys/fs/cgroup/unified; fi
# ssh run by libvirtd (qemu+ssh:// to other hosts) uses the lab key and known_hosts only.
mount --bind "$ssh_config" /etc/ssh/ssh_config
if [ -d /root/.ssh ]; then mount --bind "$hostdir/dotssh" /root/.ssh; fi
# Root's shell start-up as a fresh Debian node has it (base-files' defaults), not this machine's: bash
# run by sshd reads ~/.bashrc, and a developer's (pyenv's init, say) cost every SSH command 0.3-0.5 s.
for rc in bashrc profile; do
  if [ -f "/root/.$rc" ] && [ -f "/usr/share/base-files/dot.$rc" ]; then
    mount --bind "/usr/share/base-files/dot.$rc" "/root/.$rc"
  fi
done
# The prlctl/prlsrvctl STAND-IN (vemigrate_dev/lab/prlctl_standin.py), first on root's PATH in this host only.
mount --bind "$hostdir/sbin" /usr/local/sbin
hostname "$name"
touch "$hostdir/ready"
exec sleep infinity
"""


def ssh_key_path() -> Path:
    return lab_dir() / "id_ed25519"


def known_hosts_path() -> Path:
    return lab_dir() / "known_hosts"


def client_config_path() -> Path:
    return lab_dir() / "ssh_config"


def socket_uri(host: HostState) -> str:
    return f"qemu+unix:///system?socket={host.dir / 'run' / 'libvirt-sock'}"


def prepare_lab_keys() -> None:
    """The lab's client key, authorized_keys, and the ssh_config used inside every host."""
    d = lab_dir()
    d.mkdir(parents=True, exist_ok=True)
    key = ssh_key_path()
    if not key.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vemigrate-lab", "-f", str(key)])
    (d / "authorized_keys").write_text(key.with_suffix(".pub").read_text())
    client_config_path().write_text(
        "# Written by vemigrate lab: ssh inside lab hosts knows the lab's hosts from the lab's known_hosts.\n"
        "# StrictHostKeyChecking is left at ssh's default: the operator's jobs must not rely on it.\n"
        "Host *\n"
        f"    IdentityFile {key}\n"
        "    IdentitiesOnly yes\n"
        f"    UserKnownHostsFile {known_hosts_path()}\n"
        "    GlobalKnownHostsFile /dev/null\n"
        "    BatchMode yes\n"
        "    ConnectTimeout 10\n"
    )


def prepare_host_dir(host: HostState, caps_cache: Path) -> None:
    """Fresh directories and configuration for one host."""
    if host.dir.exists():
        shutil.rmtree(host.dir)
    shared_dir().mkdir(parents=True, exist_ok=True)
    for sub in (
        "etc",
        "run",
        "lib/images",
        "lib/boot",
        "lib/shared",
        "log/qemu",
        "cache",
        "ssh",
        "dotssh",
        "daemons",
        "sbin",
    ):
        (host.dir / sub).mkdir(parents=True)
    install_prlctl_standin(host.dir / "sbin")
    etc = host.dir / "etc"
    (etc / "libvirtd.conf").write_text(
        f'host_uuid = "{uuid.uuid4()}"\n'
        'auth_unix_rw = "none"\n'
        'auth_unix_ro = "none"\n'
        'unix_sock_group = "root"\n'
        'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"\n'
    )
    (etc / "qemu.conf").write_text(
        f'migration_address = "{host.address}"\n'
        f'migration_host = "{host.address}"\n'
        # No cgroups: this machine's mixed v1/v2 layout breaks libvirt's cgroup setup for QEMU.
        "cgroup_controllers = [ ]\n"
        # As root QEMU can open /dev/kvm (0600); any other user makes libvirt re-probe on each start.
        'user = "root"\n'
        'group = "root"\n'
        "dynamic_ownership = 0\n"
        "remember_owner = 0\n"
        'security_driver = "none"\n'
        # The host's namespace is already private; a per-domain /dev namespace adds nothing here.
        "namespaces = [ ]\n"
        # Migration TLS (`virsh migrate --tls`): the only way to encrypt a disk copy, which libvirt
        # cannot tunnel. Both ends check the peer's certificate against the lab CA.
        f'migrate_tls_x509_cert_dir = "{tls.CERT_DIR}"\n'
        "migrate_tls_x509_verify = 1\n"
    )
    # libvirtd refuses to start when the directory qemu.conf names is missing: written before it runs.
    tls.write_host_certs(host)
    (etc / "virtlogd.conf").write_text('log_outputs = "3:file:/var/log/libvirt/virtlogd.log"\n')
    if caps_cache.is_dir():
        shutil.copytree(caps_cache, host.dir / "cache" / "qemu" / "capabilities")
    ssh = host.dir / "ssh"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"vemigrate-{host.name}", "-f", str(ssh / "host_key")])
    (ssh / "sshd_config").write_text(
        "# Written by vemigrate lab.\n"
        "Port 22\n"
        f"ListenAddress {host.address}\n"
        f"HostKey {ssh / 'host_key'}\n"
        "PidFile none\n"
        "PermitRootLogin prohibit-password\n"
        "AllowUsers root\n"
        "PubkeyAuthentication yes\n"
        f"AuthorizedKeysFile {lab_dir() / 'authorized_keys'}\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        # The cache may sit under a world-writable directory in CI; the key file is ours anyway.
        "StrictModes no\n"
        "LogLevel VERBOSE\n"
        "Subsystem sftp internal-sftp\n"
    )


def install_prlctl_standin(directory: Path) -> None:
    """`prlctl` and `prlsrvctl` wrappers that run the lab's STAND-IN (not Virtuozzo's tools): the
    directory is bound on /usr/local/sbin inside the host, so the operator's prlctl driver finds them
    on the PATH of its SSH sessions, as it would find the real tools on a Virtuozzo node."""
    standin = Path(__file__).with_name("prlctl_standin.py")
    for tool in ("prlctl", "prlsrvctl"):
        wrapper = directory / tool
        wrapper.write_text(
            "#!/bin/sh\n"
            f"# vemigrate lab: a STAND-IN for Virtuozzo's {tool}, doing the work with libvirt (docs/virtuozzo.md).\n"
            f'exec /usr/bin/python3 -I {shlex.quote(str(standin))} {tool} "$@"\n'
        )
        wrapper.chmod(0o755)


def ensure_prlctl_standin(host_dir: Path, holder_pid: int) -> None:
    """Refresh the stand-in's wrappers and bind them on /usr/local/sbin of a running host (a no-op
    when already bound): for hosts that were started before the stand-in was installed."""
    sbin = host_dir / "sbin"
    sbin.mkdir(exist_ok=True)
    install_prlctl_standin(sbin)
    bind = 'mountpoint -q /usr/local/sbin || mount --bind "$1" /usr/local/sbin'
    run(["nsenter", "-t", str(holder_pid), "-m", "--", "sh", "-c", bind, "sh", str(sbin)])


def shared_dir() -> Path:
    """The machine's directory behind SHARED_PATH in every lab host."""
    return lab_dir() / "shared"


def ensure_shared_storage(holder_pid: int) -> None:
    """Bind the shared directory on SHARED_PATH of a running host (a no-op when already bound): for
    hosts that were started before the lab had it."""
    shared_dir().mkdir(parents=True, exist_ok=True)
    bind = 'mkdir -p -- "$2" && { mountpoint -q -- "$2" || mount --bind -- "$1" "$2"; }'
    run(["nsenter", "-t", str(holder_pid), "-m", "--", "sh", "-c", bind, "sh", str(shared_dir()), SHARED_PATH])


def host_key_line(host: HostState) -> str:
    """The known_hosts line for this host: its address and its public host key."""
    key_type, key = (host.dir / "ssh" / "host_key.pub").read_text().split()[:2]
    return f"{host.address} {key_type} {key}\n"


def start_holder(host: HostState, pool_mib: int) -> Tracked:
    marker = host.dir / "ready"
    marker.unlink(missing_ok=True)
    holder = spawn(
        [
            "nsenter",
            f"--net=/run/netns/{host.netns}",
            "--",
            "unshare",
            "--mount",
            "--uts",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            _HOLDER_SCRIPT,
            "holder",
            str(host.dir),
            host.name,
            str(pool_mib),
            str(client_config_path()),
            str(shared_dir()),
        ],
        host.dir / "daemons" / "holder.log",
    )
    try:
        wait_for(f"namespaces of lab host {host.name}", lambda: marker.exists() or not holder.alive(), 10)
    except CommandError:
        holder.stop()
        raise
    if not holder.alive():
        log = (host.dir / "daemons" / "holder.log").read_text()[-1500:]
        raise CommandError(f"lab host {host.name}: setting up its namespaces failed: {log}")
    return holder


def enter(host: HostState) -> list[str]:
    """argv prefix that runs a command inside the host (its mount, UTS and network namespaces)."""
    if host.holder is None or not host.holder.alive():
        raise RuntimeError(f"lab host {host.name} is not running (run `vemigrate lab up`)")
    return ["nsenter", "-t", str(host.holder.pid), "-m", "-u", "-n", "--"]


def _daemon_argv(host: HostState, daemon: str) -> list[str]:
    if daemon == "virtlogd":
        return ["virtlogd"]
    if daemon == "libvirtd":
        return ["libvirtd"]
    if daemon == "sshd":
        return ["/usr/sbin/sshd", "-D", "-e", "-f", str(host.dir / "ssh" / "sshd_config")]
    raise RuntimeError(f"unknown lab daemon {daemon!r} (one of: {', '.join(DAEMONS)})")


def _ready(host: HostState, daemon: str) -> bool:
    if daemon == "virtlogd":
        return (host.dir / "run" / "virtlogd-sock").exists()
    if daemon == "libvirtd":
        return _can_connect_unix(host.dir / "run" / "libvirt-sock")
    return _can_connect_tcp(host, 22)


def _can_connect_unix(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def _can_connect_tcp(host: HostState, port: int) -> bool:
    # From the root namespace over the lab bridge: the path the operator will use.
    try:
        with socket.create_connection((host.address, port), timeout=0.5):
            return True
    except OSError:
        return False


def start_daemon(host: HostState, daemon: str, timeout: float = 30) -> Tracked:
    """Start one daemon in the foreground inside the host (nsenter execs it, so the PID is the daemon's)."""
    proc = spawn([*enter(host), *_daemon_argv(host, daemon)], host.dir / "daemons" / f"{daemon}.log")
    try:
        wait_for(f"{daemon} on lab host {host.name}", lambda: _ready(host, daemon) or not proc.alive(), timeout)
    except CommandError:
        proc.stop()
        raise
    if not proc.alive():
        log = (host.dir / "daemons" / f"{daemon}.log").read_text()[-1500:]
        raise CommandError(f"{daemon} on lab host {host.name} exited at start: {log}")
    return proc


def stop_host_processes(host: HostState, extra_pids: Sequence[int]) -> None:
    """Stop the daemons, then every other process left in the host's network namespace (QEMU, ssh
    sessions), then the holder; all by PID."""
    stop_pids(list(host.daemons.values()))
    host.daemons.clear()
    others = []
    for pid in extra_pids:
        if pid == os.getpid() or (host.holder and pid == host.holder.pid):
            continue
        try:
            others.append(Tracked.of(pid))
        except CommandError:
            continue
    stop_pids(others)
    if host.holder:
        stop_pids([host.holder])
        host.holder = None
