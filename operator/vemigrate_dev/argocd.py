"""`vemigrate argocd up | down | status`: a real Argo CD beside the local control plane, outside the
cluster as Argo CD's own developers run it: its application controller (`--kubeconfig`, namespace
`argocd`) and repo server built from Argo CD's Go module (argocd_binaries), Debian's `redis-server`
as its cache, and `git daemon` serving Git repositories on the loopback, the way a user's Git server
would. Everything listens on 127.0.0.1 but the controller's metrics, which Argo CD binds on every
interface (a free port).

`up` installs into the cluster what Argo CD's manifests would: its CRDs (Application, AppProject,
copied from the release's module), the `argocd` namespace, `argocd-cm` with ve-migrate's health
checks read from deploy/argocd/vemigrate.io/<Kind>/health.lua under the keys users set
(`resource.customizations.health.vemigrate.io_<Kind>`), `argocd-secret`, `argocd-rbac-cm`, and the
`default` AppProject. Reconciliation runs every few seconds (not upstream's 3 minutes), so a commit
shows in seconds without a webhook.

State (PIDs, ports, logs, the served repositories) lives in `<cache>/argocd/`; `down` stops the
processes and discards it. The objects in the cluster stay (the control plane's `down` discards them).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from vemigrate_dev.argocd_binaries import ArgoBinaries, ensure_argo_binaries
from vemigrate_dev.controlplane import ControlPlane, ControlPlaneInfo, free_ports
from vemigrate_dev.controlplane_binaries import REPO_ROOT, Log, cache_root, ensure_binaries, exclusive

NAMESPACE = "argocd"
HEALTH_SCRIPTS = REPO_ROOT / "deploy" / "argocd" / "vemigrate.io"
KINDS = ("VirtualEnvironmentMigration", "HypervisorHost")
# How often the controller compares every Application with Git (upstream: 180 s). It is also the repo
# server's cache lifetime of a branch's commit, so it bounds how long a new commit goes unseen.
RECONCILIATION = "5s"
_READY_TIMEOUT = 60.0
_STOP_TIMEOUT = 15.0
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _stderr(message: str) -> None:
    print(f"[argocd] {message}", file=sys.stderr, flush=True)


def health_customizations() -> dict[str, str]:
    """argocd-cm keys for our kinds' health checks, as docs/gitops.md tells users to install them."""
    return {
        f"resource.customizations.health.vemigrate.io_{kind}": (HEALTH_SCRIPTS / kind / "health.lua").read_text()
        for kind in KINDS
    }


@dataclass(frozen=True)
class ArgoCDInfo:
    """What a client needs to use a running Argo CD."""

    version: str
    namespace: str
    kubeconfig: Path
    git_root: Path  # every bare repository under it is served
    git_port: int
    repo_server: str
    redis: str
    state_dir: Path
    controller_pid: int

    def repo_url(self, name: str) -> str:
        """The URL Argo CD fetches `<git_root>/<name>` from (git daemon on the loopback)."""
        return f"git://127.0.0.1:{self.git_port}/{name}"


@dataclass(frozen=True)
class _State:
    version: str
    binaries: str
    kubeconfig: str
    redis_pid: int
    redis_port: int
    git_pid: int
    git_port: int
    git_daemon: str
    repo_server_pid: int
    repo_server_port: int
    controller_pid: int
    started: str
    # kube-controller-manager running only the garbage collector and namespace controllers (0: none).
    collector_pid: int = 0
    collector_binary: str = ""


def _exe(pid: int) -> str | None:
    try:
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z":
            return None
        return str(Path(f"/proc/{pid}/exe").readlink())
    except OSError:
        return None


def _alive(pid: int, binary: str | Path) -> bool:
    """True if `pid` runs `binary` (a recycled PID runs something else) and is no zombie. Compared by
    /proc/<pid>/exe: redis-server rewrites its command line, and Argo CD runs as a symlink's name."""
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        del _CHILDREN[pid]
        return False
    exe = _exe(pid)
    return exe is not None and exe == str(Path(binary).resolve())


def _stop(pid: int, binary: str | Path, log: Log, name: str) -> bool:
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


def _git_daemon() -> str:
    exec_path = subprocess.run(["git", "--exec-path"], capture_output=True, text=True, check=True).stdout.strip()
    daemon = Path(exec_path) / "git-daemon"
    if not os.access(daemon, os.X_OK):
        raise RuntimeError(f"{daemon} is missing (Debian's git package has it)")
    return str(daemon)


