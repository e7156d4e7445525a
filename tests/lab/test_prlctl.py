"""The prlctl driver end to end: the real operator drives `prlctl migrate` over SSH on lab hosts
published as `<host>-vz` (driver prlctl), where the lab's prlctl/prlsrvctl STAND-IN (not Virtuozzo)
does the work with libvirt. Each test asserts from outside: libvirt on both hosts, disk checksums,
the guest's own heartbeat, the job's files on the source node, and the object's status."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import libvirt
import pytest

from tests.fixtures.operator import Migrations, OperatorProcess
from tests.lab.evidence import beating_on, domain, first_beat
from vemigrate.drivers.hostjob import JOBS_DIR
from vemigrate_dev.lab import Lab, LabInfo, VMState

Cleanup = Callable[[str], str]
SRC, DST = "lab1-vz", "lab2-vz"


@pytest.fixture
def slow_link() -> Iterator[Callable[[str], None]]:
    """Shape lab2's link (both directions) for a test, and always clear it afterwards."""

    def shape(rate: str) -> None:
        Lab.netem("lab2", rate=rate)

    yield shape
    Lab.netem("lab2")


def _spec(name: str, **extra: Any) -> dict[str, Any]:
    return {"source": {"host": SRC, "name": name}, "target": {"host": DST}, **extra}


def _disk(lab: LabInfo, host: str, name: str) -> str:
    xml = domain(lab, host, name).XMLDesc(0)
    start = xml.index("<source file='") + len("<source file='")
    return str(xml[start : xml.index("'", start)])


