"""Evidence read from outside the operator: libvirt on the lab hosts and the guests' serial logs."""

from __future__ import annotations

import time
from typing import Any

import libvirt

from vemigrate.devenv.lab import Lab, LabInfo


def domain(lab: LabInfo, host: str, name: str) -> Any:
    """The libvirt domain `name` on `host`, or None."""
    conn = lab.host(host).connect()
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError:
        return None


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
    raise AssertionError(f"no new heartbeat from {vm} (boot {boot}) on {host} within {timeout} s")
