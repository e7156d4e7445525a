"""Host facts that both drivers read from the host's own shell, in the same words.

Each driver's facts script runs in one SSH round trip, timed against the operator's clock (`run`), and
includes `SHELL`: every global IPv4 address with its device (`addr <device> <address>/<prefix>`), every
link's speed (`speed <device> <Mbit/s>`, -1 where the link does not say), the clock (`clock <ns since
the epoch>`) and the kernel (`kernel <release>`). `Links` reads the `addr` and `speed` lines into the
host's subnets and the speed of the link that migrations use; each driver reads the clock and kernel
lines along with its own.

`DF` measures the storage paths a driver asks about; `storage` reads its lines.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from vemigrate.api.host import NetworkFacts
from vemigrate.drivers.ssh import SSHHost

# $@: the storage paths to measure. Per path that df can measure: `df <n> <free bytes> <total bytes>
# <fs type>`, n its position in $@ from 1. The path itself is never printed, so no name (spaces, a line
# break, `|`) can break a line or pass for another line; `storage` maps n back to the path asked about.
# A path not made yet (spec.target.path) is measured where it would be made: its nearest existing parent.
DF = r"""n=0
for p in "$@"; do
  n=$((n + 1))
  q=$p; while [ ! -e "$q" ] && [ "$q" != / ] && [ "$q" != . ]; do q=$(dirname -- "$q"); done
  s=$(df -B1 --output=avail,size,fstype -- "$q" 2>/dev/null | tail -n 1) && [ -n "$s" ] && printf 'df %d %s\n' "$n" "$s"
done
"""

SHELL = r"""ip -o -4 addr show scope global 2>/dev/null | awk '{print "addr", $2, $4}'
for d in /sys/class/net/*; do s=$(cat "$d/speed" 2>/dev/null) && echo "speed $(basename "$d") $s"; done
echo "clock $(date +%s%N)"
echo "kernel $(uname -r)"
"""


async def run(ssh: SSHHost, script: str, args: Sequence[str]) -> tuple[str, int]:
    """(what the facts script printed, the operator's clock in ns half-way through the round trip): the
    host's `clock` line less the second is the host's clock offset."""
    sent = time.time_ns()
    shell = await ssh.run(["sh", "-c", script, "sh", *args])
    received = time.time_ns()
    return shell.stdout, (sent + received) // 2


@dataclass(frozen=True)
class Storage:
    """One `df` line of `DF`, read against the paths the script was given."""

    path: str
    free_bytes: int
    total_bytes: int
    fstype: str


def storage(parts: Sequence[str], paths: Sequence[str]) -> Storage | None:
    """The words after `df` on a line `DF` printed, or None when they do not read as one."""
    if len(parts) != 4 or not all(p.isdigit() for p in parts[:3]) or not 1 <= int(parts[0]) <= len(paths):
        return None
    return Storage(path=paths[int(parts[0]) - 1], free_bytes=int(parts[1]), total_bytes=int(parts[2]), fstype=parts[3])


@dataclass
class Links:
    """The `addr` and `speed` lines of a facts script, read one at a time."""

    subnets: list[str] = field(default_factory=list)
    devices: dict[str, str] = field(default_factory=dict)  # address -> the device that holds it
    speeds: dict[str, int] = field(default_factory=dict)  # device -> Mbit/s

    def read(self, shell: str) -> Iterator[tuple[str, str, list[str]]]:
        """Take the `addr` and `speed` lines of what a facts script printed; every other line is the
        driver's, as (its first word, the rest of it, the words of the rest)."""
        for line in shell.splitlines():
            word, _, rest = line.partition(" ")
            parts = rest.split()
            if not self._take(word, parts):
                yield word, rest, parts

    def _take(self, word: str, parts: list[str]) -> bool:
        if word == "addr" and len(parts) >= 2:
            self.subnets.append(str(ipaddress.ip_interface(parts[1]).network))
            self.devices[parts[1].split("/")[0]] = parts[0]
            return True
        if word == "speed" and len(parts) >= 2 and parts[1].lstrip("-").isdigit():
            self.speeds[parts[0]] = int(parts[1])
            return True
        return False

    def network(self, bridges: Iterable[str], data_address: str) -> NetworkFacts:
        """The host's bridges and subnets, and the speed of the link that holds `data_address` (where
        migration traffic goes), when that link says."""
        device = self.devices.get(data_address)
        speed = self.speeds.get(device) if device else None
        return NetworkFacts(
            bridges=sorted(set(bridges)),
            subnets=sorted(set(self.subnets)),
            link_speed_mbps=speed if speed and speed > 0 else None,
        )
