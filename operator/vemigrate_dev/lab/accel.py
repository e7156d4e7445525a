"""KVM or TCG: KVM only when the lab guest really boots under it (a Debian kernel was seen hanging
under nested KVM here while /dev/kvm looked fine). Probed once with a timeout; the verdict is cached
per guest image, QEMU build and host kernel."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from vemigrate_dev.lab.guest import GuestImage
from vemigrate_dev.lab.state import lab_dir

PROBE_TIMEOUT = 20.0
QEMU = "/usr/bin/qemu-system-x86_64"


def _verdict_key(image: GuestImage) -> str:
    qemu = Path(QEMU).stat()
    return f"{image.digest}:{int(qemu.st_mtime)}:{os.uname().release}"


def choose(image: GuestImage, force: str | None = None) -> tuple[str, str]:
    """("kvm" | "tcg", why). `force` (or VEMIGRATE_LAB_ACCEL) skips the probe."""
    force = force or os.environ.get("VEMIGRATE_LAB_ACCEL")
    if force:
        if force not in ("kvm", "tcg"):
            raise RuntimeError(f"accelerator must be kvm or tcg, not {force!r}")
        return force, "forced"
    cache = lab_dir() / "accel.json"
    key = _verdict_key(image)
    try:
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return str(cached["accel"]), f"cached: {cached['why']}"
    except (FileNotFoundError, ValueError, KeyError):
        pass
    accel, why = _probe(image)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"key": key, "accel": accel, "why": why}) + "\n")
    return accel, why


def _probe(image: GuestImage) -> tuple[str, str]:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg", "/dev/kvm missing or not accessible"
    with tempfile.TemporaryDirectory(prefix="vemigrate-kvm-probe-") as tmp:
        serial = Path(tmp) / "serial"
        argv = [
            QEMU,
            "-accel",
            "kvm",
            "-machine",
            "pc",
            "-m",
            "128",
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            f"file:{serial}",
            "-kernel",
            str(image.kernel),
            "-initrd",
            str(image.initrd),
            "-append",
            "console=ttyS0 quiet panic=-1 vemigrate.probe=1",
        ]
        start = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            while time.monotonic() - start < PROBE_TIMEOUT:
                if serial.exists() and b"VEMIGRATE-BOOTED" in serial.read_bytes():
                    return "kvm", f"guest booted under KVM in {time.monotonic() - start:.1f} s"
                if proc.poll() is not None:
                    err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
                    return "tcg", f"QEMU with KVM exited early: {err[-300:]}"
                time.sleep(0.1)
            return "tcg", f"guest did not boot under KVM within {PROBE_TIMEOUT:g} s"
        finally:
            proc.kill()
            proc.wait()
