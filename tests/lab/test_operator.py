"""The operator end to end: real apiserver, real lab hosts, `vemigrate run` in its own process.

Evidence is taken from outside the operator: the guest's heartbeat on the hosts' serial logs, libvirt
on both hosts, and the object's status, Events and metrics.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import libvirt
import pytest
from kubernetes import client

from tests.faults.watch import job_state
from tests.fixtures.lab import restored
from tests.fixtures.operator import Migrations, OperatorProcess, events_for, session_operator
from tests.lab.evidence import beating_on, domain, first_beat, handshakes
from vemigrate.drivers.hostjob import JOBS_DIR
from vemigrate_dev.controlplane import ControlPlaneInfo
from vemigrate_dev.lab import Lab, LabInfo, VMState


def _state(lab: LabInfo, host: str, name: str) -> int | None:
    dom = domain(lab, host, name)
    return None if dom is None else int(dom.state()[0])


@pytest.mark.parametrize(
    ("tunnel", "compression"),
    [(True, True), (False, False)],
    ids=["tunnelled-tls-compressed", "direct-uncompressed"],
)
def test_live_migration_moves_a_running_guest(
    tunnel: bool,
    compression: bool,
    hosts: LabInfo,
    migrations: Migrations,
    operator: OperatorProcess,
    kube_admin: Any,
    namespace: str,
    control_plane: ControlPlaneInfo,
    vm_cleanup: Callable[[str], str],
) -> None:
    name = vm_cleanup(f"live-{int(tunnel)}{int(compression)}")
    vm = Lab.create_vm("lab1", name, state=VMState.RUNNING)
    boot, counter = first_beat("lab1", name)
    succeeded = operator.metric("vemigrate_migrations_total", result="Succeeded")
    logged_before = operator.log.stat().st_size

    spec = {"source": {"host": "lab1", "name": name}, "target": {"host": "lab2"}}
    logins = handshakes(hosts, "lab1", "lab2")
    migrations.create(name, {**spec, "tunnel": tunnel, "compression": compression})
    body = migrations.wait_phase(name, "Succeeded", "Failed", timeout=300)
    status = body["status"]
    assert status["phase"] == "Succeeded", status
    # From the source to the target: one connection, made by Validating's reach check, for all of it: the
    # storage probe, the job's commands, libvirtd's own (peer-ssh), the probe before the source's disposal.
    assert handshakes(hosts, "lab1", "lab2") - logins == 1

    # The same guest keeps running on the target: same boot id (no reboot), its counter still growing.
    assert beating_on("lab2", name, boot) > counter
    assert _state(hosts, "lab2", name) == libvirt.VIR_DOMAIN_RUNNING
    assert domain(hosts, "lab1", name) is None, "the source VM is removed after the target verified"
    assert vm.uuid == status["result"]["targetUUID"]

    assert status["mode"] == "Live" and status["driver"] == "libvirt"
    assert [t["phase"] for t in status["phaseTransitions"]][:2] == ["Validating", "Transferring"]
    assert status["phaseTransitions"][-1]["phase"] == "Succeeded"
    assert status["progress"]["percent"] == 100
    assert status["downtimeMs"] >= 0
    assert status["result"]["sourceDisposition"] == "Removed"
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Succeeded"]["status"] == "True" and conditions["Succeeded"]["reason"] == "Migrated"
    assert conditions["PreflightPassed"]["status"] == "True"
    reasons = {e.reason for e in events_for(kube_admin, namespace, name)}
    assert {"Validating", "Transferring", "Finalizing", "Succeeded"} <= reasons
    assert operator.metric_reaches("vemigrate_migrations_total", succeeded + 1, result="Succeeded") == succeeded + 1

    # The pause lasted milliseconds, between two passes: the switchover is recorded from the job's
    # record, between the transitions around it.
    transitions = status["phaseTransitions"]
    phases = [t["phase"] for t in transitions]
    assert phases[-4:] == ["Transferring", "Switchover", "Finalizing", "Succeeded"], transitions
    times = [datetime.fromisoformat(t["time"]) for t in transitions]
    assert times == sorted(times), transitions
    switched = [e.message for e in events_for(kube_admin, namespace, name) if e.reason == "Switchover"]
    assert switched
    # Done means all of it: the bytes agree with the percent.
    assert status["progress"]["bytesProcessed"] == status["progress"]["bytesTotal"] > 0, status["progress"]
    # `kubectl get vem -o wide` says why it ended.
    assert _wide_row(control_plane, namespace, name).get("REASON") == "Migrated"
    # The daemon of a finished migration ends on its own: nothing in the log reads as a problem.
    ended = f"migration {name} ended Succeeded; its daemon stops"
    log = _log_once(operator, logged_before, lambda text: ended in text or _CANCELLED in text)
    assert _CANCELLED not in log, log[-4000:]


_CANCELLED = "Daemon 'run_migration' is cancelled"


def test_the_job_end_wakes_the_pass_that_finishes_the_migration(
    hosts: LabInfo,
    kube_admin: Any,
    namespace: str,
    control_plane: ControlPlaneInfo,
    vm_cleanup: Callable[[str], str],
    tmp_path: Any,
) -> None:
    """An operator that samples a running job's progress only once an hour: nothing but the job's own end
    (the long poll on its exit record, on the source host) can wake the migration while its job runs.
    The pass it wakes sees the job ended, verifies the copy, writes Finalizing, removes the source and
    writes Succeeded: Transferring to Succeeded in that one pass."""
    name = vm_cleanup("woken")
    Lab.create_vm("lab1", name, state=VMState.RUNNING)
    session = session_operator()
    if session is not None:  # it reconciles every namespace, this one too
        session.stop()
    args = ["--namespace", namespace, "--progress-seconds", "3600"]
    operator = OperatorProcess(control_plane.kubeconfig, tmp_path / "operator.log", args)
    operator.start()
    try:
        migrations = Migrations(client.CustomObjectsApi(kube_admin), namespace, operator)
        migrations.create(name, {"source": {"host": "lab1", "name": name}, "target": {"host": "lab2"}})
        status = migrations.wait_phase(name, "Succeeded", "Failed", timeout=600)["status"]
        woken = operator.metric_reaches("vemigrate_migration_wakeups_total", 1, cause="job-ended")
    finally:
        operator.stop()
        if session is not None:
            session.start()
    assert status["phase"] == "Succeeded", status
    assert domain(hosts, "lab1", name) is None, "the source is removed, after the target copy verified"
    # Every pass that changed the phase, with what woke it (reconcile logs each).
    changes = re.findall(rf"{namespace}/{name}: (\w+) -> (\w+) \(a pass woken by ([\w-]+)\)", operator.log.read_text())
    assert changes[-1] == ("Transferring", "Succeeded", "job-ended"), changes
    assert woken == 1
    phases = [t["phase"] for t in status["phaseTransitions"]]
    assert phases[-3:] == ["Switchover", "Finalizing", "Succeeded"], phases


def test_sigterm_mid_transfer_exits_at_once_and_the_next_operator_finishes_the_same_job(
    hosts: LabInfo,
    kube_admin: Any,
    namespace: str,
    control_plane: ControlPlaneInfo,
    vm_cleanup: Callable[[str], str],
    tmp_path: Any,
) -> None:
    """What a Pod's deletion or a rolling update sends: SIGTERM while a live migration's job runs and its
    libvirt connections (through SSH forwards the operator's event loop serves) are open. The operator
    closes them and exits 0 on its own, not by the SIGKILL 30 s later that OperatorProcess.stop sends
    (left to the garbage collector after the loop ended, a connection's close waited on that loop for
    ever). The job runs on; the next operator re-attaches to it and ends the migration with one job."""
    name = vm_cleanup("sigterm")
    Lab.create_vm("lab1", name, state=VMState.RUNNING, dirty_mib=1)
    session = session_operator()
    if session is not None:  # it reconciles every namespace, this one too
        session.stop()
    args = ["--namespace", namespace]
    first = OperatorProcess(control_plane.kubeconfig, tmp_path / "first.log", args)
    second = OperatorProcess(control_plane.kubeconfig, tmp_path / "second.log", args)
    first.start()
    try:
        migrations = Migrations(client.CustomObjectsApi(kube_admin), namespace, first)
        spec = {"source": {"host": "lab1", "name": name}, "target": {"host": "lab2"}, "tunnel": False}
        uid = migrations.create(name, {**spec, "bandwidthMiBps": 4})["metadata"]["uid"]  # about a minute
        migrations.copying(name)
        first.stop()
        assert first.proc is not None and first.proc.returncode == 0, first.tail()
        assert "Activity 'close_connections' succeeded" in first.log.read_text(), first.tail()
        assert (migrations.get(name)["status"]["phase"], job_state(uid)) == ("Transferring", "running")
        second.start()
        migrations = Migrations(client.CustomObjectsApi(kube_admin), namespace, second)
        status = migrations.wait_phase(name, "Succeeded", "Failed", timeout=600)["status"]
    finally:
        first.stop()
        second.stop()
        if session is not None:
            session.start()
    assert status["phase"] == "Succeeded" and status["attempts"] == 1, status
    phases = [t["phase"] for t in status["phaseTransitions"]]
    assert phases.count("Transferring") == 1, f"the second operator re-attached to the job: {phases}"
    assert domain(hosts, "lab1", name) is None and domain(hosts, "lab2", name) is not None


def _progressing(body: dict[str, Any]) -> str:
    conditions = (body.get("status") or {}).get("conditions") or []
    return next((str(c.get("reason")) for c in conditions if c.get("type") == "Progressing"), "")


def test_a_job_that_ended_while_its_source_cannot_be_read_wakes_one_pass_not_a_storm(
    hosts: LabInfo, migrations: Migrations, operator: OperatorProcess, vm_cleanup: Callable[[str], str]
) -> None:
    """The job's end wakes a pass once. A pass that then cannot read the job (its source read fails: a
    timeout under load, here the record's log made unreadable) waits for the poll, as ever; it must not
    be woken again at once by the end it was already woken by (the long poll on an ended job returns at
    once): that loop of passes, each failing, is what kept the disk-full fault scenario in Transferring.
    Once the record reads again, the migration ends as it would have."""
    name = vm_cleanup("blind1")
    Lab.create_vm("lab1", name, state=VMState.STOPPED)
    with restored(lambda: Lab.netem("lab2")):
        Lab.netem("lab2", rate="2mbit")  # a few MiB take some 20 s: time to break the read mid-copy
        uid = migrations.create(name, {"source": {"host": "lab1", "name": name}, "target": {"host": "lab2"}})[
            "metadata"
        ]["uid"]
        migrations.copying(name)
        record = f"{JOBS_DIR}/{uid}/1"
        broken = Lab.exec("lab1", ["sh", "-c", 'cd "$1" && mv log log.kept && mkdir log', "sh", record])
        assert broken.returncode == 0, "the job's log moved aside: every read of the job fails now"
        with restored(lambda: Lab.exec("lab1", ["sh", "-c", 'cd "$1" && rmdir log && mv log.kept log', "sh", record])):
            migrations.wait(name, lambda b: _progressing(b) == "StateUnknown", timeout=120)
            deadline = time.monotonic() + 180
            while Lab.exec("lab1", ["test", "-e", f"{record}/exit"]).returncode != 0:
                assert time.monotonic() < deadline, "the job did not end in 180 s"
                time.sleep(0.5)
            woken = operator.metric("vemigrate_migration_wakeups_total", cause="job-ended")
            timer = operator.metric("vemigrate_migration_wakeups_total", cause="timer")
            # Some passes' time (each fails at once: the read's shell exits 1): the poll's, not a loop's.
            time.sleep(15)
            body = migrations.get(name)
            again = operator.metric("vemigrate_migration_wakeups_total", cause="job-ended") - woken
            polled = operator.metric("vemigrate_migration_wakeups_total", cause="timer") - timer
    assert body["status"]["phase"] == "Transferring" and _progressing(body) == "StateUnknown", body["status"]
    # At most the one wake-up by the end itself (it may land after the exit file was seen above).
    assert again <= 1, f"{again:g} passes woken by the job's end while it could not be read: a loop"
    assert polled >= 1, "passes go on at the poll while the job cannot be read"
    status = migrations.wait_phase(name, "Succeeded", "Failed", timeout=300)["status"]
    assert status["phase"] == "Succeeded", status
    assert domain(hosts, "lab2", name) is not None and domain(hosts, "lab1", name) is None


def _wide_row(info: ControlPlaneInfo, namespace: str, name: str) -> dict[str, str]:
    argv = [str(info.kubectl), f"--kubeconfig={info.kubeconfig}", "get", "vem", name, "-n", namespace, "-o", "wide"]
    header, row = (
        line.split() for line in subprocess.run(argv, capture_output=True, text=True, check=True).stdout.splitlines()
    )
    return dict(zip(header, row, strict=False))


def _log_once(operator: OperatorProcess, offset: int, ready: Callable[[str], bool], timeout: float = 60) -> str:
    """The operator's log written since `offset`, once `ready` holds for it (or the timeout passed)."""
    deadline = time.monotonic() + timeout
    while True:
        with operator.log.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        if ready(text) or time.monotonic() > deadline:
            return text
        time.sleep(0.5)


def test_preflight_failure_names_the_check(
    hosts: LabInfo, migrations: Migrations, vm_cleanup: Callable[[str], str]
) -> None:
    Lab.create_vm("lab1", vm_cleanup("snap1"), state=VMState.STOPPED)
    Lab.snapshot("lab1", "snap1", "before-upgrade")
    migrations.create("snap1", {"source": {"host": "lab1", "name": "snap1"}, "target": {"host": "lab2"}})
    status = migrations.wait_phase("snap1", "Failed", "Succeeded", timeout=120)["status"]
    assert status["phase"] == "Failed"
    assert status["failure"]["reason"] == "PreflightFailed"
    failed = {c["name"]: c["message"] for c in status["checks"] if c["result"] == "Failed"}
    assert "NoSnapshots" in failed and "1 snapshot" in failed["NoSnapshots"]
    assert domain(hosts, "lab1", "snap1") is not None, "a failed pre-flight touches nothing"
    assert domain(hosts, "lab2", "snap1") is None
    _nothing_left_on_the_source(migrations.get("snap1")["metadata"]["uid"])


def _nothing_left_on_the_source(uid: str) -> None:
    """Validating's storage probe made the migration's shared SSH connection to the target (for its job):
    a migration that ends without one leaves neither its directory nor that connection's master behind."""
    assert Lab.exec("lab1", ["test", "-e", f"{JOBS_DIR}/{uid}"]).returncode != 0, "its directory is gone"
    # `ssh -O exit` asks the master to end; it exits moments later. (`[h]`: not this pgrep's own command line.)
    deadline = time.monotonic() + 10
    while Lab.exec("lab1", ["pgrep", "-f", f"ControlPat[h]={JOBS_DIR}/{uid}/ssh"]).returncode == 0:
        assert time.monotonic() < deadline, "the migration's SSH master still runs"
        time.sleep(0.2)


def test_dry_run_moves_nothing(hosts: LabInfo, migrations: Migrations, vm_cleanup: Callable[[str], str]) -> None:
    Lab.create_vm("lab1", vm_cleanup("dry1"), state=VMState.STOPPED)
    migrations.create("dry1", {"source": {"host": "lab1", "name": "dry1"}, "target": {"host": "lab2"}, "dryRun": True})
    status = migrations.wait_phase("dry1", "Succeeded", "Failed", timeout=120)["status"]
    assert status["phase"] == "Succeeded", status
    assert {c["type"]: c["reason"] for c in status["conditions"]}["Succeeded"] == "DryRun"
    assert status["checks"], "the checks ran and are reported"
    assert domain(hosts, "lab1", "dry1") is not None and domain(hosts, "lab2", "dry1") is None
    # Nothing of it is on a host: no finalizer (tests/cluster/test_finalizer.py watches every state).
    assert not migrations.get("dry1")["metadata"].get("finalizers")
    _nothing_left_on_the_source(migrations.get("dry1")["metadata"]["uid"])
