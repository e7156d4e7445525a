"""A large disk moves offline without tripping the progress timeout: its sha256 is taken from the stream
as it passes, on both ends, so progress is reported for the whole copy. (Hashing each disk whole on both
ends around the copy, with no progress meanwhile, rolled such a disk back with ProgressTimeout.)

Sizes: progressSeconds is at its minimum (10 s); the disk is 6 GiB, which sha256sum alone takes well over
10 s to read on this machine's cores, and sparse on the source so that it costs no memory there. The
target holds it whole, so lab2's pool (a tmpfs) is enlarged for the test and shrunk back after. The copy
is uncompressed: zstd holds its output until 128 KiB of it are ready, which for zeros is over a GiB of
disk, so a compressed run of zeros reaches the target in bursts seconds apart (docs/libvirt.md)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.fixtures.operator import Migrations
from tests.lab.evidence import domain
from vemigrate_dev.lab import Lab, LabInfo, VMState

Cleanup = Callable[[str], str]
POOL = "/var/lib/libvirt/images"
GIB = 1024**3
SIZE = 6 * GIB


def _sh(host: str, script: str, *args: str) -> str:
    done = Lab.exec(host, ["sh", "-c", script, "sh", *args], capture=True)
    assert done.returncode == 0, done.stderr
    return str(done.stdout)


@pytest.fixture
def roomy_target(hosts: LabInfo) -> Iterator[list[str]]:
    """lab2's pool with room for the disk; its own size again afterwards, once the directories the test
    names (its VM's on lab2, whatever a failed run left there) are gone."""
    size = _sh("lab2", "findmnt -n -o OPTIONS -T \"$1\" | tr , '\\n' | sed -n 's/^size=//p'", POOL).strip()
    _sh("lab2", 'mount -o remount,size="$2" "$1"', POOL, f"{SIZE // 1024**2 + 2048}m")
    own: list[str] = []
    yield own
    for directory in own:
        _sh("lab2", 'rm -rf -- "$1"', directory)
    # A rolled-back copy's receiver may still hold its file open for a moment: the space frees when it ends.
    shrink = 'for i in $(seq 60); do mount -o remount,size="$2" "$1" 2>/dev/null && exit 0; sleep 1; done; exit 1'
    _sh("lab2", shrink, POOL, size)


def test_a_large_offline_disk_moves_with_progress_and_no_progress_timeout(
    roomy_target: list[str], hosts: LabInfo, migrations: Migrations, vm_cleanup: Cleanup
) -> None:
    name = vm_cleanup("bigdisk1")
    vm = Lab.create_vm("lab1", name, state=VMState.STOPPED)
    roomy_target.append(f"{POOL}/{vm.uuid}")  # where the copy lands on lab2: this test's own
    big = f"{POOL}/{name}-data.raw"
    tail = "the end"  # zeros, then these bytes: sparse on the source, written whole on the target
    make = 'truncate -s "$2" "$1" && printf %s "$3" | dd of="$1" bs=1 seek=$(($2 - ${#3})) conv=notrunc status=none'
    _sh("lab1", make, big, str(SIZE), tail)
    attach = 'virsh -q -c qemu:///system attach-disk "$1" "$2" vdb --config --driver qemu --subdriver raw'
    _sh("lab1", attach, name, big)
    migrations.create(
        name,
        {
            "source": {"host": "lab1", "name": name},
            "target": {"host": "lab2"},
            "compression": False,
            "timeouts": {"progressSeconds": 10},
            "retry": {"maxAttempts": 1},
        },
    )

    def copying(body: dict[str, Any]) -> bool:
        status = body.get("status") or {}
        progress = status.get("progress") or {}
        if status.get("phase") in ("RollingBack", "Failed", "Succeeded"):
            return True  # too late to see the copy: the assertions below say why
        return status.get("phase") == "Transferring" and 0 < (progress.get("bytesProcessed") or 0) < SIZE

    seen = migrations.wait(name, copying, timeout=300)["status"]
    assert seen["phase"] == "Transferring", f"no progress was seen during the copy: {seen}"
    status = migrations.wait_phase(name, "Succeeded", "Failed", timeout=600)["status"]
    assert status["phase"] == "Succeeded", status.get("failure")
    assert status["mode"] == "Offline"
    assert status["progress"]["bytesTotal"] >= SIZE
    moved = ET.fromstring(domain(hosts, "lab2", name).XMLDesc(0))
    path = str(moved.find("./devices/disk/target[@dev='vdb']/../source").get("file"))  # type: ignore[union-attr]
    same = (
        '[ "$(stat -c %s -- "$1")" = "$2" ] && cmp -s -n $(($2 - ${#3})) -- "$1" /dev/zero && '
        '[ "$(tail -c ${#3} -- "$1")" = "$3" ]'
    )
    _sh("lab2", same, path, str(SIZE), tail)  # the disk arrived byte for byte
