"""Facts about the machine a benchmark ran on, for the table's header."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

# The workplace's name for this kind of machine (its environment notes): 2 cores and 24 GiB, shared
# with whatever else runs here, so the load average goes into the header too.
MACHINE_KIND = "polyglot"


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=10).stdout
    except OSError:
        return "not installed"
    return out.strip().splitlines()[0] if out.strip() else "unknown"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def memory_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 2**20
    return 0.0


def loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def describe(accel: str | None) -> list[str]:
    debian = Path("/etc/debian_version").read_text().strip() if Path("/etc/debian_version").exists() else "?"
    qemu = _first_line(["qemu-system-x86_64", "--version"])
    libvirt = _first_line(["libvirtd", "--version"])
    return [
        f"Machine: `{MACHINE_KIND}` ({os.cpu_count()} cores of {cpu_model()}, {memory_gib():.0f} GiB), "
        f"Debian {debian}, kernel {platform.release()}, Python {platform.python_version()}.",
        f"Hypervisor: {libvirt}; {qemu}; lab guests under {accel or '?'}"
        + (" (software emulation: nested KVM does not boot the guest here, docs/lab.md)" if accel == "tcg" else "")
        + ".",
    ]
