"""The fault verbs do what they say: link down/up, rate shaping, daemons killed and restarted,
storage filled."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable

import libvirt
import pytest

from vemigrate_dev.lab import Lab, LabInfo, VMState
from vemigrate_dev.lab.network import netem_available
from vemigrate_dev.lab.state import LabState


def _tcp_reachable(address: str, port: int = 22, timeout: float = 1.5) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def _send_seconds(src: str, dst_address: str, nbytes: int) -> float:
    """Seconds to push nbytes over ssh from host src to dst (connection set up before timing)."""
    script = (
        f"ssh root@{dst_address} true && start=$(date +%s%N) && "
        f"head -c {nbytes} /dev/zero | ssh root@{dst_address} 'cat > /dev/null' && "
        "echo $(( ($(date +%s%N) - start) / 1000000 ))"
    )
    out = Lab.exec(src, ["sh", "-c", script], capture=True)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip()) / 1000


def test_link_down_black_holes_and_up_restores(lab: LabInfo) -> None:
    h = lab.hosts[1]
    assert _tcp_reachable(h.address)
    Lab.link(h.name, up=False)
    try:
        assert not _tcp_reachable(h.address)
        out = Lab.exec(lab.hosts[0].name, ["ssh", "-o", "ConnectTimeout=2", f"root@{h.address}", "true"], capture=True)
        assert out.returncode != 0
    finally:
        Lab.link(h.name, up=True)
    deadline = time.monotonic() + 10
    while not _tcp_reachable(h.address):
        assert time.monotonic() < deadline, "link did not come back"


def test_rate_limit_slows_transfers(lab: LabInfo) -> None:
    src, dst = lab.hosts[0], lab.hosts[1]
    nbytes = 1_500_000  # 12 Mbit: 3 s at 4 Mbit/s
    Lab.netem(dst.name, rate="4mbit")
    try:
        shaped = _send_seconds(src.name, dst.address, nbytes)
    finally:
        Lab.netem(dst.name)
    free = _send_seconds(src.name, dst.address, nbytes)
    assert shaped >= 2.5, shaped
    assert free < shaped / 2, (free, shaped)


def test_delay_needs_netem(lab: LabInfo) -> None:
    state = LabState.load()
    assert state is not None
    h = state.host(lab.hosts[1].name)
    if not netem_available(h):
        with pytest.raises(RuntimeError, match="no netem qdisc"):
            Lab.netem(h.name, delay="50ms")
        pytest.skip("this kernel has no netem qdisc: delay and loss cannot be emulated (the verb says so)")
    Lab.netem(h.name, delay="100ms")
    try:
        out = Lab.exec(lab.hosts[0].name, ["sh", "-c", f"time -p ssh root@{h.address} true"], capture=True)
        assert out.returncode == 0
    finally:
        Lab.netem(h.name)


def test_killed_libvirtd_is_unreachable_until_started(lab: LabInfo) -> None:
    h = lab.hosts[1]
    Lab.kill(h.name, "libvirtd")
    try:
        with pytest.raises(libvirt.libvirtError):
            libvirt.open(h.uri)
    finally:
        Lab.start(h.name, "libvirtd")
    conn = libvirt.open(h.uri)
    assert conn.getHostname() == h.name
    conn.close()


def test_killed_sshd_refuses_connections_until_started(lab: LabInfo) -> None:
    h = lab.hosts[1]
    Lab.kill(h.name, "sshd")
    try:
        assert not _tcp_reachable(h.address)
    finally:
        Lab.start(h.name, "sshd")
    assert _tcp_reachable(h.address)


def test_fill_disk_leaves_no_room_for_a_vm(lab: LabInfo, vm_cleanup: Callable[[str], str]) -> None:
    h = lab.hosts[1]
    vm_cleanup("nospace")
    Lab.fill_disk(h.name, leave_mib=1)
    try:
        assert Lab.disk_free_mib(h.name) <= 1
        with pytest.raises(RuntimeError):
            Lab.create_vm(h.name, "nospace", state=VMState.STOPPED)
    finally:
        Lab.free_disk(h.name)
    assert Lab.disk_free_mib(h.name) > 100
    leftover = subprocess.run(["ls", str(h.path("/var/lib/libvirt/images"))], capture_output=True, text=True)
    assert "nospace" not in leftover.stdout


def test_fill_disk_fills_while_a_copy_writes_into_the_pool(lab: LabInfo) -> None:
    """The disk-full fault lands mid-copy: a writer taking room during the fill must not make it fail."""
    h = lab.hosts[1]
    target = h.path("/var/lib/libvirt/images") / "writer.raw"
    stop, hit_full = threading.Event(), threading.Event()

    def write() -> None:
        with target.open("wb") as f:
            while not stop.is_set():
                try:
                    f.write(b"\1" * (256 << 10))
                    f.flush()
                    time.sleep(0.005)  # ~50 MiB/s, faster than the fill's chunks, slower than filling alone
                except OSError:
                    hit_full.set()
                    return

    writer = threading.Thread(target=write)
    writer.start()
    try:
        time.sleep(0.2)
        filled = Lab.fill_disk(h.name, leave_mib=0)
        assert filled > 0
        assert Lab.disk_free_mib(h.name) == 0
        assert hit_full.wait(10), "the writer never met a full disk"
    finally:
        stop.set()
        writer.join()
        Lab.free_disk(h.name)
        target.unlink(missing_ok=True)
    assert Lab.disk_free_mib(h.name) > 100
