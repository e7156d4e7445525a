"""Evidence read from outside the operator: libvirt on the lab hosts and the guests' serial logs."""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import libvirt
import pytest

from vemigrate_dev.lab import Lab, LabInfo


def domain(lab: LabInfo, host: str, name: str) -> Any:
    """The libvirt domain `name` on `host`, or None."""
    conn = lab.host(host).connect()
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError:
        return None


def handshakes(lab: LabInfo, source: str, target: str) -> int:
    """SSH logins the target's sshd accepted from the source host so far (its log)."""
    by_name = {h.name: h for h in lab.hosts}
    log = (by_name[target].dir / "daemons" / "sshd.log").read_text(errors="replace")
    return log.count(f"Accepted publickey for root from {by_name[source].address} ")


def last_beat(host: str, vm: str) -> tuple[str, int] | None:
    beats = Lab.heartbeats(host, vm).beats
    return beats[-1] if beats else None


def first_beat(host: str, vm: str, timeout: float = 60) -> tuple[str, int]:
    """The guest's latest (boot id, counter) once it has written one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        beat = last_beat(host, vm)
        if beat is not None:
            return beat
        time.sleep(0.5)
    raise AssertionError(f"{vm} on {host} wrote no heartbeat within {timeout} s")


def beating_on(host: str, vm: str, boot: str, timeout: float = 60) -> int:
    """Wait until the guest of boot id `boot` writes a new heartbeat on `host`; its counter."""
    first = last_beat(host, vm)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = last_beat(host, vm)
        if now is not None and now[0] == boot and (first is None or now[1] > first[1]):
            return now[1]
        time.sleep(1)
    where = _whereabouts(vm, boot)
    fault = _emulator_fault(host, vm, boot)
    if fault is not None:
        pytest.xfail(f"lab emulator fault after the move, not the operator's: {fault} (docs/lab.md); {where}")
    raise AssertionError(f"no new heartbeat from {vm} (boot {boot}) on {host} within {timeout} s; {where}")


def _emulator_fault(host: str, vm: str, boot: str) -> str | None:
    """Why a guest that libvirt reports running on `host` is silent, when the cause is the emulated
    guest itself: under TCG on a loaded machine a live-migrated guest kernel sometimes panics in
    `__run_timers`, faults in other timer code and hangs, or stops taking timer interrupts, with no
    operator involved (docs/lab.md)."""
    lab = Lab.info()
    dom = domain(lab, host, vm) if lab else None
    if lab is None or dom is None or dom.state()[0] != libvirt.VIR_DOMAIN_RUNNING:
        return None  # paused, stopped or missing: the operator's business, a real failure
    consoles = {h.name: _console(lab, h.name, vm) for h in lab.hosts}
    for h in lab.hosts:
        console = consoles[h.name]
        if "Kernel panic" in _since_last_beat(console, boot):
            return f"the guest kernel panicked (console of {h.name}) and rebooted"
        oops = kernel_oops(console, boot)
        if oops is not None:
            return f"the guest kernel faulted during boot {boot} (console of {h.name}: {oops!r})"
    beat = last_beat(host, vm)
    if beat is not None and beat[0] != boot:
        return f"the guest booted again (boot {beat[0]}) on {host}"
    cpu_ns = _cpu_ns_in_2s(dom)
    if cpu_ns == 0:
        return f"the guest's vCPU ran 0 ns in 2 s on {host} while libvirt reports it running"
    if not _lines_of(consoles.get(host, ""), boot):
        # Not one line on the target's console, where a healthy guest prints a beat every second, with
        # its vCPU busy: hung in its own kernel from the start (seen in CI, the same family as above).
        return f"the guest printed nothing on {host} since it arrived, its vCPU busy ({cpu_ns // 1_000_000} ms in 2 s)"
    return None


# What a Linux kernel prints when it faults (an oops, a BUG, a fault in the kernel's own code);
# the guest's init prints only heartbeats and disk hashes, so none of these comes from it.
_OOPS = re.compile(
    r"Oops:|BUG: |general protection fault|invalid opcode:|kernel BUG at|Call Trace:|RIP: 0010:"
    r"|exited with irqs disabled|exited with preempt_count"
)


def kernel_oops(console: str, boot: str) -> str | None:
    """The first line of a kernel fault printed during boot `boot` in `console`, or None.
    A guest whose kernel faulted may run on, spinning or half dead (seen in CI after a TCG
    migration: a general protection fault in `timerqueue_add` under `sleep`, the task killed with
    interrupts off, two more lines from init, then silence at full CPU)."""
    return next((line.strip() for line in _lines_of(console, boot) if _OOPS.search(line)), None)


def _lines_of(console: str, boot: str) -> list[str]:
    """The lines of an appended console that boot `boot` printed. The kernel's lines name no boot: each
    goes with the next heartbeat's boot, or, when a fresh boot starts first, with the boot before it
    (its panic); lines before any named boot (a guest that arrived and faulted before its first beat)
    are this boot's when it did not start on this console."""
    lines = console.splitlines()
    owners: list[str | None] = []
    waiting: list[int] = []
    last: str | None = None
    for line in lines:
        named = _NAMED.search(line)
        if named is None:
            waiting.append(len(owners))
            owners.append(None)
            continue
        for i in waiting:
            owners[i] = last if named.group(1) == "VEMIGRATE-BOOTED" else named.group(2)
        waiting = []
        owners.append(named.group(2))
        last = named.group(2)
    for i in waiting:
        owners[i] = last
    arrived = f"VEMIGRATE-BOOTED boot={boot}" not in console
    return [line for line, owner in zip(lines, owners, strict=True) if owner == boot or (arrived and owner is None)]


