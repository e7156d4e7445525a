"""`vemigrate controlplane up | down | status | kubeconfig`: a real kube-apiserver and etcd on
127.0.0.1, for tests and the demo; with `up --node`, also a node that runs Pods (controller-manager,
scheduler, containerd, kubelet; see controlplane_node). Binaries come from controlplane_binaries (built once into the
cache); everything a run writes (keys, etcd data, logs, kubeconfig) lives in `<cache>/controlplane/`.

Each `up` from a stopped state starts an empty cluster: `down` discards etcd's data, so tests never
inherit objects from an earlier run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from vemigrate_dev import controlplane_kubeconfig as kubeconfig
from vemigrate_dev import controlplane_pki as pki
from vemigrate_dev.controlplane_binaries import (
    NODE_COMMANDS,
    REPO_ROOT,
    Binaries,
    Log,
    cache_root,
    ensure_binaries,
    exclusive,
)
from vemigrate_dev.controlplane_node import Node, NodeInfo

DEFAULT_CRDS = REPO_ROOT / "crds"
_READY_TIMEOUT = 90.0
_STOP_TIMEOUT = 15.0
# Children we started in this Python process, kept so they can be reaped (else they linger as zombies
# and look alive to kill(pid, 0)).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _stderr(message: str) -> None:
    print(f"[controlplane] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class ControlPlaneInfo:
    """What a client needs to reach a running control plane."""

    server: str
    kubeconfig: Path
    kubectl: Path
    version: str
    ca_cert: Path
    admin_cert: Path
    admin_key: Path
    state_dir: Path
    apiserver_pid: int
    etcd_pid: int

    def ssl_context(self) -> ssl.SSLContext:
        """TLS as the admin, for raw HTTPS requests (watches with parameters clients lack)."""
        context = ssl.create_default_context(cafile=str(self.ca_cert))
        context.load_cert_chain(str(self.admin_cert), str(self.admin_key))
        return context


@dataclass(frozen=True)
class _State:
    """The state file: what `up` started, so `down` and `status` find it from any process."""

    version: str
    binaries: str
    etcd_pid: int
    etcd_client_port: int
    etcd_peer_port: int
    apiserver_pid: int
    apiserver_port: int
    started: str


_START_ATTEMPTS = 3


class _ExitedAtStart(RuntimeError):
    """etcd or kube-apiserver ended before the control plane was ready."""


def free_ports(count: int) -> list[int]:
    """`count` distinct unused ports. The kernel picks them; all sockets stay open until every port is
    known, or it may hand out the same port twice. The race until the servers bind them is acceptable
    for a dev environment, and avoids clashing with a real etcd on 2379 or another control plane."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            probe = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            probe.bind(("127.0.0.1", 0))
            ports.append(int(probe.getsockname()[1]))
        return ports


def _reap(pid: int) -> None:
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        del _CHILDREN[pid]


def _alive(pid: int, binary: Path) -> bool:
    """True if `pid` runs `binary` (guards against a recycled PID) and is not a zombie."""
    child = _CHILDREN.get(pid)
    if child is not None:
        # Ours: between fork and exec /proc still names the Python binary, so ask the Popen.
        return child.poll() is None
    _reap(pid)
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        return False
    return bool(cmdline) and cmdline[0] == str(binary).encode()


def _stop(pid: int, binary: Path, log: Log, name: str) -> bool:
    if not _alive(pid, binary):
        return False
    log(f"stopping {name} (pid {pid})")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_TIMEOUT
    while time.monotonic() < deadline:
        if not _alive(pid, binary):
            return True
        time.sleep(0.1)
    log(f"{name} (pid {pid}) ignored SIGTERM for {_STOP_TIMEOUT:.0f}s; killing it")
    os.kill(pid, signal.SIGKILL)
    while _alive(pid, binary):
        time.sleep(0.1)
    return True


def _apiserver_argv(binaries: Binaries, keys: pki.Pki, etcd_url: str, port: int) -> list[str]:
    return [
        str(binaries.kube_apiserver),
        f"--etcd-servers={etcd_url}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        # The `kubernetes` Service's endpoint may not be loopback; nothing in-cluster needs it.
        "--endpoint-reconciler-type=none",
        f"--secure-port={port}",
        f"--tls-cert-file={keys.serving_cert}",
        f"--tls-private-key-file={keys.serving_key}",
        f"--client-ca-file={keys.ca_cert}",
        # To the node's kubelet (logs, exec), which trusts the same CA.
        f"--kubelet-client-certificate={keys.admin_cert}",
        f"--kubelet-client-key={keys.admin_key}",
        # The node's name resolves nowhere; its InternalIP does.
        "--kubelet-preferred-address-types=InternalIP,Hostname",
        "--authorization-mode=RBAC",
        "--anonymous-auth=false",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={keys.service_account_public_key}",
        f"--service-account-signing-key-file={keys.service_account_key}",
        "--service-cluster-ip-range=10.0.0.0/24",
        "--allow-privileged=true",
        "--profiling=false",
    ]


