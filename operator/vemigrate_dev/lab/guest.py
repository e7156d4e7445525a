"""The lab's guest image: a Debian kernel (its uncompressed ELF) and a busybox-static initramfs, built on first use from
Debian packages and cached outside the repository. No installer, no network inside the guest.

The guest's init (below) prints `VEMIGRATE-BOOTED boot=<id>` once, then every second a heartbeat
`HB boot=<id> n=<n>` to the serial console and the same line into sector 0 of its disk; every
`DISK_EVERY` beats it prints `DISK md5=<md5>` of the payload (MiB 1-5 of the disk, written by the lab
when the disk is made) re-read from the device with caches dropped. `vemigrate.dirty_mib=N` on the
kernel command line makes it rewrite N MiB of a tmpfs working set every second.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import lzma
import shutil
import subprocess
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from vemigrate_dev.lab.process import CommandError, run
from vemigrate_dev.lab.state import cache_dir

PAYLOAD_OFFSET = 1 << 20
PAYLOAD_SIZE = 4 << 20
DISK_EVERY = 5
# Load order follows each module's depends= field (busybox insmod resolves nothing).
MODULES = (
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_pci_modern_dev.ko",
    "drivers/virtio/virtio_pci_legacy_dev.ko",
    "drivers/virtio/virtio_pci.ko",
    "drivers/block/virtio_blk.ko",
    "net/core/failover.ko",
    "drivers/net/net_failover.ko",
    "drivers/net/virtio_net.ko",
)

INIT = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /usr/bin /usr/sbin /sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /lib/modules/order); do insmod "/lib/modules/$m" 2>/dev/null; done
param() { sed -n "s/.*vemigrate\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
dirty=$(param dirty_mib); dirty=${dirty:-0}
ws=$(param dirty_ws_mib); ws=${ws:-32}
boot=$(head -c 16 /dev/urandom | md5sum | cut -c1-12)
echo "VEMIGRATE-BOOTED boot=$boot uptime=$(cut -d' ' -f1 /proc/uptime)"
[ "$(param probe)" = 1 ] && { sync; poweroff -f; }
ip link set eth0 up 2>/dev/null
if [ "$dirty" -gt 0 ]; then
    mkdir -p /dirty && mount -t tmpfs -o "size=$((ws + 1))m" tmpfs /dirty
    head -c 1048576 /dev/urandom > /tmp/chunk
    (i=0; while :; do
        j=0
        while [ "$j" -lt "$dirty" ]; do
            dd if=/tmp/chunk of=/dirty/ws bs=1M seek=$((i % ws)) conv=notrunc 2>/dev/null
            i=$((i + 1)); j=$((j + 1))
        done
        sleep 1
    done) &
fi
n=0
while :; do
    n=$((n + 1))
    line="HB boot=$boot n=$n"
    echo "$line"
    [ -b /dev/vda ] && echo "$line" | dd of=/dev/vda bs=512 count=1 conv=sync,notrunc,fsync 2>/dev/null
    if [ -b /dev/vda ] && [ $((n % __DISK_EVERY__)) = 1 ]; then
        sync; echo 3 > /proc/sys/vm/drop_caches
        echo "DISK md5=$(dd if=/dev/vda bs=1M skip=1 count=4 2>/dev/null | md5sum | cut -d' ' -f1)"
    fi
    sleep 1
done
""".replace("__DISK_EVERY__", str(DISK_EVERY))


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initrd: Path
    version: str  # the Debian kernel package it came from

    @property
    def digest(self) -> str:
        """Identifies the image (for caching the KVM verdict)."""
        h = hashlib.sha256(self.initrd.read_bytes())
        h.update(f"{self.version}:{self.kernel.name}:{self.kernel.stat().st_size}".encode())
        return h.hexdigest()[:16]


def guest_dir() -> Path:
    return cache_dir() / "guest"