def missing_tools() -> list[str]:
    """The Debian commands Argo CD needs here that are not installed (tools/setup.sh installs them)."""
    return [name for name in ("redis-server", "git") if shutil.which(name) is None]


class ArgoCD:
    """One local Argo CD, identified by its state directory."""

    def __init__(self, state_dir: Path | None = None, *, cache: Path | None = None, log: Log = _stderr) -> None:
        self.cache = cache or cache_root()
        override = os.environ.get("VEMIGRATE_ARGOCD_DIR")
        self.state_dir = state_dir or (Path(override) if override else self.cache / "argocd")
        self.log = log

    @property
    def _state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def git_root(self) -> Path:
        return self.state_dir / "git"

    @property
    def _logs(self) -> Path:
        return self.state_dir / "logs"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with exclusive(self.state_dir / ".lock"):
            yield

    def _read_state(self) -> _State | None:
        try:
            return _State(**json.loads(self._state_file.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def _processes(self, state: _State) -> list[tuple[int, str, str]]:
        """(pid, executable, name), in the order they are stopped."""
        directory = Path(state.binaries)
        return [
            *(
                [(state.collector_pid, state.collector_binary, "kube-controller-manager")]
                if state.collector_pid
                else []
            ),
            (state.controller_pid, str(directory / "argocd"), "argocd-application-controller"),
            (state.repo_server_pid, str(directory / "argocd"), "argocd-repo-server"),
            (state.git_pid, state.git_daemon, "git daemon"),
            (state.redis_pid, shutil.which("redis-server") or "/usr/bin/redis-server", "redis-server"),
        ]

    def _info(self, state: _State) -> ArgoCDInfo:
        return ArgoCDInfo(
            version=state.version,
            namespace=NAMESPACE,
            kubeconfig=Path(state.kubeconfig),
            git_root=self.git_root,
            git_port=state.git_port,
            repo_server=f"127.0.0.1:{state.repo_server_port}",
            redis=f"127.0.0.1:{state.redis_port}",
            state_dir=self.state_dir,
            controller_pid=state.controller_pid,
        )

    def status(self) -> ArgoCDInfo | None:
        state = self._read_state()
        if state is None or not all(_alive(pid, exe) for pid, exe, _ in self._processes(state)):
            return None
        return self._info(state)

    def ensure_up(self, plane: ControlPlaneInfo, *, garbage_collector: bool = True) -> ArgoCDInfo:
        """Start Argo CD against `plane` unless it runs already. With `garbage_collector`, also
        kube-controller-manager with only its garbage collector and namespace controllers: Argo CD
        prunes with foreground deletion, which only the garbage collector completes, and a bare
        kube-apiserver has none (leave it out where a node's controller-manager runs)."""
        with self._locked():
            info = self.status()
            if info is not None and info.kubeconfig == plane.kubeconfig:
                self.log(f"already running (application controller pid {info.controller_pid})")
            else:
                self._clean(reason="stale state from an earlier run")
                missing = missing_tools()
                if missing:
                    raise RuntimeError(f"{', '.join(missing)} not installed; run tools/setup.sh")
                binaries = ensure_argo_binaries(self.log, self.cache)
                self.install(plane, binaries)
                info = self._start(plane, binaries, garbage_collector)
        return info

    def down(self) -> bool:
        with self._locked():
            return self._clean(reason=None)

    def _clean(self, reason: str | None) -> bool:
        state = self._read_state()
        stopped = False
        if state is not None:
            for pid, exe, name in self._processes(state):
                stopped |= _stop(pid, exe, self.log, name)
        leftovers = [
            p for p in (self._state_file, self.git_root, self.state_dir / "work", self.state_dir / "run") if p.exists()
        ]
        if reason is not None and leftovers:
            self.log(f"cleaning {reason} in {self.state_dir}")
        for path in leftovers:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        return stopped

    # The cluster's side.

    def _kubectl(self, plane: ControlPlaneInfo, *args: str, stdin: str | None = None) -> str:
        result = subprocess.run(
            [str(plane.kubectl), f"--kubeconfig={plane.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args[:3])} failed: {result.stderr.strip()}")
        return result.stdout

    def install(self, plane: ControlPlaneInfo, binaries: ArgoBinaries) -> None:
        """Argo CD's CRDs, namespace, settings and default project (server-side apply: idempotent)."""
        files = [arg for path in binaries.crds for arg in ("-f", str(path))]
        apply = ("apply", "--server-side", "--force-conflicts", "--field-manager=vemigrate-argocd")
        self._kubectl(plane, *apply, *files)
        deadline = time.monotonic() + 60
        while True:  # right after creation a CRD has no conditions yet, which `kubectl wait` takes for an error
            try:
                self._kubectl(plane, "wait", "--for=condition=Established", "--timeout=60s", *files)
                break
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        self._kubectl(plane, *apply, "-f", "-", stdin=yaml.safe_dump_all(self.objects(plane), sort_keys=False))
        self.log(f"installed Argo CD {binaries.version}'s CRDs, namespace {NAMESPACE}, settings and default project")

    def objects(self, plane: ControlPlaneInfo) -> list[dict[str, Any]]:
        labels = {"app.kubernetes.io/part-of": "argocd"}

        def meta(name: str, kind_label: str | None = None) -> dict[str, Any]:
            return {
                "name": name,
                "namespace": NAMESPACE,
                "labels": {**labels, "app.kubernetes.io/name": kind_label or name},
            }

        existing = self._existing_secret_key(plane)
        return [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": meta("argocd-cm"),
                "data": {**health_customizations(), "timeout.reconciliation": RECONCILIATION},
            },
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta("argocd-rbac-cm"), "data": {}},
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "Opaque",
                "metadata": meta("argocd-secret"),
                # Only the API server (not run here) signs with it; the settings manager wants it set.
                "stringData": {"server.secretkey": existing or secrets.token_urlsafe(32)},
            },
            {
                "apiVersion": "argoproj.io/v1alpha1",
                "kind": "AppProject",
                "metadata": {"name": "default", "namespace": NAMESPACE},
                "spec": {
                    "sourceRepos": ["*"],
                    "destinations": [{"server": "*", "namespace": "*"}],
                    "clusterResourceWhitelist": [{"group": "*", "kind": "*"}],
                },
            },
        ]

    def _existing_secret_key(self, plane: ControlPlaneInfo) -> str | None:
        """Keep argocd-secret's key across `up`s (server-side apply would otherwise rotate it)."""
        try:
            out = self._kubectl(
                plane, "-n", NAMESPACE, "get", "secret", "argocd-secret", "-o", "jsonpath={.data.server\\.secretkey}"
            )
        except RuntimeError:
            return None
        return base64.b64decode(out).decode() if out else None

    # The processes.

    def _spawn(self, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        self._logs.mkdir(parents=True, exist_ok=True)
        with (self._logs / f"{name}.log").open("ab") as out:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=dict(env) if env is not None else None,
            )
        _CHILDREN[process.pid] = process
        return process

    def _start(self, plane: ControlPlaneInfo, binaries: ArgoBinaries, garbage_collector: bool) -> ArgoCDInfo:
        started = time.monotonic()
        collector, collector_binary = None, ""
        if garbage_collector:
            kube = ensure_binaries(self.log, self.cache, commands=("kube-controller-manager",))
            collector_binary = str(kube.directory / "kube-controller-manager")
            collector = self._spawn(
                "kube-controller-manager",
                [
                    collector_binary,
                    f"--kubeconfig={plane.kubeconfig}",
                    "--controllers=garbagecollector,namespace",
                    "--bind-address=127.0.0.1",
                    "--secure-port=0",
                    "--leader-elect=false",
                    "--use-service-account-credentials=false",
                ],
            )
        run = self.state_dir / "run"
        for directory in (run / "redis", run / "home", run / "tmp", run / "tls", run / "ssh", self.git_root):
            directory.mkdir(parents=True, exist_ok=True)
        (run / "ssh" / "ssh_known_hosts").touch()
        redis_port, git_port, repo_port, repo_metrics, controller_metrics = free_ports(5)
        git_daemon = _git_daemon()
        redis = self._spawn(
            "redis-server",
            [
                shutil.which("redis-server") or "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(redis_port),
                "--dir",
                str(run / "redis"),
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ],
        )
        git = self._spawn(
            "git-daemon",
            [
                git_daemon,
                "--reuseaddr",
                "--listen=127.0.0.1",
                f"--port={git_port}",
                f"--base-path={self.git_root}",
                "--export-all",
                "--informative-errors",
                str(self.git_root),
            ],
        )
        env = {
            # The binaries' directory first: the helper scripts upstream's image has on PATH are there.
            "PATH": f"{binaries.directory}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(run / "home"),
            "TMPDIR": str(run / "tmp"),
            "ARGOCD_RECONCILIATION_TIMEOUT": RECONCILIATION,
            "ARGOCD_RECONCILIATION_JITTER": "0s",
            "ARGOCD_GPG_ENABLED": "false",
            "ARGOCD_TLS_DATA_PATH": str(run / "tls"),
            "ARGOCD_SSH_DATA_PATH": str(run / "ssh"),
            "ARGOCD_APP_CONF_PATH": str(run),
            # The in-cluster destination (https://kubernetes.default.svc) is this kubeconfig's cluster.
            "ARGOCD_FAKE_IN_CLUSTER": "true",
            "KUBECONFIG": str(plane.kubeconfig),
        }
        repo = self._spawn(
            "argocd-repo-server",
            [
                str(binaries.repo_server),
                "--address=127.0.0.1",
                f"--port={repo_port}",
                "--metrics-address=127.0.0.1",
                f"--metrics-port={repo_metrics}",
                f"--redis=127.0.0.1:{redis_port}",
                "--disable-tls",
                # Its default (a mounted Secret's path) is refused together with --disable-tls, even absent.
                "--client-ca-path=",
                "--logformat=text",
            ],
            env,
        )
        controller = self._spawn(
            "argocd-application-controller",
            [
                str(binaries.controller),
                f"--kubeconfig={plane.kubeconfig}",
                f"--namespace={NAMESPACE}",
                f"--repo-server=127.0.0.1:{repo_port}",
                "--repo-server-plaintext",
                f"--redis=127.0.0.1:{redis_port}",
                f"--metrics-port={controller_metrics}",
                "--status-processors=2",
                "--operation-processors=2",
                # Each resource's health (status and message) in the Application's status.resources, as
                # before Argo CD 3.0, where a client without Argo CD's API server can read it.
                "--persist-resource-health",
                "--logformat=text",
            ],
            env,
        )
        state = _State(
            version=binaries.version,
            binaries=str(binaries.directory),
            kubeconfig=str(plane.kubeconfig),
            redis_pid=redis.pid,
            redis_port=redis_port,
            git_pid=git.pid,
            git_port=git_port,
            git_daemon=git_daemon,
            repo_server_pid=repo.pid,
            repo_server_port=repo_port,
            controller_pid=controller.pid,
            started=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            collector_pid=collector.pid if collector is not None else 0,
            collector_binary=collector_binary,
        )
        self._state_file.write_text(json.dumps(asdict(state), indent=2) + "\n")
        try:
            self._wait_ready(state, controller_metrics)
        except BaseException:
            self._clean(reason=None)
            raise
        self.log(
            f"Argo CD {binaries.version} ready in {time.monotonic() - started:.1f}s: repo server "
            f"127.0.0.1:{repo_port}, Redis 127.0.0.1:{redis_port}, "
            f"Git at git://127.0.0.1:{git_port}/ from {self.git_root}"
        )
        return self._info(state)

    def _wait_ready(self, state: _State, controller_metrics: int) -> None:
        """Every process alive and listening (the controller: its metrics server, which it starts once
        its caches and informers are set up)."""
        deadline = time.monotonic() + _READY_TIMEOUT
        waiting = [
            ("redis-server", state.redis_port),
            ("git-daemon", state.git_port),
            ("argocd-repo-server", state.repo_server_port),
            ("argocd-application-controller", controller_metrics),
        ]
        while waiting and time.monotonic() < deadline:
            for pid, exe, name in self._processes(state):
                if not _alive(pid, exe):
                    raise RuntimeError(f"{name} exited during start-up; its log ends:\n{self.log_tail(name)}")
            name, port = waiting[0]
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                waiting.pop(0)
                continue
            time.sleep(0.2)
        if waiting:
            name = waiting[0][0]
            raise RuntimeError(
                f"{name} did not listen within {_READY_TIMEOUT:.0f}s; its log ends:\n{self.log_tail(name)}"
            )

    def log_tail(self, name: str, lines: int = 30) -> str:
        names = {"git daemon": "git-daemon"}
        try:
            text = (self._logs / f"{names.get(name, name)}.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


class GitRepo:
    """A bare repository under the served root, and a work tree to commit to it from, as a user's
    clone would; Argo CD reads it through `git daemon` only."""

    def __init__(self, info: ArgoCDInfo, name: str, branch: str = "main") -> None:
        self.name = name if name.endswith(".git") else f"{name}.git"
        self.url = info.repo_url(self.name)
        self.branch = branch
        self.bare = info.git_root / self.name
        self.work = info.state_dir / "work" / self.name.removesuffix(".git")
        if not self.bare.exists():
            self._git(None, "init", "--quiet", "--bare", f"--initial-branch={branch}", str(self.bare))
        if not self.work.exists():
            self.work.parent.mkdir(parents=True, exist_ok=True)
            self._git(None, "init", "--quiet", f"--initial-branch={branch}", str(self.work))
            self._git(self.work, "remote", "add", "origin", str(self.bare))

    @staticmethod
    def _git(cwd: Path | None, *args: str) -> str:
        env = dict(
            os.environ,
            GIT_AUTHOR_NAME="ve-migrate tests",
            GIT_AUTHOR_EMAIL="tests@vemigrate.invalid",
            GIT_COMMITTER_NAME="ve-migrate tests",
            GIT_COMMITTER_EMAIL="tests@vemigrate.invalid",
            GIT_CONFIG_NOSYSTEM="1",
            GIT_CONFIG_GLOBAL="/dev/null",
        )
        result = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"git {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def commit(self, message: str, files: Mapping[str, str | None]) -> str:
        """Write (or, for None, remove) files in the work tree, commit them and push; return the commit."""
        for relative, text in files.items():
            path = self.work / relative
            if text is None:
                path.unlink(missing_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
        self._git(self.work, "add", "--all")
        self._git(self.work, "commit", "--quiet", "--allow-empty", "-m", message)
        self._git(self.work, "push", "--quiet", "origin", f"HEAD:refs/heads/{self.branch}")
        return self.head()

    def head(self) -> str:
        return self._git(self.work, "rev-parse", "HEAD")

    def revert(self, message: str) -> str:
        """`git revert` the last commit and push, as a user undoing a change would."""
        self._git(self.work, "revert", "--no-edit", "HEAD")
        self._git(self.work, "commit", "--quiet", "--amend", "-m", message)
        self._git(self.work, "push", "--quiet", "origin", f"HEAD:refs/heads/{self.branch}")
        return self.head()


# The CLI.


def _up(args: argparse.Namespace) -> int:
    control_plane = ControlPlane()
    plane = control_plane.ensure_up()
    # `controlplane up --node` runs a whole kube-controller-manager already.
    info = ArgoCD().ensure_up(plane, garbage_collector=control_plane.node.status() is None)
    repo = GitRepo(info, "fleet")
    if not (repo.bare / "refs" / "heads" / repo.branch).exists():
        repo.commit("an empty fleet repository", {"README": "HypervisorHosts and migrations, one manifest each.\n"})
    print(f"Argo CD {info.version} running in namespace {info.namespace} of the control plane")
    print(f"  a Git repository to sync: {repo.url} (commit from its clone {repo.work})")
    print(f"  Applications: kubectl -n {info.namespace} get applications")
    return 0


def _down(args: argparse.Namespace) -> int:
    if not ArgoCD().down():
        print("Argo CD was not running")
    return 0


def _status(args: argparse.Namespace) -> int:
    info = ArgoCD().status()
    if info is None:
        print("Argo CD: stopped")
        return 3
    print(f"Argo CD: running {info.version}, application controller pid {info.controller_pid}")
    print(f"  repo server {info.repo_server}, Redis {info.redis}")
    print(f"  Git         {info.repo_url('')} serving {info.git_root}")
    print(f"  state       {info.state_dir}")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "argocd",
        help="a real Argo CD (application controller, repo server, Redis, git daemon) for the local cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    verbs.add_parser("up", help="build once, start against the control plane (started if needed)").set_defaults(
        func=_up
    )
    verbs.add_parser("down", help="stop what `up` started and discard its state").set_defaults(func=_down)
    verbs.add_parser("status", help="is it running, where (exit 3 if stopped)").set_defaults(func=_status)
