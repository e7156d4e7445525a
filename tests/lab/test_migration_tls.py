"""Migration TLS between lab hosts, with plain virsh: the command the operator's libvirt driver runs
for a `tunnel: true` migration that copies local disks (libvirt cannot tunnel a disk copy, so QEMU's
own TLS encrypts memory and the NBD disk copy instead)."""

from __future__ import annotations

import time
from collections.abc import Callable

from vemigrate_dev.lab import Heartbeats, Lab, LabHost, LabInfo
from vemigrate_dev.lab.guest import DISK_EVERY
from vemigrate_dev.lab.tls import CERT_DIR

NAME = "tls-live"


def _wait(what: str, predicate: Callable[[], object], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _beats(h: LabHost) -> Heartbeats:
    log = h.serial_log(NAME)
    return Heartbeats.parse(log.read_text(errors="replace") if log.exists() else "")


def _log_size(h: LabHost) -> int:
    return (h.dir / "log" / "libvirtd.log").stat().st_size


def _log_since(h: LabHost, size: int) -> str:
    with (h.dir / "log" / "libvirtd.log").open("rb") as f:
        f.seek(size)
        return f.read().decode(errors="replace")[-3000:]


def test_tls_live_migration_copies_the_disk_encrypted(lab: LabInfo, vm_cleanup: Callable[[str], str]) -> None:
    src, dst = lab.hosts[0], lab.hosts[1]
    for h in (src, dst):
        # What the operator's host probe checks (its EncryptedDiskCopy pre-flight).
        conf = Lab.exec(h.name, ["cat", "/etc/libvirt/qemu.conf"], capture=True).stdout
        assert f'migrate_tls_x509_cert_dir = "{CERT_DIR}"' in conf
        for f in ("ca-cert.pem", "server-cert.pem", "server-key.pem", "client-cert.pem", "client-key.pem"):
            assert Lab.exec(h.name, ["test", "-r", f"{CERT_DIR}/{f}"]).returncode == 0, f"{h.name}: {f}"
        assert h.path(f"{CERT_DIR}/server-key.pem").stat().st_mode & 0o077 == 0

    vm_cleanup(NAME)
    vm = Lab.create_vm(src.name, NAME, memory_mib=256, disk_mib=64, dirty_mib=4)
    _wait("heartbeats on the source", lambda: len(_beats(src).beats) >= 2, 60)
    boot_id = _beats(src).boots[-1]

    sizes = [_log_size(h) for h in (src, dst)]
    argv = ["virsh", "migrate", "--live", "--p2p", "--persistent", "--undefinesource", "--tls", "--copy-storage-all"]
    start = time.monotonic()
    out = Lab.exec(src.name, [*argv, NAME, dst.ssh_uri], capture=True)
    wall = time.monotonic() - start
    # --tls is mandatory, never a fallback: success means QEMU (memory and NBD disk copy) verified
    # both ends' certificates against the lab CA and encrypted the stream.
    assert out.returncode == 0, f"virsh migrate --tls failed: {out.stderr}\n" + "\n".join(
        f"--- {h.name} libvirtd.log\n{_log_since(h, n)}" for h, n in zip((src, dst), sizes, strict=True)
    )
    last_on_source = _beats(src).beats[-1]

    assert Lab.exec(src.name, ["virsh", "domstate", NAME], capture=True).returncode != 0  # undefined there
    assert Lab.exec(dst.name, ["virsh", "domstate", NAME], capture=True).stdout.strip() == "running"
    stats = Lab.exec(dst.name, ["virsh", "domjobinfo", "--completed", NAME], capture=True).stdout
    print(f"TLS live migration ({lab.accel}): {wall:.2f} s wall\n{stats}")

    # Same boot, counter continuing on the target, and the guest reads its payload from the copied disk.
    _wait("heartbeats on the target", lambda: len(_beats(dst).beats) >= 2, 30)
    after = _beats(dst)
    assert after.boots == []
    assert {b for b, _ in after.beats} == {boot_id}
    assert last_on_source[1] <= after.beats[0][1] <= last_on_source[1] + 3
    _wait("a disk check on the target", lambda: _beats(dst).disk_md5s, DISK_EVERY * 3 + 15)
    assert _beats(dst).disk_md5s == [vm.payload_md5]
