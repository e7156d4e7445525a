"""Where the lab keeps its files, and the record of what it started (so `down` and a later `up`
can undo it, by PID, even after a crash)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vemigrate_dev.lab.process import Tracked

DEFAULT_GUEST_BRIDGE = "vmbr0"


@dataclass(frozen=True)
class Names:
    """What the lab calls what it makes outside its directory. Everything it creates in the root
    namespace starts with these prefixes, so an interrupted run whose state file is gone can still
    be found and cleaned, and two labs never take each other's."""

    instance: str
    netns_prefix: str
    link_prefix: str
    subnet: str

    @property
    def root_bridge(self) -> str:
        return f"{self.link_prefix}0"

    def veth(self, host: str) -> str:
        return f"{self.link_prefix}-{host}"


def names() -> Names:
    """The default lab, or with $VEMIGRATE_LAB_INSTANCE=N (1-9) the N-th lab beside it (its own
    directory, namespaces, links and subnet 10.231.77+N.0/24): two test runs at once, e.g. `make test`
    runs the fault suite on lab 1 while the other tiers use the default lab."""
    instance = os.environ.get("VEMIGRATE_LAB_INSTANCE", "")
    if not instance:
        return Names("", "vemigrate-", "vmlab", "10.231.77.0/24")
    if not (len(instance) == 1 and "1" <= instance <= "9"):
        raise RuntimeError(f"VEMIGRATE_LAB_INSTANCE must be a digit 1-9 (or empty), not {instance!r}")
    return Names(instance, f"vemigrate{instance}-", f"vmi{instance}", f"10.231.{77 + int(instance)}.0/24")


def cache_dir() -> Path:
    """${VEMIGRATE_CACHE:-${XDG_CACHE_HOME:-~/.cache}/vemigrate}: outside the repository."""
    explicit = os.environ.get("VEMIGRATE_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "vemigrate"


def lab_dir() -> Path:
    instance = names().instance
    return cache_dir() / (f"lab-{instance}" if instance else "lab")


@dataclass
class HostState:
    """One lab host as recorded on disk."""

    name: str
    address: str
    netns: str
    veth: str  # the root-namespace end; the host's end is eth0 inside its namespace
    guest_bridge: str
    dir: Path
    holder: Tracked | None = None
    daemons: dict[str, Tracked] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "address": self.address,
            "netns": self.netns,
            "veth": self.veth,
            "guest_bridge": self.guest_bridge,
            "dir": str(self.dir),
            "holder": self.holder.to_json() if self.holder else None,
            "daemons": {k: v.to_json() for k, v in self.daemons.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HostState:
        return cls(
            name=data["name"],
            address=data["address"],
            netns=data["netns"],
            veth=data["veth"],
            guest_bridge=data["guest_bridge"],
            dir=Path(data["dir"]),
            holder=Tracked.from_json(data["holder"]) if data.get("holder") else None,
            daemons={k: Tracked.from_json(v) for k, v in data.get("daemons", {}).items()},
        )


@dataclass
class LabState:
    """The whole lab: subnet, root bridge, acceleration in use, hosts."""

    subnet: str
    bridge_address: str
    accel: str
    hosts: list[HostState] = field(default_factory=list)
    pool_mib: int = 1024
    up_seconds: float = 0.0

    @staticmethod
    def path() -> Path:
        return lab_dir() / "state.json"

    def save(self) -> None:
        data = {
            "subnet": self.subnet,
            "bridge_address": self.bridge_address,
            "accel": self.accel,
            "pool_mib": self.pool_mib,
            "up_seconds": self.up_seconds,
            "hosts": [h.to_json() for h in self.hosts],
        }
        path = self.path()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls) -> LabState | None:
        try:
            data = json.loads(cls.path().read_text())
        except FileNotFoundError:
            return None
        return cls(
            subnet=data["subnet"],
            bridge_address=data["bridge_address"],
            accel=data["accel"],
            pool_mib=int(data.get("pool_mib", 1024)),
            up_seconds=float(data.get("up_seconds", 0.0)),
            hosts=[HostState.from_json(h) for h in data["hosts"]],
        )

    def host(self, name: str) -> HostState:
        for h in self.hosts:
            if h.name == name:
                return h
        known = ", ".join(h.name for h in self.hosts) or "none"
        raise RuntimeError(f"no lab host named {name!r} (hosts: {known})")


# One lab (per instance) per machine, shared by every process: `up`, `down` and a test session that
# uses the lab hold this lock, so a second test run (or a `lab up` typed meanwhile) cannot tear the lab
# down under the first. Re-entrant within a process (flock would otherwise conflict with itself), per
# lab directory: holding the default lab does not hold lab 2.
_held: dict[Path, int] = {}  # lab directory -> depth


@contextlib.contextmanager
def exclusive(purpose: str, wait: float = 0.0, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the lab for `purpose`; wait up to `wait` seconds for another holder (telling `on_wait`
    who it is, once), then give up with a sentence naming it."""
    d = lab_dir()
    if d in _held:
        _held[d] += 1
        try:
            yield
        finally:
            _held[d] -= 1
        return
    d.mkdir(parents=True, exist_ok=True)
    fd = os.open(d / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            owner = (d / "lock.owner").read_text().strip() if (d / "lock.owner").exists() else "?"
            if time.monotonic() >= deadline:
                os.close(fd)
                raise RuntimeError(f"the lab is in use by {owner}; try again when it is done") from None
            if on_wait is not None:
                on_wait(owner)
                on_wait = None
            time.sleep(1)
    (d / "lock.owner").write_text(f"{purpose} (pid {os.getpid()})\n")
    with (d / "lock.log").open("a") as log:  # who held the lab when: for "who tore my lab down?"
        log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {purpose} (pid {os.getpid()})\n")
    _held[d] = 1
    try:
        yield
    finally:
        del _held[d]
        os.close(fd)  # releases the flock
