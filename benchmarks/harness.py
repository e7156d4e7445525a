"""The real parts the benchmarks run on: the machine's one lab (taken under its lock, brought up when
down and left as found), a control plane of the benchmark's own, the operator as its own process
(CPU and peak memory read from /proc), and the apiserver's own request counters."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client

from vemigrate.api.common import GROUP, VERSION
from vemigrate.api.migration import PLURAL
from vemigrate_dev.controlplane import ControlPlane, ControlPlaneInfo, free_ports
from vemigrate_dev.controlplane_accounts import api_client
from vemigrate_dev.controlplane_binaries import cache_root
from vemigrate_dev.lab import Lab, LabInfo, why_not_runnable
from vemigrate_dev.lab.state import exclusive

REPO = Path(__file__).resolve().parents[1]
WAIT_FOR_LAB = 3600.0  # other test runs hold the lab for minutes at a time: wait, do not fight
FINAL = ("Succeeded", "Failed", "Cancelled")


def say(text: str) -> None:
    print(f"[bench] {text}", flush=True)


@contextlib.contextmanager
def _hold_lab() -> Iterator[None]:
    """The lab's lock (state.exclusive), waited for like a test session waits, but asked for every
    0.1 s: test sessions hold it for many minutes and ask every second, and a freed lock goes to
    whoever asks first."""
    deadline = time.monotonic() + WAIT_FOR_LAB
    told = False
    while True:
        try:
            held = exclusive("make bench")
            held.__enter__()
            break
        except RuntimeError as exc:
            if time.monotonic() > deadline:
                raise
            if not told:
                say(f"{str(exc).split(';')[0]}; waiting (up to {WAIT_FOR_LAB:.0f} s)")
                told = True
            time.sleep(0.1)
    try:
        yield
    finally:
        held.__exit__(None, None, None)


@contextlib.contextmanager
def lab(hosts: int = 2) -> Iterator[LabInfo]:
    """The machine's lab, held under its lock for the whole benchmark (as a pytest session holds it).
    Brought up when it is down or has fewer hosts; taken down at the end only if it was down."""
    why = why_not_runnable()
    if why is not None:
        raise RuntimeError(f"the lab cannot run here: {why}")
    with _hold_lab():
        found = Lab.info()
        usable = (
            found is not None
            and len(found.hosts) >= hosts
            and all(Path(f"/proc/{h.holder_pid}").exists() for h in found.hosts)
        )
        if usable:
            assert found is not None
            say(f"using the running lab ({len(found.hosts)} hosts, {found.accel})")
            yield found
            return
        say(f"starting {hosts} lab hosts")
        info = Lab.up(hosts=hosts)
        try:
            yield info
        finally:
            say("taking the lab down (it was down when the benchmark started)")
            Lab.down()


@contextlib.contextmanager
def control_plane() -> Iterator[ControlPlaneInfo]:
    """A kube-apiserver and etcd of this benchmark run's own (no test's objects or clients in its
    counters), stopped at the end; those of earlier runs that died are stopped first."""
    runs = cache_root() / "controlplane-bench"
    for directory in runs.iterdir() if runs.is_dir() else []:
        if directory.name.isdigit() and not Path(f"/proc/{directory.name}").exists():
            ControlPlane(directory, log=lambda m: None).down()
            shutil.rmtree(directory, ignore_errors=True)
    plane = ControlPlane(runs / str(os.getpid()), log=lambda m: say(f"control plane: {m}"))
    info = plane.ensure_up()
    try:
        yield info
    finally:
        plane.down()
        shutil.rmtree(plane.state_dir, ignore_errors=True)


def source_tree(revision: str, into: Path) -> Path:
    """The operator's sources at `revision` (git archive, no checkout touched), for before/after runs,
    with that revision's benchmarks beside them: the simulated-host entry point must match the operator
    it drives (vemigrate.drivers.simulated did not exist in older trees)."""
    into.mkdir(parents=True, exist_ok=True)
    paths = ["operator"]
    has = subprocess.run(["git", "cat-file", "-e", f"{revision}:benchmarks/__init__.py"], cwd=REPO, capture_output=True)
    if has.returncode == 0:
        paths.append("benchmarks")
    archive = subprocess.run(["git", "archive", revision, *paths], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "operator"


def new_namespace(api: Any, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name


@dataclass
class Operator:
    """The operator as users run it, in its own process. `module` is `vemigrate` (the product) or the
    benchmark's simulated-host entry point, which runs the same handlers with another driver factory."""

    kubeconfig: Path
    log: Path
    namespace: str
    module: str = "vemigrate"
    extra: Sequence[str] = ()
    env: dict[str, str] = field(default_factory=dict)
    profile: Path | None = None  # py-spy's collapsed stacks of the whole run go here
    tree: Path | None = None  # run the operator from this source tree (another revision), not the installed one
    proc: subprocess.Popen[bytes] | None = None
    spy: subprocess.Popen[bytes] | None = None
    ports: list[int] = field(default_factory=lambda: free_ports(2))

    def start(self) -> None:
        metrics, health = self.ports
        argv = [sys.executable, "-m", self.module, "run", "--kubeconfig", str(self.kubeconfig)]
        argv += ["--namespace", self.namespace, "--metrics-address", "127.0.0.1", "--metrics-port", str(metrics)]
        argv += ["--liveness", f"http://127.0.0.1:{health}/healthz", *self.extra]
        self.proc = subprocess.Popen(
            argv, stdout=self.log.open("ab"), stderr=subprocess.STDOUT, cwd=self._directory(), env=self._environment()
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the operator exited at start; see {self.log}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=2):
                    break
            except OSError:
                time.sleep(0.2)
        else:
            raise RuntimeError(f"the operator did not become healthy in 60 s; see {self.log}")
        if self.profile is not None:
            spy = [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(self.proc.pid), "--rate", "200"]
            spy += ["--nonblocking", "--format", "raw", "--output", str(self.profile)]
            self.spy = subprocess.Popen(
                spy, stdout=subprocess.DEVNULL, stderr=self.log.with_suffix(".py-spy").open("wb")
            )

    def _directory(self) -> Path:
        """`python -m` puts its working directory first on the path: the revision's, for its benchmarks."""
        return self.tree.parent if self.tree is not None else REPO

    def _environment(self) -> dict[str, str]:
        env = {**os.environ, **self.env}
        if self.tree is not None:
            # Ahead of the editable install; the benchmarks package from the same revision when
            # `source_tree` found one, else from the checkout.
            env["PYTHONPATH"] = os.pathsep.join([str(self.tree), str(self.tree.parent), str(REPO)])
        return env

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu_seconds(self) -> float:
        """User + system CPU time of the operator process so far (/proc/<pid>/stat)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_bytes(self) -> int:
        """The process's peak resident memory (VmHWM in /proc/<pid>/status)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.spy is not None and self.spy.poll() is None:
            self.spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            self.spy.wait(60)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@contextlib.contextmanager
