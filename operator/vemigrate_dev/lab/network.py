"""The lab network: one bridge in the root namespace, a network namespace per host joined to it by a
veth pair, and a guest bridge inside each host for the VMs' NICs. Also the link faults (down/up,
netem). Only private addresses of the lab's own subnet are ever assigned."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

from vemigrate_dev.lab.process import CommandError, children, command_name, run
from vemigrate_dev.lab.state import HostState, names


@dataclass(frozen=True)
class Plan:
    """Addresses for a lab of N hosts in one /24: the root bridge takes .1, hosts .11, .12, ..."""

    subnet: ipaddress.IPv4Network

    @classmethod
    def parse(cls, subnet: str) -> Plan:
        try:
            net = ipaddress.IPv4Network(subnet, strict=True)
        except ValueError as exc:
            raise RuntimeError(f"lab subnet {subnet!r} is not an IPv4 network: {exc}") from exc
        if not net.is_private or net.prefixlen > 24:
            raise RuntimeError(f"lab subnet {subnet} must be a private network of at least /24")
        return cls(net)

    @property
    def bridge_address(self) -> str:
        return str(self.subnet.network_address + 1)

    def host_address(self, index: int) -> str:
        if not 1 <= index <= 200:
            raise RuntimeError("the lab supports 1 to 200 hosts")
        return str(self.subnet.network_address + 10 + index)


def _link_exists(name: str, netns: str | None = None) -> bool:
    argv = ["ip", *(["-n", netns] if netns else []), "link", "show", "dev", name]
    return run(argv, check=False).returncode == 0


def ensure_root_bridge(plan: Plan) -> None:
    bridge = names().root_bridge
    if not _link_exists(bridge):
        run(["ip", "link", "add", bridge, "type", "bridge"])
    run(["ip", "addr", "replace", f"{plan.bridge_address}/{plan.subnet.prefixlen}", "dev", bridge])
    run(["ip", "link", "set", bridge, "up"])


def create_host_network(host: HostState, prefixlen: int) -> None:
    """Namespace, veth pair (root end on the lab bridge, host end eth0), loopback, guest bridge."""
    ns = host.netns
    run(["ip", "netns", "add", ns])
    run(["ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
    run(["ip", "link", "set", host.veth, "master", names().root_bridge, "up"])
    run(["ip", "-n", ns, "link", "set", "lo", "up"])
    run(["ip", "-n", ns, "addr", "add", f"{host.address}/{prefixlen}", "dev", "eth0"])
    run(["ip", "-n", ns, "link", "set", "eth0", "up"])
    # The bridge guests' NICs plug into; its name may differ per host on purpose (bridge-name check).
    run(["ip", "-n", ns, "link", "add", host.guest_bridge, "type", "bridge"])
    run(["ip", "-n", ns, "link", "set", host.guest_bridge, "up"])


def remove_host_network(netns: str, veth: str) -> None:
    if _link_exists(veth):
        run(["ip", "link", "del", veth])
    if netns in list_netns():
        gone = run(["ip", "netns", "del", netns], check=False)
        if gone.returncode != 0 and netns in list_netns():
            raise CommandError(f"ip netns del {netns} failed: {gone.stderr.strip()}")


def remove_root_bridge() -> None:
    bridge = names().root_bridge
    if _link_exists(bridge):
        run(["ip", "link", "del", bridge])


def list_netns() -> list[str]:
    out = run(["ip", "-j", "netns", "list"], check=False).stdout.strip()
    return [str(entry["name"]) for entry in json.loads(out or "[]")]


def leftover_netns() -> list[str]:
    return [ns for ns in list_netns() if ns.startswith(names().netns_prefix)]


def leftover_links() -> list[str]:
    out, prefix = run(["ip", "-j", "link", "show"]).stdout, names().link_prefix
    return [str(e["ifname"]) for e in json.loads(out or "[]") if str(e["ifname"]).startswith(prefix)]


def netns_pids(netns: str) -> list[int]:
    """Every process in the namespace, plus the init of each LXC container started from it: a
    container has network and PID namespaces of its own, but its init is a child of libvirt_lxc,
    which stays in the host's namespace. Killing that init ends the whole container."""
    out = run(["ip", "netns", "pids", netns], check=False).stdout
    pids = [int(p) for p in out.split()]
    inits = [c for p in pids if command_name(p) == "libvirt_lxc" for c in children(p)]
    return inits + pids


def set_link(host: HostState, up: bool) -> None:
    """Cut or restore the host's only link. Down black-holes traffic (no resets), like a pulled cable."""
    run(["ip", "link", "set", host.veth, "up" if up else "down"])


def link_is_up(host: HostState) -> bool:
    out = run(["ip", "-j", "link", "show", "dev", host.veth]).stdout
    return "UP" in json.loads(out)[0].get("flags", [])


def set_netem(host: HostState, rate: str | None, delay: str | None, loss: str | None) -> None:
    """Shape both directions of the host's link: root end (traffic to the host), eth0 (from it).
    With no rate, delay or loss the shaping is removed. Kernels without the netem qdisc (this
    machine's, for one) can still limit the rate, with tbf; delay and loss need netem."""
    for prefix, dev in ((["ip", "netns", "exec", host.netns], "eth0"), ([], host.veth)):
        run([*prefix, "tc", "qdisc", "del", "dev", dev, "root"], check=False)
        if not (rate or delay or loss):
            continue
        opts: list[str] = []
        if delay:
            opts += ["delay", delay]
        if loss:
            opts += ["loss", loss]
        if rate:
            opts += ["rate", rate]
        netem = run([*prefix, "tc", "qdisc", "add", "dev", dev, "root", "netem", *opts], check=False)
        if netem.returncode == 0:
            continue
        if "unknown" not in netem.stderr.lower():
            raise CommandError(f"tc netem {' '.join(opts)} on {host.name}: {netem.stderr.strip()}")
        if delay or loss:
            raise RuntimeError(
                "this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM), so --delay and --loss cannot "
                "be emulated here; --rate alone works (tbf)"
            )
        assert rate is not None
        # burst must hold at least one timer tick of data; 64 KiB does up to ~5 Gbit/s at HZ=1000.
        run(
            [
                *prefix,
                "tc",
                "qdisc",
                "add",
                "dev",
                dev,
                "root",
                "tbf",
                "rate",
                rate,
                "burst",
                "64kb",
                "latency",
                "100ms",
            ]
        )


def netem_available(host: HostState) -> bool:
    """Whether the kernel has the netem qdisc (delay and loss faults need it); asked on the host's
    own loopback, and undone at once."""
    ns = ["ip", "netns", "exec", host.netns]
    probe = run([*ns, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"], check=False)
    if probe.returncode == 0:
        run([*ns, "tc", "qdisc", "del", "dev", "lo", "root"], check=False)
        return True
    return False


def netem_of(host: HostState) -> str:
    out = run(["tc", "qdisc", "show", "dev", host.veth]).stdout.strip()
    return out if ("netem" in out or "tbf" in out) else ""
