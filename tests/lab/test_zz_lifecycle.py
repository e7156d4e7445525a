"""`down` leaves no namespace, link, mount or process; a crashed run is cleaned by the next `up`.
Named to run last in this tier: it takes the session's lab down (the fixture brings it back if needed)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from pathlib import Path

import libvirt
import pytest

from tests.lab.test_containers import container_init
from vemigrate_dev.lab import Lab, LabInfo
from vemigrate_dev.lab.ct import lxc_uri
from vemigrate_dev.lab.process import Tracked
from vemigrate_dev.lab.state import LabState, lab_dir, names


def _our_pids(state: LabState) -> list[Tracked]:
    procs = [p for h in state.hosts for p in ([h.holder] if h.holder else []) + list(h.daemons.values())]
    for h in state.hosts:
        out = subprocess.run(["ip", "netns", "pids", h.netns], capture_output=True, text=True).stdout
        for pid in out.split():
            with contextlib.suppress(RuntimeError):
                procs.append(Tracked.of(int(pid)))
    return procs


def _assert_nothing_left(procs: list[Tracked]) -> None:
    ours = names()
    netns = json.loads(subprocess.run(["ip", "-j", "netns", "list"], capture_output=True, text=True).stdout or "[]")
    assert not [n["name"] for n in netns if n["name"].startswith(ours.netns_prefix)]
    links = json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True, text=True).stdout)
    assert not [lk["ifname"] for lk in links if lk["ifname"].startswith(ours.link_prefix)]
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(lab_dir()) + "/" not in mounts
    assert f"/run/netns/{ours.netns_prefix}" not in mounts
    assert [p.pid for p in procs if p.alive()] == []
    assert not (lab_dir() / "hosts").exists()
    assert Lab.info() is None


def test_down_leaves_nothing(lab: LabInfo, lxc: None) -> None:
    Lab.create_vm(lab.hosts[0].name, "doomed", dirty_mib=1)  # a QEMU process to clean up too
    ct = Lab.create_ct(lab.hosts[1].name, "doomed-ct")  # and a container in namespaces of its own
    state = LabState.load()
    assert state is not None
    procs = _our_pids(state)
    assert any("qemu" in Path(f"/proc/{p.pid}/comm").read_text() for p in procs if p.alive())
    conn = libvirt.open(lxc_uri(state.host(ct.host)))
    procs.append(Tracked.of(container_init(conn.lookupByName("doomed-ct"))))
    conn.close()
    Lab.down()
    _assert_nothing_left(procs)


def test_next_up_cleans_a_crashed_run(lab_session: None, lxc: None) -> None:
    info = Lab.up(hosts=1)
    Lab.create_ct("lab1", "orphan")  # its init lives outside the host's namespace: found anyway
    state = LabState.load()
    assert state is not None
    procs = _our_pids(state)
    conn = libvirt.open(lxc_uri(state.host("lab1")))
    procs.append(Tracked.of(container_init(conn.lookupByName("orphan"))))
    conn.close()
    # A crash: the lab's record is lost while everything keeps running; a daemon died as well.
    LabState.path().unlink()
    os.kill(state.hosts[0].daemons["virtlogd"].pid, signal.SIGKILL)
    again = Lab.up(hosts=1)
    assert [p.pid for p in procs if p.alive()] == []
    assert again.hosts[0].holder_pid != info.hosts[0].holder_pid
    new_state = LabState.load()
    assert new_state is not None
    procs = _our_pids(new_state)
    Lab.down()
    _assert_nothing_left(procs)


LAB = "9"  # the second lab of this test: the last instance, which people and make test leave free


def test_a_second_lab_beside_the_first_takes_nothing_of_it(lab: LabInfo, monkeypatch: pytest.MonkeyPatch) -> None:
    """VEMIGRATE_LAB_INSTANCE=9 is a lab of its own (directory, namespaces, links, subnet), as `make
    test` runs the fault suite on lab 1 beside the default lab: `down` of either takes nothing of the
    other, and each one's `down` leaves nothing of its own."""
    mine = os.environ.get("VEMIGRATE_LAB_INSTANCE")  # the lab this run was given: the default, or another

    def back_to_mine() -> None:
        if mine is None:
            monkeypatch.delenv("VEMIGRATE_LAB_INSTANCE")
        else:
            monkeypatch.setenv("VEMIGRATE_LAB_INSTANCE", mine)

    monkeypatch.setenv("VEMIGRATE_LAB_INSTANCE", LAB)
    second = Lab.up(hosts=1)
    second_state = LabState.load()
    assert second_state is not None
    assert second.hosts[0].address == "10.231.86.11" and second_state.hosts[0].netns == f"vemigrate{LAB}-lab1"
    assert lab_dir().name == f"lab-{LAB}"
    back_to_mine()
    first = LabState.load()
    assert first is not None and {h.address for h in first.hosts}.isdisjoint({second.hosts[0].address})
    procs = _our_pids(first)
    Lab.down()  # this run's lab: also sweeps leftovers by name prefix, which must not match lab 9's
    _assert_nothing_left(procs)
    monkeypatch.setenv("VEMIGRATE_LAB_INSTANCE", LAB)
    seen = Lab.exec("lab1", ["cat", "/proc/sys/kernel/hostname"], capture=True)
    assert seen.returncode == 0 and seen.stdout.strip() == "lab1", "lab 2 was taken down with the default lab"
    assert all(p.alive() for p in _our_pids(second_state))
    procs = _our_pids(second_state)
    Lab.down()
    _assert_nothing_left(procs)
