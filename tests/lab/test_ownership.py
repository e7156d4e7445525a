"""Nothing the migration did not make is touched: what is in its way on the target survives byte for
byte, two disks of one base name stay two files, and a retry runs a job of its own. Through the
operator, on real libvirt lab hosts."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import libvirt

from tests.fixtures.operator import Migrations, events_for
from tests.lab.evidence import domain
from vemigrate.drivers.hostjob import JOBS_DIR
from vemigrate_dev.lab import Lab, LabInfo, VMState

Cleanup = Callable[[str], str]
FOREIGN = "someone else's disk, not the migration's\n" * 200


def _run(host: str, script: str, *args: str) -> str:
    out = Lab.exec(host, ["sh", "-c", script, "sh", *args], capture=True)
    assert out.returncode == 0, out.stderr
    return str(out.stdout)


def _md5(host: str, path: str) -> str:
    return _run(host, 'md5sum -- "$1"', path).split()[0]


def test_a_file_in_the_way_on_the_target_survives_a_refused_live_migration(
    hosts: LabInfo, migrations: Migrations, vm_cleanup: Cleanup
) -> None:
    """The target already holds a file at the disk's path (someone else's, or the same file on storage
    both hosts see): the job refuses, and the rollback removes nothing of it."""
    vm = Lab.create_vm("lab1", vm_cleanup("inway1"), state=VMState.RUNNING)
    _run("lab2", 'printf %s "$2" >"$1"', vm.disk, FOREIGN)
    before = _md5("lab2", vm.disk)
    created = migrations.create("inway1", {"source": {"host": "lab1", "name": "inway1"}, "target": {"host": "lab2"}})
    uid = created["metadata"]["uid"]
    status = migrations.wait_phase("inway1", "Succeeded", "Failed", timeout=300)["status"]
    assert status["phase"] == "Failed", status
    assert status["failure"]["reason"] == "TargetPathInUse", status["failure"]
    assert vm.disk in status["failure"]["message"]
    assert "RollingBack" in [t["phase"] for t in status["phaseTransitions"]], "the fault landed in the transfer"
    assert _md5("lab2", vm.disk) == before, "the file in the way came through byte for byte"
    assert _run("lab2", 'ls -a -- "$(dirname "$1")"', vm.disk).count(".vemigrate-") == 0, "no temporary file left"
    assert Lab.exec("lab2", ["test", "-e", f"{JOBS_DIR}/{uid}"]).returncode != 0, "nor the job's record"
    source = domain(hosts, "lab1", "inway1")
    assert source is not None and source.state()[0] == libvirt.VIR_DOMAIN_RUNNING, "the guest runs on"
    assert domain(hosts, "lab2", "inway1") is None


def test_two_disks_of_one_base_name_arrive_as_two_files(
    hosts: LabInfo, migrations: Migrations, vm_cleanup: Cleanup
) -> None:
    vm = Lab.create_vm("lab1", vm_cleanup("twins1"), state=VMState.STOPPED)
    pair = {"vdb": "/var/lib/libvirt/images/twins-a/data.qcow2", "vdc": "/var/lib/libvirt/images/twins-b/data.qcow2"}
    try:
        for pattern, (dev, path) in enumerate(pair.items(), start=0x11):
            Lab.add_disk("lab1", "twins1", path, dev, pattern)
        sums = {"vda": _md5("lab1", vm.disk)} | {dev: _md5("lab1", path) for dev, path in pair.items()}
        assert len(set(sums.values())) == 3
        migrations.create("twins1", {"source": {"host": "lab1", "name": "twins1"}, "target": {"host": "lab2"}})
        status = migrations.wait_phase("twins1", "Succeeded", "Failed", timeout=300)["status"]
        assert status["phase"] == "Succeeded", status
        moved = domain(hosts, "lab2", "twins1")
        assert moved is not None
        directory = f"/var/lib/libvirt/images/{vm.uuid}"
        xml = moved.XMLDesc(0)
        for dev, want in sums.items():
            assert f"{directory}/{dev}.qcow2" in xml
            assert _md5("lab2", f"{directory}/{dev}.qcow2") == want, f"{dev} arrived as its own file"
    finally:
        _run("lab1", "rm -rf /var/lib/libvirt/images/twins-a /var/lib/libvirt/images/twins-b")
        Lab.remove_vm("lab2", "twins1")


def test_a_retry_runs_a_job_of_its_own(
    hosts: LabInfo, migrations: Migrations, vm_cleanup: Cleanup, kube_admin: Any
) -> None:
    """Attempt 1's job is lost mid-copy (its processes killed on the source host); attempt 2 runs a new
    job instead of reading attempt 1's outcome again, and moves the VE."""
    Lab.create_vm("lab1", vm_cleanup("retry1"), state=VMState.STOPPED)
    spec = {
        "source": {"host": "lab1", "name": "retry1"},
        "target": {"host": "lab2"},
        "retry": {"maxAttempts": 2, "backoffSeconds": 1},
    }
    uid = migrations.create("retry1", spec)["metadata"]["uid"]
    first = f"{JOBS_DIR}/{uid}/1"
    # Freeze attempt 1's job the moment it exists, check it had not finished, then kill it.
    deadline = time.monotonic() + 120
    while Lab.exec("lab1", ["test", "-s", f"{first}/pid"]).returncode != 0:
        assert time.monotonic() < deadline, "attempt 1's job never started"
        time.sleep(0.05)
    pid = _run("lab1", 'cut -d" " -f1 "$1/pid"', first).strip()
    assert pid.isdigit(), f"attempt 1's pid file: {pid!r}"
    stop = 'kill -STOP "-$2" && if [ -e "$1/exit" ]; then echo late; else kill -KILL "-$2"; echo early; fi'
    landed = _run("lab1", stop, first, pid)
    assert landed.strip() == "early", "attempt 1's job finished before it could be stopped: the fault did not land"
    status = migrations.wait_phase("retry1", "Succeeded", "Failed", timeout=300)["status"]
    assert status["phase"] == "Succeeded", status
    assert status["attempts"] == 2
    phases = [t["phase"] for t in status["phaseTransitions"]]
    assert phases.count("Transferring") == 2 and "RollingBack" in phases
    reasons = {e.reason: e.message for e in events_for(kube_admin, migrations.namespace, "retry1")}
    assert "JobLost" in reasons.get("RollingBack", ""), reasons
    assert domain(hosts, "lab1", "retry1") is None and domain(hosts, "lab2", "retry1") is not None
    Lab.remove_vm("lab2", "retry1")