def ensure_image() -> GuestImage:
    """The cached image, built first if missing (downloads one kernel package through apt)."""
    d = guest_dir()
    kernel, initrd, version = d / "vmlinux", d / "initrd.gz", d / "kernel-version"
    init_digest = hashlib.sha256(INIT.encode()).hexdigest()[:16]
    stamp = d / "init-digest"
    if kernel.exists() and initrd.exists() and stamp.exists() and stamp.read_text() == init_digest:
        return GuestImage(kernel, initrd, version.read_text().strip())
    d.mkdir(parents=True, exist_ok=True)
    # Two labs may start at once (`make test` runs two): one builds, the other waits and reuses it.
    with (d / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (kernel.exists() and initrd.exists() and stamp.exists() and stamp.read_text() == init_digest):
            _build(kernel, initrd, version, stamp, init_digest)
    return GuestImage(kernel, initrd, version.read_text().strip())


def _build(kernel: Path, initrd: Path, version: Path, stamp: Path, init_digest: str) -> None:
    with tempfile.TemporaryDirectory(prefix="vemigrate-guest-") as tmp:
        work = Path(tmp)
        pkg = _kernel_package()
        proc = subprocess.run(
            # As root, not apt's sandbox user, which could not write into this private directory.
            ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", pkg],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        debs = list(work.glob("linux-image-*.deb"))
        if proc.returncode != 0 or not debs:
            raise CommandError(f"apt-get download {pkg} failed: {proc.stderr.strip()[-1000:]}")
        tree = work / "tree"
        run(["dpkg-deb", "-x", str(debs[0]), str(tree)], timeout=300)
        vmlinuz = next((tree / "boot").glob("vmlinuz-*"))
        kver = vmlinuz.name.removeprefix("vmlinuz-")
        _build_initrd(tree / "lib" / "modules" / kver / "kernel", work / "initrd.gz")
        kernel.write_bytes(_uncompressed(vmlinuz.read_bytes()))
        shutil.copyfile(work / "initrd.gz", initrd)
        version.write_text(pkg + "\n")
        stamp.write_text(init_digest)


def _uncompressed(bzimage: bytes) -> bytes:
    """The ELF kernel inside a bzImage. QEMU boots it directly through its PVH entry point, which
    skips the in-guest decompression: under TCG that halves the boot (about 6 s instead of 11 s)."""
    for magic, fmt in ((b"\xfd7zXZ\x00", lzma.FORMAT_XZ), (b"\x5d\x00\x00", lzma.FORMAT_ALONE)):
        start = bzimage.find(magic)
        if start < 0:
            continue
        try:
            elf = lzma.LZMADecompressor(format=fmt).decompress(bzimage[start:])
        except lzma.LZMAError:
            continue
        if elf[:4] == b"\x7fELF":
            return elf
    start = bzimage.find(b"\x1f\x8b\x08")
    if start >= 0:
        elf = zlib.decompressobj(wbits=31).decompress(bzimage[start:])
        if elf[:4] == b"\x7fELF":
            return elf
    raise CommandError("cannot find the compressed ELF kernel inside the Debian kernel image")


def _kernel_package() -> str:
    """The linux-image-*-amd64 package the linux-image-amd64 metapackage currently points at."""
    out = run(["apt-cache", "depends", "linux-image-amd64"]).stdout
    for line in out.splitlines():
        name = line.strip().removeprefix("Depends:").strip()
        if name.startswith("linux-image-") and name.endswith("-amd64") and name != "linux-image-amd64":
            return name
    raise CommandError("apt-cache knows no linux-image-*-amd64 package (run apt-get update)")


def _build_initrd(modules: Path, out: Path) -> None:
    busybox = Path("/bin/busybox")
    # The initramfs has no libraries: a dynamically linked busybox (package busybox) cannot run there.
    if not busybox.exists() or not _statically_linked(busybox):
        raise CommandError("busybox-static is not installed (run tools/setup.sh)")
    with tempfile.TemporaryDirectory(prefix="vemigrate-initrd-") as tmp:
        root = Path(tmp)
        (root / "bin").mkdir()
        (root / "lib" / "modules").mkdir(parents=True)
        shutil.copy2(busybox, root / "bin" / "busybox")
        for rel in MODULES:
            shutil.copy2(modules / rel, root / "lib" / "modules" / Path(rel).name)
        (root / "lib" / "modules" / "order").write_text("\n".join(Path(m).name for m in MODULES) + "\n")
        init = root / "init"
        init.write_text(INIT)
        init.chmod(0o755)
        names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
        proc = subprocess.run(
            ["cpio", "--quiet", "-o", "-H", "newc", "-D", str(root)],
            input=("\n".join([".", *names]) + "\n").encode(),
            capture_output=True,
            check=True,
            timeout=60,
        )
        out.write_bytes(gzip.compress(proc.stdout, compresslevel=6))


def _statically_linked(path: Path) -> bool:
    """True when the 64-bit ELF file has no PT_INTERP program header (no dynamic loader)."""
    head = path.read_bytes()[:65536]
    if head[:5] != b"\x7fELF\x02":
        return False
    phoff = int.from_bytes(head[32:40], "little")
    phentsize = int.from_bytes(head[54:56], "little")
    phnum = int.from_bytes(head[56:58], "little")
    pt_interp = 3
    return all(
        int.from_bytes(head[phoff + i * phentsize : phoff + i * phentsize + 4], "little") != pt_interp
        for i in range(phnum)
    )


def payload(seed: str) -> bytes:
    """Deterministic payload bytes for a VM's disk, so tests can recompute what they must find."""
    out = bytearray()
    counter = 0
    while len(out) < PAYLOAD_SIZE:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:PAYLOAD_SIZE])
