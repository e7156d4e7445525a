"""Isolation (issue #14): a hung libvirtd on one host stalls neither the migrations between other hosts
nor the operator's status writes, and does not make the operator look dead to its liveness probe.

lab3's libvirtd is frozen (SIGSTOP) while the operator holds an open connection to it and migrations out
of lab3 keep calling it; a migration lab1 -> lab2 must then take about as long as the same migration
took just before, with lab3 answering."""

from __future__ import annotations

import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from kubernetes import client

from tests.fixtures.operator import Migrations, OperatorProcess, session_operator
from tests.lab.evidence import domain
from vemigrate.api.common import GROUP, VERSION
from vemigrate.api.host import PLURAL as HOSTS
from vemigrate.drivers.hostjob import JOBS_DIR
from vemigrate_dev.controlplane import ControlPlaneInfo
from vemigrate_dev.lab import Lab, LabInfo, VMState
from vemigrate_dev.lab.state import LabState

# What a pass says of a host whose libvirtd does not answer: a call past its deadline, the connection
# closed by keepalive, a connection attempt still waiting, every thread of the host held.
HUNG = ("did not finish in", "did not answer", "connection to libvirtd closed", "does not answer")


def _signal_libvirtd(host: str, sig: signal.Signals) -> None:
    state = LabState.load()
    assert state is not None, "the lab is down"
    proc = state.host(host).daemons.get("libvirtd")
    assert proc is not None and proc.alive(), f"libvirtd is not running on {host}"
    os.kill(proc.pid, sig)


def _reachable(custom: Any, namespace: str, host: str) -> dict[str, Any]:
    body = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, HOSTS, host)
    conditions = (body.get("status") or {}).get("conditions") or []
    return next((dict(c) for c in conditions if c.get("type") == "Reachable"), {})


def _wait_reachable(
    custom: Any, namespace: str, host: str, value: str, timeout: float, operator: OperatorProcess
) -> None:
    """Until the HypervisorHost's Reachable condition is `value`."""
    deadline = time.monotonic() + timeout
    while (said := _reachable(custom, namespace, host)).get("status") != value:
        assert not operator.died(), f"the operator died:\n{operator.tail()}"
        assert time.monotonic() < deadline, (
            f"{host} Reachable={value}: not in {timeout:g} s ({said})\n{operator.tail()}"
        )
        time.sleep(0.3)


def _says_hung(body: dict[str, Any]) -> bool:
    conditions = (body.get("status") or {}).get("conditions") or []
    return any("'lab3' not reachable" in str(c.get("message")) and any(h in str(c.get("message")) for h in HUNG)
               for c in conditions)  # fmt: skip


def _md5(host: str, path: str) -> str:
    out = Lab.exec(host, ["md5sum", path], capture=True)
    assert out.returncode == 0, out.stderr
    return str(out.stdout.split()[0])


def _disk(lab: LabInfo, host: str, name: str) -> str:
    xml = domain(lab, host, name).XMLDesc(0)
    start = xml.index("<source file='") + len("<source file='")
    return str(xml[start : xml.index("'", start)])


