"""libvirt's LXC driver runs here once the lab host hides the cgroup2 mount (see docs/lab.md):
a container with a private area directory as its root keeps writing its heartbeat."""

from __future__ import annotations

import os
import time
from pathlib import Path

import libvirt

from vemigrate_dev.lab import Lab, LabInfo
from vemigrate_dev.lab.ct import lxc_uri
from vemigrate_dev.lab.state import LabState


def container_init(dom: libvirt.virDomain) -> int:
    """The container's init as the root namespace numbers it: the child of libvirt_lxc (the domain ID)."""
    controller = dom.ID()
    children = Path(f"/proc/{controller}/task/{controller}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def test_container_runs_from_its_private_area(lab: LabInfo, lxc: None) -> None:
    h = lab.hosts[0]
    ct = Lab.create_ct(h.name, "ct-beat")
    state = LabState.load()
    assert state is not None
    conn = libvirt.open(lxc_uri(state.host(h.name)))
    try:
        dom = conn.lookupByName("ct-beat")
        assert dom.isActive()
        init_pid = container_init(dom)
        # Its own PID and mount namespaces; its root is the private area on the lab host.
        assert os.readlink(f"/proc/{init_pid}/ns/pid") != os.readlink("/proc/self/ns/pid")
        assert os.readlink(f"/proc/{init_pid}/ns/net") != os.readlink(f"/proc/{h.holder_pid}/ns/net")
        assert (h.path(ct.private) / "sbin" / "vemigrate-init").exists()
        first = ct.heartbeat.read_text().count("HB ")
        time.sleep(2.5)
        assert ct.heartbeat.read_text().count("HB ") >= first + 2
        dom.destroy()
        assert not os.path.exists(f"/proc/{init_pid}/ns") or not dom.isActive()
    finally:
        conn.close()