_NAMED = re.compile(r"(VEMIGRATE-BOOTED|HB) boot=(\w+)")


def _console(lab: LabInfo, host: str, vm: str) -> str:
    log = lab.host(host).serial_log(vm)
    return log.read_bytes().decode(errors="replace") if log.exists() else ""


def _since_last_beat(text: str, boot: str) -> str:
    """The console text from the guest's last beat of `boot` on (all of it when there is none)."""
    last = text.rfind(f"boot={boot} ")
    return text[text.find("\n", last) + 1 :] if last >= 0 else text


def _cpu_ns_in_2s(dom: Any) -> int:
    before = dom.info()[4]
    time.sleep(2)
    return int(dom.info()[4] - before)


def _whereabouts(vm: str, boot: str) -> str:
    """What each lab host says about the guest, for a failure message: libvirt state and the serial log's tail."""
    lab = Lab.info()
    if lab is None:
        return "the lab is down"
    said = []
    for host in lab.hosts:
        dom = domain(lab, host.name, vm)
        if dom is None:
            state = "not defined"
        else:
            code, reason = dom.state()
            state = f"{_STATES.get(code, code)} (reason {reason}){_alive(lab, host.name, dom)}"
        text = _console(lab, host.name, vm)
        if text:  # whole, for a look after the session took the lab down
            kept = Path(tempfile.gettempdir()) / "vemigrate-evidence" / f"{vm}-{boot}-{host.name}-serial.log"
            kept.parent.mkdir(exist_ok=True)
            kept.write_text(text)
        said.append(f"{host.name}: {state}, serial log tail {text[-300:]!r}{_reboot(text, boot)}")
    return f"boot {boot}: " + "; ".join(said)


def _reboot(text: str, boot: str) -> str:
    """When the guest booted again after its last beat of `boot`: what its console printed in between
    (a panic, say), and how the new boot started."""
    after = _since_last_beat(text, boot)
    again = after.find("VEMIGRATE-BOOTED")
    if again < 0:
        return ""
    return f"; it booted again: {after[:again][-1500:]!r} then {after[again : again + 80]!r}"


def _alive(lab: LabInfo, host: str, dom: Any) -> str:
    """Whether a silent guest still runs: its CPU time over two seconds, and the heartbeat it also
    writes into sector 0 of its disk (read beside QEMU with qemu-io)."""
    if not dom.isActive():
        return ""
    cpu_ms = _cpu_ns_in_2s(dom) // 1_000_000
    disks = re.findall(r"<source file='([^']+)'", dom.XMLDesc(0))
    beat = "no disk"
    if disks:
        read = ["qemu-io", "-r", "-U", "-f", "qcow2", "-c", "read -v 0 64", str(lab.host(host).path(disks[0]))]
        dump = subprocess.run(read, capture_output=True, text=True).stdout
        text = "".join(re.findall(r"^[0-9a-f]+:\s+(?:[0-9a-f]{2}\s+){16}\s*(.*)$", dump, flags=re.M))
        beat = text.strip(".") or dump[-200:]
    return f", {cpu_ms} ms CPU in 2 s, disk sector 0: {beat!r}"


_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTOFF: "shut off",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
}
