"""Host facts that both drivers read from the host's own shell, in the same words.

Each driver's facts script runs in one SSH round trip, timed against the operator's clock (`run`), and
includes `SHELL`: every global IPv4 address with its device (`addr <device> <address>/<prefix>`), every
link's speed (`speed <device> <Mbit/s>`, -1 where the link does not say), the clock (`clock <ns since
the epoch>`) and the kernel (`kernel <release>`). `Links` reads the `addr` and `speed` lines into the
host's subnets and the speed of the link that migrations use; each driver reads the clock and kernel
lines along with its own.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from vemigrate.api.host import NetworkFacts
from vemigrate.drivers.ssh import SSHHost

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