def _md5(host: str, path: str) -> str:
    out = Lab.exec(host, ["md5sum", path], capture=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()[0]


def _job_file(uid: str, name: str) -> str:
    out = Lab.exec("lab1", ["cat", f"{JOBS_DIR}/{uid}/1/{name}"], capture=True)  # attempt 1
    return out.stdout if out.returncode == 0 else ""


def _transferring(migrations: Migrations, name: str) -> dict[str, Any]:
    return migrations.wait(
        name,
        lambda b: (
            (b.get("status") or {}).get("phase") == "Transferring"
            and ((b["status"].get("progress") or {}).get("bytesProcessed") or 0) > 0
        ),
        timeout=120,
    )


def test_live_vm_migration_through_prlctl(vz: LabInfo, migrations: Migrations, vm_cleanup: Cleanup) -> None:
    name = vm_cleanup("vzlive1")
    Lab.create_vm("lab1", name, state=VMState.RUNNING)
    boot, counter = first_beat("lab1", name)
    created = migrations.create(name, _spec(name))
    uid = created["metadata"]["uid"]
    status = migrations.wait_phase(name, "Succeeded", "Failed", timeout=300)["status"]
    assert status["phase"] == "Succeeded", status
    assert (status["mode"], status["driver"]) == ("Live", "prlctl")
    assert status["progress"]["percent"] == 100
    assert status["result"]["sourceDisposition"] == "Removed"
    assert beating_on("lab2", name, boot) > counter, "the same guest kept running, now on lab2"
    assert domain(vz, "lab1", name) is None, "prlctl removed the VM from the source"
    assert _job_file(uid, "log") == "", "the job's files are forgotten once the migration is final"


def test_offline_vm_migration_to_a_custom_path(vz: LabInfo, migrations: Migrations, vm_cleanup: Cleanup) -> None:
    name = vm_cleanup("vzoff1")
    vm = Lab.create_vm("lab1", name, state=VMState.STOPPED)
    disk = _disk(vz, "lab1", name)
    before = _md5("lab1", disk)
    migrations.create(name, _spec(name, target={"host": DST, "path": "/var/lib/libvirt/vz-custom"}))
    status = migrations.wait_phase(name, "Succeeded", "Failed", timeout=300)["status"]
    assert status["phase"] == "Succeeded", status
    assert status["mode"] == "Offline"
    moved = _disk(vz, "lab2", name)
    assert moved == f"/var/lib/libvirt/vz-custom/{vm.uuid}/{disk.rsplit('/', 1)[1]}", "--dst: <path>/<VE_UUID>/"
    assert _md5("lab2", moved) == before, "the disk arrived bit for bit"
    assert domain(vz, "lab1", name) is None
    assert Lab.exec("lab1", ["test", "-e", disk]).returncode != 0, "the source VM is removed with its disk"
    assert status["result"]["sourceDisposition"] == "Removed"


def test_clone_keeps_the_source(vz: LabInfo, migrations: Migrations, vm_cleanup: Cleanup) -> None:
    name = vm_cleanup("vzclone1")
    vm = Lab.create_vm("lab1", name, state=VMState.STOPPED)
    source_mac = domain(vz, "lab1", name).XMLDesc(0).split("<mac address='")[1].split("'")[0]
    migrations.create(name, _spec(name, clone=True))
    status = migrations.wait_phase(name, "Succeeded", "Failed", timeout=300)["status"]
    assert status["phase"] == "Succeeded", status
    assert status["result"]["sourceDisposition"] == "Kept"
    clone = domain(vz, "lab2", name)
    assert domain(vz, "lab1", name) is not None, "the source is kept"
    assert clone.UUIDString() != vm.uuid and status["result"]["targetUUID"] == clone.UUIDString()
    assert source_mac not in clone.XMLDesc(0), "the clone gets a new MAC address"


def test_cancel_mid_transfer_stops_prlctl_and_leaves_the_guest_on_the_source(
    vz: LabInfo, migrations: Migrations, vm_cleanup: Cleanup, slow_link: Callable[[str], None]
) -> None:
    name = vm_cleanup("vzcancel1")
    Lab.create_vm("lab1", name, state=VMState.RUNNING)
    boot, counter = first_beat("lab1", name)
    disk = _disk(vz, "lab1", name)
    slow_link("8mbit")  # some minutes for memory and disk: it is still moving when the Cancel lands
    uid = migrations.create(name, _spec(name))["metadata"]["uid"]
    _transferring(migrations, name)
    migrations.patch_spec(name, {"action": "Cancel"})
    seen = ""
    deadline = time.monotonic() + 60
    while "Canceling the migration" not in seen and time.monotonic() < deadline:
        seen = _job_file(uid, "log")  # prlctl's own answer to the SIGTERM, before the job is forgotten
        time.sleep(0.3)
    status = migrations.wait_phase(name, "Cancelled", "Failed", "Succeeded", timeout=120)["status"]
    assert status["phase"] == "Cancelled", status
    assert "Canceling the migration" in seen, seen
    assert beating_on("lab1", name, boot) > counter, "the same guest keeps running on the source"
    assert domain(vz, "lab1", name).state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert domain(vz, "lab2", name) is None, "nothing defined on the target"
    assert Lab.exec("lab2", ["test", "-e", disk]).returncode != 0, "no disk left on the target"


def test_operator_restart_mid_migration_reattaches_to_the_same_prlctl(
    vz: LabInfo,
    migrations: Migrations,
    operator: OperatorProcess,
    vm_cleanup: Cleanup,
    slow_link: Callable[[str], None],
) -> None:
    name = vm_cleanup("vzkill1")
    Lab.create_vm("lab1", name, state=VMState.RUNNING, memory_mib=128, dirty_mib=1)
    boot, _ = first_beat("lab1", name)
    slow_link("40mbit")  # long enough to restart the operator in the middle, short enough to finish
    uid = migrations.create(name, _spec(name))["metadata"]["uid"]
    _transferring(migrations, name)
    pid = _job_file(uid, "migrate.pid").strip()
    assert pid.isdigit()
    operator.kill()
    time.sleep(2)
    operator.start()
    _transferring(migrations, name)
    assert _job_file(uid, "migrate.pid").strip() == pid, "the same prlctl process, not a second job"
    status = migrations.wait_phase(name, "Succeeded", "Failed", timeout=300)["status"]
    assert status["phase"] == "Succeeded", status
    assert status["attempts"] == 1
    assert [t["phase"] for t in status["phaseTransitions"]].count("Transferring") == 1
    assert domain(vz, "lab1", name) is None, "exactly one copy"
    assert beating_on("lab2", name, boot) > 0, "the same guest, live, on the target"


def test_a_vm_with_snapshots_fails_the_preflight_check(
    vz: LabInfo, migrations: Migrations, vm_cleanup: Cleanup
) -> None:
    """The snapshot count comes from `prlctl snapshot-list` on the node."""
    name = vm_cleanup("vzsnap1")
    Lab.create_vm("lab1", name, state=VMState.STOPPED)
    Lab.snapshot("lab1", name, "before-upgrade")
    migrations.create(name, _spec(name))
    status = migrations.wait_phase(name, "Failed", "Succeeded", timeout=120)["status"]
    assert status["phase"] == "Failed" and status["failure"]["reason"] == "PreflightFailed", status
    failed = {c["name"]: c["message"] for c in status["checks"] if c["result"] == "Failed"}
    assert list(failed) == ["NoSnapshots"], failed
    assert "1 snapshot" in failed["NoSnapshots"]
    assert domain(vz, "lab1", name) is not None and domain(vz, "lab2", name) is None, "nothing moved"


def test_the_standin_refuses_what_prlctl_refuses(vz: LabInfo) -> None:
    """The stand-in's command line contract, as the operator's driver meets it over SSH."""
    cases = [
        (["prlctl", "migrate", "x", "root@10.0.0.2", "--changesid"], 1, "--changesid option can be used with --clone"),
        (["prlctl", "migrate", "x", "root@10.0.0.2", "--dst=./here"], 1, "relative paths are not allowed"),
        (["prlctl", "migrate", "x"], 1, "Incorrect migrate usage"),
        (["prlctl", "migrate", "nosuchvm", "root@10.0.0.2"], 255, "does not exist"),
    ]
    for argv, code, message in cases:
        out = Lab.exec("lab1", argv, capture=True)
        assert (out.returncode, message in out.stderr) == (code, True), (argv, out.returncode, out.stderr)


def test_offline_container_migration_renames_the_source_migrated(
    vz: LabInfo, migrations: Migrations, lxc: None
) -> None:
    """The seed's default for containers: private area and config renamed `.migrated` on the source."""
    name = "vzct1"
    ct = Lab.create_ct("lab1", name, running=False)
    lxc_uri = "lxc:///system"
    try:
        migrations.create(name, _spec(name))
        status = migrations.wait_phase(name, "Succeeded", "Failed", timeout=180)["status"]
        assert status["phase"] == "Succeeded", status
        assert status["result"]["sourceDisposition"] == "RenamedMigrated"
        uuid = ct.uuid  # a container keeps its UUID
        on_target = Lab.exec("lab2", ["virsh", "-c", lxc_uri, "dumpxml", name], capture=True)
        assert on_target.returncode == 0, on_target.stderr
        private = f"/var/lib/libvirt/images/private/{uuid}"
        assert f"<source dir='{private}'/>" in on_target.stdout
        assert Lab.exec("lab2", ["test", "-x", f"{private}/sbin/vemigrate-init"]).returncode == 0, "the files came"
        assert Lab.exec("lab1", ["virsh", "-c", lxc_uri, "dominfo", name], capture=True).returncode != 0
        assert Lab.exec("lab1", ["test", "-d", f"{ct.private}.migrated"]).returncode == 0, "private area renamed"
        assert Lab.exec("lab1", ["test", "-f", f"/etc/libvirt/lxc/{name}.xml.migrated"]).returncode == 0
    finally:
        for host in ("lab1", "lab2"):
            Lab.exec(host, ["virsh", "-c", lxc_uri, "undefine", name], capture=True)
        Lab.exec("lab2", ["sh", "-c", "rm -rf /var/lib/libvirt/images/private/*-*-*-*-*"])
        Lab.exec(
            "lab1", ["rm", "-rf", "--", ct.private, f"{ct.private}.migrated", f"/etc/libvirt/lxc/{name}.xml.migrated"]
        )


def test_a_running_containers_ipsec_and_nfs_are_read_inside_it(vz: LabInfo, migrations: Migrations, lxc: None) -> None:
    """Live-only container rules read where the seed puts them: inside the container (`prlctl exec
    --without-shell /bin/sh`, the stand-in entering the LXC namespaces) and from its `Features`."""
    name = "vzct2"
    ct = Lab.create_ct("lab1", name, running=True)
    lxc_uri = "lxc:///system"

    def checks(migration: str) -> dict[str, tuple[str, str]]:
        migrations.create(migration, _spec(name, mode="Live", dryRun=True))
        status = migrations.wait_phase(migration, "Succeeded", "Failed", timeout=120)["status"]
        return {c["name"]: (c["result"], c["message"]) for c in status["checks"]}

    try:
        quiet = checks("ct2-quiet")
        assert quiet["NoIPSec"] == ("Passed", f"container {name!r} has no IPSec connections"), quiet
        assert quiet["NFSClient"] == ("Passed", f"container {name!r} has no NFS mounts"), quiet
        assert quiet["NoNFSServer"] == ("Passed", f"container {name!r} has the NFS server feature off"), quiet
        # An IKE daemon starts inside, and the NFS server feature is switched on.
        daemon = "printf '#!/bin/sh\\nwhile :; do sleep 1; done\\n' >/bin/charon && chmod +x /bin/charon"
        start = f"{daemon} && (/bin/charon </dev/null >/dev/null 2>&1 &)"
        started = Lab.exec("lab1", ["prlctl", "exec", name, "--without-shell", "/bin/sh", "-c", start], capture=True)
        assert started.returncode == 0, started.stderr
        switched = Lab.exec("lab1", ["prlctl", "set", name, "--features", "nfsd:on"], capture=True)
        assert switched.returncode == 0, switched.stderr
        busy = checks("ct2-busy")
        assert busy["NoIPSec"][0] == "Failed" and "has IPSec connections" in busy["NoIPSec"][1], busy
        assert busy["NoNFSServer"][0] == "Failed" and "prlctl set --features nfsd:off" in busy["NoNFSServer"][1], busy
    finally:
        Lab.exec("lab1", ["virsh", "-c", lxc_uri, "destroy", name], capture=True)
        Lab.exec("lab1", ["virsh", "-c", lxc_uri, "undefine", name], capture=True)
        Lab.exec("lab1", ["rm", "-rf", "--", ct.private, f"/etc/libvirt/lxc/{name}.features.json"])