class ControlPlane:
    """One local control plane, identified by its state directory."""

    def __init__(
        self,
        state_dir: Path | None = None,
        *,
        cache: Path | None = None,
        crds: Path | None = DEFAULT_CRDS,
        log: Log = _stderr,
    ) -> None:
        self.cache = cache or cache_root()
        # VEMIGRATE_CONTROLPLANE_DIR points the CLI at another control plane (a test session's own).
        override = os.environ.get("VEMIGRATE_CONTROLPLANE_DIR")
        self.state_dir = state_dir or (Path(override) if override else self.cache / "controlplane")
        self.crds = crds
        self.log = log

    # Paths inside the state directory.
    @property
    def kubeconfig_path(self) -> Path:
        return self.state_dir / "admin.kubeconfig"

    @property
    def _state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def _pki(self) -> pki.Pki:
        return pki.Pki(self.state_dir / "pki")

    @property
    def _etcd_data(self) -> Path:
        return self.state_dir / "etcd-data"

    @property
    def _logs(self) -> Path:
        return self.state_dir / "logs"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise up/down across processes (a test session and a shell may race)."""
        with exclusive(self.state_dir / ".lock"):
            yield

    def _read_state(self) -> _State | None:
        try:
            return _State(**json.loads(self._state_file.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def _info(self, state: _State) -> ControlPlaneInfo:
        directory = Path(state.binaries)
        return ControlPlaneInfo(
            server=f"https://127.0.0.1:{state.apiserver_port}",
            kubeconfig=self.kubeconfig_path,
            kubectl=directory / "kubectl",
            version=state.version,
            ca_cert=self._pki.ca_cert,
            admin_cert=self._pki.admin_cert,
            admin_key=self._pki.admin_key,
            state_dir=self.state_dir,
            apiserver_pid=state.apiserver_pid,
            etcd_pid=state.etcd_pid,
        )

    def status(self) -> ControlPlaneInfo | None:
        """The running control plane, or None if it is stopped or only half there."""
        state = self._read_state()
        if state is None:
            return None
        directory = Path(state.binaries)
        if not (
            _alive(state.etcd_pid, directory / "etcd") and _alive(state.apiserver_pid, directory / "kube-apiserver")
        ):
            return None
        info = self._info(state)
        return info if self.kubeconfig_path.exists() else None

    @property
    def node(self) -> Node:
        return Node(self.state_dir, self.log)

    def ensure_node(self, info: ControlPlaneInfo) -> NodeInfo:
        """Start the node of a running control plane unless it runs already."""
        with self._locked():
            running = self.node.status()
            if running is not None:
                return running
            self.node.stop()  # what a killed or failed start left
            binaries = ensure_binaries(self.log, self.cache, commands=NODE_COMMANDS)
            try:
                return self.node.start(binaries, info.server, self._pki, info.kubeconfig, info.kubectl)
            except BaseException:
                self.node.stop()
                raise

    def ensure_up(self, *, node: bool = False) -> ControlPlaneInfo:
        """Start the control plane unless it runs already, then apply the CRDs; return how to reach it.
        With `node`, also start its node (see ensure_node)."""
        info = self._ensure_plane()
        if node:
            self.ensure_node(info)
        return info

    def _ensure_plane(self) -> ControlPlaneInfo:
        with self._locked():
            info = self.status()
            if info is not None:
                self.log(f"already running at {info.server} (kube-apiserver pid {info.apiserver_pid})")
            else:
                self._clean(reason="stale state from an earlier run")
                binaries = ensure_binaries(self.log, self.cache)
                # Free ports are picked before the servers bind them, so another process may take one
                # in between (more likely with several test sessions at once); fresh ports settle that.
                info = self._start_with_retries(binaries)
        self.apply_crds(info)
        return info

    def _start_with_retries(self, binaries: Binaries) -> ControlPlaneInfo:
        for attempt in range(1, _START_ATTEMPTS):
            try:
                return self._start(binaries)
            except _ExitedAtStart as exc:
                self.log(f"{exc}; starting again on fresh ports ({attempt + 1} of {_START_ATTEMPTS})")
        return self._start(binaries)

    def down(self) -> bool:
        """Stop what `up` started and discard its state. True if anything was running."""
        with self._locked():
            return self._clean(reason=None)

    def restart_apiserver(self) -> ControlPlaneInfo:
        """Stop kube-apiserver and start it again on the same port and etcd (what an upgrade or a
        crashed control-plane node does to clients); etcd and its data stay."""
        with self._locked():
            state = self._read_state()
            if state is None:
                raise RuntimeError(f"no control plane in {self.state_dir}")
            binaries = Binaries(state.version, Path(state.binaries))
            _stop(state.apiserver_pid, binaries.kube_apiserver, self.log, "kube-apiserver")
            etcd_url = f"http://127.0.0.1:{state.etcd_client_port}"
            self.log(f"starting kube-apiserver {state.version} again on port {state.apiserver_port}")
            apiserver = self._spawn(
                "kube-apiserver", _apiserver_argv(binaries, self._pki, etcd_url, state.apiserver_port)
            )
            state = replace(state, apiserver_pid=apiserver.pid)
            self._state_file.write_text(json.dumps(asdict(state), indent=2) + "\n")
            self._wait_ready(state, self._pki)
            return self._info(state)

    def _clean(self, reason: str | None) -> bool:
        """Stop any process named in the state file and remove everything a run wrote."""
        # The node first: its kubelet and controllers would log errors against a stopped apiserver.
        stopped = self.node.stop()
        state = self._read_state()
        if state is not None:
            directory = Path(state.binaries)
            # The apiserver first: stopping etcd under it makes it log storage errors until it exits.
            stopped |= _stop(state.apiserver_pid, directory / "kube-apiserver", self.log, "kube-apiserver")
            stopped |= _stop(state.etcd_pid, directory / "etcd", self.log, "etcd")
        leftovers = [
            path
            for path in (self._state_file, self.kubeconfig_path, self._etcd_data, self._pki.directory)
            if path.exists()
        ]
        if reason is not None and (state is not None or leftovers):
            self.log(f"cleaning {reason} in {self.state_dir}")
        for path in leftovers:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        return stopped

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        self._logs.mkdir(parents=True, exist_ok=True)
        with (self._logs / f"{name}.log").open("wb") as out:
            # A session of its own: the control plane outlives `vemigrate controlplane up` and is not
            # hit by the terminal's Ctrl-C; `down` stops it by PID.
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        _CHILDREN[process.pid] = process
        return process

    def _start(self, binaries: Binaries) -> ControlPlaneInfo:
        started = time.monotonic()
        keys = pki.generate(self._pki.directory)
        etcd_client, etcd_peer, apiserver_port = free_ports(3)
        etcd_url, peer_url = f"http://127.0.0.1:{etcd_client}", f"http://127.0.0.1:{etcd_peer}"
        self.log(f"starting etcd on {etcd_url}")
        etcd = self._spawn(
            "etcd",
            [
                str(binaries.etcd),
                "--name=vemigrate",
                f"--data-dir={self._etcd_data}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=vemigrate={peer_url}",
                # A throwaway store: durability costs seconds per test for nothing.
                "--unsafe-no-fsync",
                # The apiserver's watch cache relies on progress notifications (RequestWatchProgress).
                "--watch-progress-notify-interval=5s",
                "--log-level=warn",
            ],
        )
        server = f"https://127.0.0.1:{apiserver_port}"
        self.log(f"starting kube-apiserver {binaries.version} on {server}")
        apiserver = self._spawn("kube-apiserver", _apiserver_argv(binaries, keys, etcd_url, apiserver_port))
        state = _State(
            version=binaries.version,
            binaries=str(binaries.directory),
            etcd_pid=etcd.pid,
            etcd_client_port=etcd_client,
            etcd_peer_port=etcd_peer,
            apiserver_pid=apiserver.pid,
            apiserver_port=apiserver_port,
            started=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        )
        # Written before waiting, so a failed or interrupted start is still cleaned up by PID later.
        self._state_file.write_text(json.dumps(asdict(state), indent=2) + "\n")
        try:
            self._wait_ready(state, keys)
        except BaseException:
            self._clean(reason=None)
            raise
        kubeconfig.write(
            self.kubeconfig_path,
            server,
            keys.ca_cert,
            kubeconfig.client_certificate_user(keys.admin_cert, keys.admin_key),
        )
        self.log(f"ready at {server} in {time.monotonic() - started:.1f}s; kubeconfig {self.kubeconfig_path}")
        return self._info(state)

    def _wait_ready(self, state: _State, keys: pki.Pki) -> None:
        context = ssl.create_default_context(cafile=str(keys.ca_cert))
        context.load_cert_chain(str(keys.admin_cert), str(keys.admin_key))
        directory = Path(state.binaries)
        deadline = time.monotonic() + _READY_TIMEOUT
        last = "no answer yet"
        while time.monotonic() < deadline:
            for pid, name in ((state.etcd_pid, "etcd"), (state.apiserver_pid, "kube-apiserver")):
                if not _alive(pid, directory / name):
                    tail = self._log_tail(name)
                    raise _ExitedAtStart(f"{name} exited during start-up; its log ends:\n{tail}")
            connection = http.client.HTTPSConnection("127.0.0.1", state.apiserver_port, context=context, timeout=5)
            try:
                connection.request("GET", "/readyz")
                response = connection.getresponse()
                body = response.read().decode(errors="replace")
                if response.status == 200:
                    return
                last = f"HTTP {response.status}: {body.strip()[-300:]}"
            except OSError as exc:
                last = str(exc)
            finally:
                connection.close()
            time.sleep(0.25)
        raise RuntimeError(
            f"kube-apiserver was not ready within {_READY_TIMEOUT:.0f}s ({last}); its log ends:\n"
            + self._log_tail("kube-apiserver")
        )

    def _log_tail(self, name: str, lines: int = 15) -> str:
        try:
            return "\n".join((self._logs / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kubectl(self, info: ControlPlaneInfo, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the matching kubectl as the admin."""
        result = subprocess.run(
            [str(info.kubectl), f"--kubeconfig={info.kubeconfig}", *args],
            capture_output=True,
            text=True,
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def apply_crds(self, info: ControlPlaneInfo) -> list[Path]:
        """Apply every crds/*.yaml (server-side, so re-applying is idempotent) and wait until Established."""
        files = sorted(self.crds.glob("*.yaml")) if self.crds is not None and self.crds.is_dir() else []
        if not files:
            self.log(f"no CRDs to apply ({self.crds} has no *.yaml); skipping")
            return []
        self.log(f"applying {len(files)} CRD file(s) from {self.crds}")
        file_args = [arg for path in files for arg in ("-f", str(path))]
        self.kubectl(
            info,
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=vemigrate",
            *file_args,
        )
        self.kubectl(info, "wait", "--for=condition=Established", "--timeout=60s", *file_args)
        return files


# The CLI.


def _up(args: argparse.Namespace) -> int:
    info = ControlPlane(crds=args.crds).ensure_up(node=args.node)
    print(f"control plane {info.version} running at {info.server}")
    if args.node:
        print("node vemigrate-node Ready (its containerd: `vemigrate controlplane status`)")
    print(f'kubectl: {info.kubectl} --kubeconfig "{info.kubeconfig}"')
    return 0


def _down(args: argparse.Namespace) -> int:
    if not ControlPlane().down():
        print("control plane was not running")
    return 0


def _status(args: argparse.Namespace) -> int:
    info = ControlPlane().status()
    if info is None:
        print("control plane: stopped")
        return 3  # like `systemctl status`: not running is not an error of this command
    print(f"control plane: running {info.version} at {info.server}")
    print(f"  kube-apiserver pid {info.apiserver_pid}, etcd pid {info.etcd_pid}")
    print(f"  kubeconfig {info.kubeconfig}")
    print(f"  kubectl    {info.kubectl}")
    print(f"  state      {info.state_dir}")
    node = ControlPlane().node.status()
    if node is None:
        print("  node       none (`vemigrate controlplane up --node` starts one)")
    else:
        print(f"  node       {node.name}, Pod subnet {node.pod_subnet} on bridge {node.bridge}")
        print(f"  containerd {node.containerd_socket} (ctr --address ... -n k8s.io)")
    return 0


def _kubeconfig(args: argparse.Namespace) -> int:
    info = ControlPlane().status()
    if info is None:
        raise RuntimeError("the control plane is not running; start it with `vemigrate controlplane up`.")
    print(info.kubeconfig)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "controlplane",
        help="a local kube-apiserver and etcd for tests and the demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    up = verbs.add_parser("up", help="build once, start, apply crds/ (a no-op if already running)")
    up.add_argument("--crds", type=Path, default=DEFAULT_CRDS, help="directory of CRD manifests to apply")
    up.add_argument(
        "--node",
        action="store_true",
        help="also a node that runs Pods: controller-manager, scheduler, containerd, kubelet (root only)",
    )
    up.set_defaults(func=_up)
    down = verbs.add_parser("down", help="stop everything `up` started and discard its data")
    down.set_defaults(func=_down)
    verbs.add_parser("status", help="is it running, where, which PIDs (exit 3 if stopped)").set_defaults(func=_status)
    verbs.add_parser("kubeconfig", help="print the admin kubeconfig's path").set_defaults(func=_kubeconfig)
