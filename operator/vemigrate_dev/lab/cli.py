"""`vemigrate lab ...`: the lab's verbs on the command line. Each verb returns an exit code."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import libvirt

from vemigrate_dev.lab import network
from vemigrate_dev.lab.ct import lxc_uri
from vemigrate_dev.lab.environment import Lab, LabInfo
from vemigrate_dev.lab.host import DAEMONS
from vemigrate_dev.lab.state import LabState
from vemigrate_dev.lab.vm import VMState

_DOMAIN_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTOFF: "shut off",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutting down",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "pm-suspended",
}


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    lab = subparsers.add_parser("lab", help="lab hypervisor hosts (libvirt/QEMU + sshd in namespaces)")
    verbs = lab.add_subparsers(dest="verb", required=True, metavar="VERB")

    up = verbs.add_parser("up", help="start N lab hosts (removes any earlier lab first)")
    up.add_argument("--hosts", type=int, default=2)
    up.add_argument("--subnet", help="private IPv4 /24 for the hosts (default 10.231.77.0/24)")
    up.add_argument(
        "--bridge",
        action="append",
        default=[],
        metavar="HOST=NAME",
        help="name of the guest bridge on HOST (default vmbr0 everywhere); repeatable",
    )
    up.add_argument("--pool-mib", type=int, default=1024, help="size of each host's VM storage")
    up.add_argument("--accel", choices=["kvm", "tcg"], help="skip the KVM probe")
    _kube_args(up)
    up.add_argument("--manifests", type=Path, help="write the HypervisorHosts and Secrets to this file")
    up.set_defaults(func=_up)

    down = verbs.add_parser("down", help="stop everything the lab started and remove it")
    _kube_args(down)
    down.set_defaults(func=_down)

    status = verbs.add_parser("status", help="hosts, daemons, faults, VMs, KVM or TCG")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_status)

    ex = verbs.add_parser("exec", help="run a command inside a host")
    ex.add_argument("host")
    ex.add_argument("cmd", nargs=argparse.REMAINDER)
    ex.set_defaults(func=_exec)

    man = verbs.add_parser("manifests", help="write (or, with a kubeconfig, apply) HypervisorHosts and Secrets")
    _kube_args(man)
    man.add_argument("--output", type=Path, help="file to write (default: stdout)")
    man.set_defaults(func=_manifests)

    vmp = verbs.add_parser("vm", help="lab VMs")
    vm_verbs = vmp.add_subparsers(dest="vm_verb", required=True, metavar="VERB")
    create = vm_verbs.add_parser("create", help="make a VM with a local qcow2 disk")
    create.add_argument("host")
    create.add_argument("name")
    create.add_argument("--memory", type=int, default=256, metavar="MiB")
    create.add_argument("--disk", type=int, default=64, metavar="MiB")
    create.add_argument("--dirty-mib", type=int, default=4, help="MiB of guest memory rewritten per second")
    create.add_argument("--bridge", help="bridge for its NIC (default: the host's guest bridge)")
    st = create.add_mutually_exclusive_group()
    for s in VMState:
        st.add_argument(f"--{s.value}", dest="state", action="store_const", const=s)
    create.set_defaults(func=_vm_create, state=VMState.RUNNING)
    snap = vm_verbs.add_parser("snapshot", help="add an internal snapshot to a VM")
    snap.add_argument("host")
    snap.add_argument("name")
    snap.add_argument("snapshot")
    snap.set_defaults(func=_vm_snapshot)
    clone = vm_verbs.add_parser("clone", help="make a linked clone (qcow2 overlay) of a stopped VM")
    clone.add_argument("host")
    clone.add_argument("source")
    clone.add_argument("name")
    clone.set_defaults(func=_vm_clone)

    ctp = verbs.add_parser("ct", help="lab containers (libvirt LXC)")
    ct_verbs = ctp.add_subparsers(dest="ct_verb", required=True, metavar="VERB")
    ctc = ct_verbs.add_parser("create", help="make a container whose root is a private area directory")
    ctc.add_argument("host")
    ctc.add_argument("name")
    ctc.add_argument("--memory", type=int, default=64, metavar="MiB")
    ctc.add_argument("--stopped", action="store_true", help="define it without starting it")
    ctc.set_defaults(func=_ct_create)

    link = verbs.add_parser("link", help="cut or restore a host's network link")
    link.add_argument("host")
    link.add_argument("state", choices=["down", "up"])
    link.set_defaults(func=_link)

    netem = verbs.add_parser("netem", help="shape a host's link both ways; no options clears it")
    netem.add_argument("host")
    netem.add_argument("--rate", help="e.g. 100mbit")
    netem.add_argument("--delay", help="e.g. 20ms")
    netem.add_argument("--loss", help="e.g. 1%%")
    netem.set_defaults(func=_netem)

    kill = verbs.add_parser("kill", help="SIGKILL a daemon on a host")
    kill.add_argument("host")
    kill.add_argument("daemon", choices=DAEMONS)
    kill.set_defaults(func=_kill)

    start = verbs.add_parser("start", help="start a daemon that was killed")
    start.add_argument("host")
    start.add_argument("daemon", choices=DAEMONS)
    start.set_defaults(func=_start)

    fill = verbs.add_parser("fill-disk", help="fill a host's VM storage")
    fill.add_argument("host")
    fill.add_argument("--leave", type=int, default=0, metavar="MiB", help="MiB to leave free")
    fill.add_argument("--undo", action="store_true", help="free what fill-disk took")
    fill.set_defaults(func=_fill)


def _kube_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--kubeconfig",
        default=os.environ.get("VEMIGRATE_KUBECONFIG"),
        help="apply HypervisorHosts and Secrets there (default: $VEMIGRATE_KUBECONFIG; none: skip)",
    )
    p.add_argument("--namespace", default="default")
    p.add_argument(
        "--prlctl",
        action="store_true",
        help="also publish every host as <host>-vz with driver prlctl (the lab's prlctl stand-in)",
    )
    p.add_argument(
        "--containers",
        action="store_true",
        help="also publish every host as <host>-ct: its libvirt LXC driver (lxc+ssh://), for containers",
    )


def _published(args: argparse.Namespace) -> dict[str, bool]:
    """Which extra HypervisorHosts each lab host is published as (kube.objects' options)."""
    return {"prlctl": args.prlctl, "containers": args.containers}


def _info() -> LabInfo:
    info = Lab.info()
    if info is None:
        raise RuntimeError("the lab is not up (run `vemigrate lab up`)")
    return info


def _up(args: argparse.Namespace) -> int:
    bridges = {}
    for item in args.bridge:
        name, sep, bridge = item.partition("=")
        if not sep or not bridge:
            raise RuntimeError(f"--bridge takes HOST=NAME, not {item!r}")
        bridges[name] = bridge
    info = Lab.up(args.hosts, subnet=args.subnet, guest_bridges=bridges, pool_mib=args.pool_mib, accel=args.accel)
    print(f"lab up: {len(info.hosts)} hosts in {info.up_seconds:.1f} s, guests run under {info.accel.upper()}")
    for h in info.hosts:
        print(f"  {h.name}  {h.address}  {h.uri}")
    print(f"  ssh key {info.ssh_key}, known_hosts {info.known_hosts}")
    _publish(info, args)
    if args.manifests:
        from vemigrate_dev.lab import kube

        kube.write_manifests(info, args.namespace, args.manifests, **_published(args))
        print(f"  manifests written to {args.manifests}")
    return 0


def _publish(info: LabInfo, args: argparse.Namespace) -> None:
    if not args.kubeconfig:
        return
    from vemigrate_dev.lab import kube

    try:
        applied = kube.apply(info, args.namespace, args.kubeconfig, **_published(args))
    except RuntimeError as exc:
        # The lab itself is up; the cluster may simply not be ready yet (`lab manifests` retries).
        print(f"warning: {exc}", file=sys.stderr)
        return
    print(f"  applied to namespace {args.namespace}: {', '.join(applied)}")


def _down(args: argparse.Namespace) -> int:
    info = Lab.info()
    if info and args.kubeconfig:
        from vemigrate_dev.lab import kube

        try:
            names = [h.name for h in info.hosts] + [kube.prlctl_name(h.name) for h in info.hosts]
            kube.delete(args.namespace, args.kubeconfig, names)
        except Exception as exc:  # the cluster may already be gone; the lab still comes down
            print(f"warning: could not delete the lab's objects from the cluster: {exc}", file=sys.stderr)
    Lab.down()
    print("lab down")
    return 0


def _status(args: argparse.Namespace) -> int:
    state = LabState.load()
    if state is None:
        print("lab: down")
        return 0 if not args.json else _dump({"up": False})
    report: dict[str, Any] = {
        "up": True,
        "accel": state.accel,
        "subnet": state.subnet,
        "upSeconds": round(state.up_seconds, 2),
        "hosts": [],
    }
    for h in state.hosts:
        entry: dict[str, Any] = {
            "name": h.name,
            "address": h.address,
            "guestBridge": h.guest_bridge,
            "holder": h.holder.alive() if h.holder else False,
            "daemons": {d: bool(h.daemons.get(d) and h.daemons[d].alive()) for d in DAEMONS},
            "link": "up" if network.link_is_up(h) else "down",
            "netem": network.netem_of(h),
            "vms": {},
        }
        if entry["daemons"]["libvirtd"]:
            conn = libvirt.open(f"qemu+unix:///system?socket={h.dir / 'run' / 'libvirt-sock'}")
            try:
                for dom in conn.listAllDomains():
                    st = _DOMAIN_STATES.get(dom.state()[0], "other")
                    if st == "shut off" and dom.hasManagedSaveImage(0):
                        st = "suspended"
                    entry["vms"][dom.name()] = st
            finally:
                conn.close()
            entry["cts"] = _containers(h)
        report["hosts"].append(entry)
    if args.json:
        return _dump(report)
    print(f"lab: up, {len(state.hosts)} hosts, guests under {state.accel.upper()}, subnet {state.subnet}")
    for e in report["hosts"]:
        daemons = " ".join(f"{d}:{'up' if ok else 'DOWN'}" for d, ok in e["daemons"].items())
        faults = f" link:{e['link']}" + (f" [{e['netem']}]" if e["netem"] else "")
        print(f"  {e['name']} {e['address']} bridge:{e['guestBridge']} {daemons}{faults}")
        for name, st in sorted(e["vms"].items()):
            print(f"    vm {name}: {st}")
        for name, st in sorted(e.get("cts", {}).items()):
            print(f"    ct {name}: {st}")
    return 0


def _containers(h: Any) -> dict[str, str]:
    try:
        conn = libvirt.open(lxc_uri(h))
    except libvirt.libvirtError:
        return {}  # no LXC driver on this machine
    try:
        return {d.name(): _DOMAIN_STATES.get(d.state()[0], "other") for d in conn.listAllDomains()}
    finally:
        conn.close()


def _dump(obj: Any) -> int:
    print(json.dumps(obj, indent=2))
    return 0


def _exec(args: argparse.Namespace) -> int:
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise RuntimeError("lab exec needs a command")
    return Lab.exec(args.host, cmd).returncode


def _manifests(args: argparse.Namespace) -> int:
    from vemigrate_dev.lab import kube

    info = _info()
    if args.kubeconfig:
        print("\n".join(kube.apply(info, args.namespace, args.kubeconfig, **_published(args))))
    elif args.output:
        kube.write_manifests(info, args.namespace, args.output, **_published(args))
    else:
        import yaml

        print(yaml.safe_dump_all(kube.objects(info, args.namespace, **_published(args)), sort_keys=False), end="")
    return 0


def _vm_create(args: argparse.Namespace) -> int:
    v = Lab.create_vm(
        args.host,
        args.name,
        memory_mib=args.memory,
        disk_mib=args.disk,
        state=args.state,
        dirty_mib=args.dirty_mib,
        bridge=args.bridge,
    )
    boot = f", booted in {v.boot_seconds:.1f} s" if v.boot_seconds is not None else ""
    print(f"vm {v.name} ({v.uuid}) on {v.host}: {v.state.value}{boot}; serial log {v.serial_log}")
    return 0


def _ct_create(args: argparse.Namespace) -> int:
    c = Lab.create_ct(args.host, args.name, memory_mib=args.memory, running=not args.stopped)
    state = "running" if c.running else "stopped"
    print(f"ct {c.name} ({c.uuid}) on {c.host}: {state}; private area {c.private}")
    return 0


def _vm_snapshot(args: argparse.Namespace) -> int:
    Lab.snapshot(args.host, args.name, args.snapshot)
    print(f"vm {args.name} on {args.host}: snapshot {args.snapshot} created")
    return 0


def _vm_clone(args: argparse.Namespace) -> int:
    v = Lab.linked_clone(args.host, args.source, args.name)
    print(f"vm {v.name} ({v.uuid}) on {v.host}: linked clone of {args.source}, stopped")
    return 0


def _link(args: argparse.Namespace) -> int:
    Lab.link(args.host, args.state == "up")
    print(f"{args.host}: link {args.state}")
    return 0


def _netem(args: argparse.Namespace) -> int:
    Lab.netem(args.host, rate=args.rate, delay=args.delay, loss=args.loss)
    print(f"{args.host}: " + (network.netem_of(_state_host(args.host)) or "no shaping"))
    return 0


def _state_host(name: str) -> Any:
    state = LabState.load()
    if state is None:
        raise RuntimeError("the lab is not up (run `vemigrate lab up`)")
    return state.host(name)


def _kill(args: argparse.Namespace) -> int:
    pid = Lab.kill(args.host, args.daemon)
    print(f"{args.host}: {args.daemon} (pid {pid}) killed")
    return 0


def _start(args: argparse.Namespace) -> int:
    pid = Lab.start(args.host, args.daemon)
    print(f"{args.host}: {args.daemon} running (pid {pid})")
    return 0


def _fill(args: argparse.Namespace) -> int:
    if args.undo:
        Lab.free_disk(args.host)
    else:
        Lab.fill_disk(args.host, args.leave)
    print(f"{args.host}: {Lab.disk_free_mib(args.host)} MiB free for VMs")
    return 0
