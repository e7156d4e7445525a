"""Lab containers: libvirt LXC domains whose root file system is a private area directory
(`/var/lib/libvirt/images/private/<name>`, on the host's size-limited storage, like Virtuozzo's
/vz/private/<id>). The root holds busybox-static and an init that appends a heartbeat line to
/var/log/heartbeat every second, so a test can see a container keep running and its files arrive."""

from __future__ import annotations

import secrets
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from vemigrate_dev.lab.host import POOL_PATH
from vemigrate_dev.lab.process import CommandError
from vemigrate_dev.lab.state import HostState
from vemigrate_dev.lab.vm import check_name

PRIVATE_ROOT = f"{POOL_PATH}/private"
HEARTBEAT = "/var/log/heartbeat"

CT_INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
boot=$(head -c 16 /dev/urandom | md5sum | cut -c1-12)
echo "VEMIGRATE-BOOTED boot=$boot" >> /var/log/heartbeat
n=0
while :; do
    n=$((n + 1))
    echo "HB boot=$boot n=$n" >> /var/log/heartbeat
    sleep 1
done
"""


@dataclass(frozen=True)
class CTInfo:
    name: str
    uuid: str
    host: str
    running: bool
    private: str  # the private area (root file system), inside the host
    heartbeat: Path  # its heartbeat file, as seen from the root namespace


def lxc_driver_installed() -> bool:
    """libvirt loads its LXC driver from this module (package libvirt-daemon-driver-lxc)."""
    return any(Path("/usr/lib").glob("*/libvirt/connection-driver/libvirt_driver_lxc.so"))


def lxc_uri(host: HostState) -> str:
    return f"lxc+unix:///system?socket={host.dir / 'run' / 'libvirt-sock'}"


def ct_xml(name: str, ct_uuid: str, private: str, bridge: str, memory_mib: int) -> str:
    mac = "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))
    return f"""<domain type='lxc'>
  <name>{escape(name)}</name>
  <uuid>{ct_uuid}</uuid>
  <memory unit='MiB'>{memory_mib}</memory>
  <os>
    <type>exe</type>
    <init>/bin/busybox</init>
    <initarg>sh</initarg>
    <initarg>/sbin/vemigrate-init</initarg>
  </os>
  <devices>
    <filesystem type='mount'>
      <source dir='{escape(private)}'/>
      <target dir='/'/>
    </filesystem>
    <interface type='bridge'>
      <source bridge='{escape(bridge)}'/>
      <mac address='{mac}'/>
    </interface>
    <console type='pty'/>
  </devices>
</domain>
"""


def create(conn: Any, host: HostState, root: Path, *, name: str, memory_mib: int = 64, running: bool = True) -> CTInfo:
    """`root` is the host's root directory as seen from here (/proc/<holder>/root)."""
    check_name(name)
    private = f"{PRIVATE_ROOT}/{name}"
    area = root / private.lstrip("/")
    if area.exists():
        raise RuntimeError(f"lab host {host.name} already has a private area {private}")
    try:
        for sub in ("bin", "sbin", "proc", "sys", "dev", "tmp", "var/log", "etc", "root"):
            (area / sub).mkdir(parents=True)
        shutil.copy2("/bin/busybox", area / "bin" / "busybox")
        init = area / "sbin" / "vemigrate-init"
        init.write_text(CT_INIT)
        init.chmod(0o755)
        (area / "etc" / "hostname").write_text(name + "\n")
    except OSError as exc:
        shutil.rmtree(area, ignore_errors=True)
        raise RuntimeError(f"cannot create the private area of {name} on lab host {host.name}: {exc}") from exc
    ct_uuid = str(uuid.uuid4())
    dom = conn.defineXML(ct_xml(name, ct_uuid, private, host.guest_bridge, memory_mib))
    beat = area / HEARTBEAT.lstrip("/")
    if running:
        dom.create()
        deadline = time.monotonic() + 30
        while not (beat.exists() and "HB " in beat.read_text()):
            if time.monotonic() > deadline:
                raise CommandError(f"container {name} on lab host {host.name} wrote no heartbeat in 30 s")
            time.sleep(0.1)
    return CTInfo(name, ct_uuid, host.name, running, private, beat)


def destroy_all(conn: Any) -> None:
    """Stop every running container: their processes live in namespaces of their own, so killing
    the host's processes alone would not reach them."""
    for dom in conn.listAllDomains(0):
        if dom.isActive():
            dom.destroy()