def operator(plane: ControlPlaneInfo, namespace: str, log: Path, **kwargs: Any) -> Iterator[Operator]:
    op = Operator(plane.kubeconfig, log, namespace, **kwargs)
    op.start()
    try:
        yield op
    finally:
        op.stop()


class Migrations:
    """Create, read, wait for and delete VirtualEnvironmentMigrations in one namespace."""

    def __init__(self, plane: ControlPlaneInfo, namespace: str) -> None:
        self.api_client = api_client(plane.kubeconfig)
        self.api: Any = client.CustomObjectsApi(self.api_client)
        self.namespace = namespace

    def create(self, name: str, spec: dict[str, Any]) -> str:
        """Create the migration; returns its UID."""
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VirtualEnvironmentMigration", "metadata": {"name": name}}
        made = self.api.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, {**body, "spec": spec})
        return str(made["metadata"]["uid"])

    def get(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        return found

    def all(self) -> list[dict[str, Any]]:
        found = self.api.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)
        return [dict(item) for item in found["items"]]

    def delete(self, name: str) -> None:
        self.api.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def wait_final(
        self,
        name: str,
        timeout: float = 600,
        alive: Callable[[], bool] = lambda: True,
        interval: float = 0.05,
        tick: Callable[[dict[str, Any]], None] = lambda body: None,
    ) -> tuple[dict[str, Any], float]:
        """The object once its phase is final, and the monotonic time this client first saw that;
        `tick` runs at every poll with the object as just read (to watch something else meanwhile)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = self.get(name)
            tick(body)
            if (body.get("status") or {}).get("phase") in FINAL:
                return body, time.monotonic()
            if not alive():
                raise RuntimeError("the operator died")
            time.sleep(interval)
        raise RuntimeError(f"{name} did not finish in {timeout:.0f} s")

    def close(self) -> None:
        self.api_client.close()  # type: ignore[no-untyped-call]


def apiserver_requests(plane: ControlPlaneInfo, context: ssl.SSLContext | None = None) -> dict[tuple[str, str], float]:
    """apiserver_request_total from the apiserver's own /metrics (as the admin), summed by
    (verb, resource[/subresource])."""
    context = context or plane.ssl_context()
    with urllib.request.urlopen(f"{plane.server}/metrics", context=context, timeout=30) as response:  # noqa: S310
        text = response.read().decode()
    totals: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        key, _, value = line.rpartition(" ")
        labels = dict(
            part.split("=", 1) for part in key[key.index("{") + 1 : key.rindex("}")].split(",") if "=" in part
        )
        labels = {k: v.strip('"') for k, v in labels.items()}
        resource = labels.get("resource", "")
        if labels.get("subresource"):
            resource += "/" + labels["subresource"]
        verb = labels.get("verb", "")
        totals[(verb, resource)] = totals.get((verb, resource), 0.0) + float(value)
    return totals


def request_delta(
    before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]
) -> dict[tuple[str, str], float]:
    return {k: after[k] - before.get(k, 0.0) for k in after if after[k] - before.get(k, 0.0) > 0}