def _healthz(operator: OperatorProcess) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{operator.health_port}/healthz", timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_a_frozen_libvirtd_on_a_third_host_does_not_stall_a_migration_between_two_others(
    hosts: LabInfo,
    kube_admin: Any,
    namespace: str,
    control_plane: ControlPlaneInfo,
    vm_cleanup: Callable[[str], str],
    tmp_path: Any,
) -> None:
    custom = client.CustomObjectsApi(kube_admin)
    before, during = vm_cleanup("iso-n1"), vm_cleanup("iso-n2")
    far = [vm_cleanup("iso-f1"), vm_cleanup("iso-f2")]  # as many as lab3 lets out at once (maxOutbound 2)
    for name in (before, during):
        Lab.create_vm("lab1", name, state=VMState.STOPPED)
    uuids = {name: Lab.create_vm("lab3", name, state=VMState.STOPPED).uuid for name in far}
    disks = {name: _disk(hosts, "lab3", name) for name in far}
    sums = {name: _md5("lab3", disks[name]) for name in far}

    session = session_operator()
    if session is not None:  # it reconciles every namespace, this one too
        session.stop()
    # Hosts probed every 5 s: lab3's probe is one more caller stuck on it. A pass running 60 s while
    # none ends would fail the liveness probe.
    args = ["--namespace", namespace, "--host-probe-seconds", "5", "--stalled-pass-seconds", "60"]
    operator = OperatorProcess(control_plane.kubeconfig, tmp_path / "operator.log", args)
    operator.start()
    migrations = Migrations(custom, namespace, operator)
    spec = {"source": {"host": "lab1", "name": before}, "target": {"host": "lab2"}}
    try:
        for host in ("lab1", "lab2", "lab3"):  # lab3 with its libvirt connection open
            _wait_reachable(custom, namespace, host, "True", 60, operator)
        started = time.monotonic()
        migrations.create(before, spec)
        status = migrations.wait_phase(before, "Succeeded", "Failed", timeout=300)["status"]
        normal = time.monotonic() - started
        assert status["phase"] == "Succeeded", status

        _signal_libvirtd("lab3", signal.SIGSTOP)
        try:
            frozen_at = time.monotonic()
            for name in far:
                migrations.create(name, {"source": {"host": "lab3", "name": name}, "target": {"host": "lab1"}})
            # The hang happened: lab3's migrations say lab3 does not answer, and so does its probe.
            for name in far:
                migrations.wait(name, _says_hung, timeout=120)
            _wait_reachable(custom, namespace, "lab3", "False", 120, operator)
            hung_after = time.monotonic() - frozen_at

            bound = 2 * normal + 30
            started = time.monotonic()
            migrations.create(during, {**spec, "source": {"host": "lab1", "name": during}})
            status = migrations.wait_phase(during, "Succeeded", "Failed", timeout=bound)["status"]
            took = time.monotonic() - started
            assert status["phase"] == "Succeeded", status
            print(f"lab1 -> lab2: {normal:.1f} s with lab3 answering, {took:.1f} s with lab3 frozen "
                  f"(bound {bound:.0f} s); lab3 seen hung {hung_after:.1f} s after SIGSTOP")  # fmt: skip

            assert _healthz(operator) == 200, "one hung host does not make the operator look dead"
            for name in far:  # waiting on lab3, not failed by the hang
                body = migrations.get(name)
                assert body["status"]["phase"] == "Validating", body["status"]
                assert _says_hung(body), body["status"]
            said = _reachable(custom, namespace, "lab3")
            assert said["reason"] in ("LibvirtTimeout", "LibvirtUnreachable", "HostNotResponding"), said
            # Called off while lab3 is still frozen: decided without it, nothing was started there.
            for name in far:
                migrations.patch_spec(name, {"action": "Cancel"})
            for name in far:
                ended = migrations.wait_phase(name, "Cancelled", "Failed", "Succeeded", timeout=120)["status"]
                assert ended["phase"] == "Cancelled", ended
        finally:
            _signal_libvirtd("lab3", signal.SIGCONT)

        # lab3 answers again, and the operator sees it (its stuck calls returned or were given up).
        _wait_reachable(custom, namespace, "lab3", "True", 90, operator)
    finally:
        operator.stop()
        if session is not None:
            session.start()

    for name in far:  # nothing on lab3 was touched, nothing reached lab1
        dom = domain(hosts, "lab3", name)
        assert dom is not None and dom.UUIDString() == uuids[name], f"{name} still defined on lab3"
        assert _md5("lab3", disks[name]) == sums[name], f"{name}'s disk unchanged"
        assert domain(hosts, "lab1", name) is None
        uid = migrations.get(name)["metadata"]["uid"]
        assert Lab.exec("lab3", ["test", "-e", f"{JOBS_DIR}/{uid}"]).returncode != 0, "no job was started on lab3"
    assert domain(hosts, "lab2", during) is not None and domain(hosts, "lab1", during) is None
