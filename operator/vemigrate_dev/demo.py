"""`vemigrate demo` (what `make demo` runs): the whole product on this machine, end to end.

A real kube-apiserver and etcd, two lab hypervisor hosts, the operator as its own process, and one
live migration of a running guest from lab1 to lab2, shown phase by phase until it ends. Everything
stays up afterwards so it can be inspected with kubectl; the closing lines say how to tear it down.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from kubernetes.client import ApiException

from vemigrate.api.common import GROUP, VERSION
from vemigrate.api.migration import PLURAL
from vemigrate_dev.controlplane import ControlPlane, ControlPlaneInfo
from vemigrate_dev.lab import Lab, LabInfo, VMState, why_not_runnable
from vemigrate_dev.lab import kube as lab_kube

NAMESPACE = "demo"
VM = "web1"
MIGRATION = "web1-to-lab2"


def _say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def _api(plane: ControlPlaneInfo) -> Any:
    from kubernetes import client, config

    return client.CustomObjectsApi(config.new_client_from_config(config_file=str(plane.kubeconfig)))  # type: ignore[no-untyped-call]


def _ensure_namespace(plane: ControlPlaneInfo) -> None:
    subprocess.run(
        [str(plane.kubectl), "--kubeconfig", str(plane.kubeconfig), "create", "namespace", NAMESPACE],
        capture_output=True,
        check=False,
    )


def _start_operator(plane: ControlPlaneInfo, log: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "vemigrate", "run", "--kubeconfig", str(plane.kubeconfig), "--namespace", NAMESPACE]
    argv += [
        "--metrics-address",
        "127.0.0.1",
        "--metrics-port",
        "19090",
        "--liveness",
        "http://127.0.0.1:18080/healthz",
    ]
    proc = subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the operator exited at start; see {log}")
        try:
            with urllib.request.urlopen("http://127.0.0.1:18080/healthz", timeout=2):
                return proc
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"the operator did not become healthy in 60 s; see {log}")


def _fresh_vm(lab: LabInfo) -> None:
    """A new guest on lab1, whatever an earlier run left on either host."""
    forget = 'virsh destroy "$1" 2>/dev/null; virsh undefine "$1" --remove-all-storage 2>/dev/null; true'
    for host in lab.hosts:
        Lab.exec(host.name, ["sh", "-c", forget, "sh", VM], capture=True)
    vm = Lab.create_vm("lab1", VM, state=VMState.RUNNING)
    _say(f"VM {VM} ({vm.uuid}) runs on lab1, booted in {vm.boot_seconds or 0:.1f} s; serial log {vm.serial_log}")


def _delete_previous(api: Any) -> None:
    """Remove the migration object an earlier demo left (the operator releases its finalizer)."""
    with contextlib.suppress(ApiException):  # 404: nothing left from an earlier run
        api.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, MIGRATION)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            api.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, MIGRATION)
        except ApiException:
            return
        time.sleep(0.5)
    raise RuntimeError(f"the previous {MIGRATION} was not deleted within 60 s")


def _watch(api: Any, timeout: float) -> dict[str, Any]:
    shown = ""
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = api.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, MIGRATION)
        status = body.get("status") or {}
        phase = status.get("phase", "Pending")
        progress = (status.get("progress") or {}).get("percent")
        line = f"phase {phase:<12}" + (f" progress {progress:>3}%" if progress is not None else "")
        if status.get("queuedReason"):
            line += f"  ({status['queuedReason']})"
        if line != shown:
            _say(line)
            shown = line
        if phase in ("Succeeded", "Failed", "Cancelled"):
            return body
        time.sleep(0.5)
    raise RuntimeError(f"the migration did not finish in {timeout:.0f} s; last status: {body.get('status')}")


def run(args: argparse.Namespace) -> int:
    why = why_not_runnable()
    if why is not None:
        raise RuntimeError(f"the lab cannot run here: {why}")
    started = time.monotonic()
    plane = ControlPlane(log=_say).ensure_up()
    _ensure_namespace(plane)
    _say("starting two lab hypervisor hosts")
    lab = Lab.up(hosts=2)
    lab_kube.apply(lab, NAMESPACE, str(plane.kubeconfig))
    _fresh_vm(lab)
    log = plane.state_dir.parent / "demo-operator.log"
    operator = _start_operator(plane, log)
    _say(f"operator running (pid {operator.pid}, log {log}, metrics http://127.0.0.1:19090/metrics)")
    api = _api(plane)
    _delete_previous(api)
    spec = {"source": {"host": "lab1", "name": VM}, "target": {"host": "lab2"}, "mode": "Live", "tunnel": args.tunnel}
    api.create_namespaced_custom_object(
        GROUP,
        VERSION,
        NAMESPACE,
        PLURAL,
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "VirtualEnvironmentMigration",
            "metadata": {"name": MIGRATION},
            "spec": spec,
        },
    )
    _say(f"applied VirtualEnvironmentMigration {MIGRATION}: live, lab1 -> lab2")
    try:
        body = _watch(api, args.timeout)
    finally:
        operator.terminate()
        operator.wait(30)
    status = body["status"]
    kubectl = f"{plane.kubectl} --kubeconfig {plane.kubeconfig} -n {NAMESPACE}"
    if status["phase"] != "Succeeded":
        failure = status.get("failure") or {}
        _say(f"migration {status['phase']}: {failure.get('reason')}: {failure.get('message')}")
        _say(f"inspect: {kubectl} describe vem {MIGRATION}")
        return 1
    beats = Lab.heartbeats("lab2", VM).beats
    times = {t["phase"]: t["time"] for t in status["phaseTransitions"]}
    # Every phase entered, also those that passed between two looks (a switchover lasts milliseconds).
    _say("phases: " + " -> ".join(f"{t['phase']} {t['time']}" for t in status["phaseTransitions"]))
    _say(
        f"done: {VM} now runs on lab2 (UUID {status['result']['targetUUID']}), gone from lab1; "
        f"downtime {status.get('downtimeMs')} ms; migration {times.get('Validating')} -> {times.get('Succeeded')}"
    )
    if beats:
        _say(f"the guest's heartbeat on lab2: boot {beats[-1][0]}, beat {beats[-1][1]}")
    _say(f"whole demo: {time.monotonic() - started:.0f} s")
    _say(f"look around: {kubectl} get vem,hvh; {kubectl} describe vem {MIGRATION}")
    _say("tear down: vemigrate lab down && vemigrate controlplane down")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("demo", help="control plane + lab + operator + one live migration, end to end")
    parser.add_argument(
        "--tunnel",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="spec.tunnel of the demo migration (default: on, encrypted)",
    )
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for the migration")
    parser.set_defaults(func=run)
