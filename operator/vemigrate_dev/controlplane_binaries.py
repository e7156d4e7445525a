"""The control plane's binaries: kube-apiserver, etcd and kubectl, built from Go modules by the wrapper
module in tools/controlplane/ into a cache outside the repository, once per Kubernetes version; the
node's (kube-controller-manager, kube-scheduler, kubelet and two small helpers) only when a node is
asked for, so the demo's first build does not wait for them."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

Log = Callable[[str], None]

# operator/vemigrate_dev/<this file> -> the repository root.
REPO_ROOT = Path(__file__).resolve().parents[2]
GO_MODULE = REPO_ROOT / "tools" / "controlplane"
COMMANDS = ("kube-apiserver", "etcd", "kubectl")
# `pause` is the Pod sandbox's image (no registry to pull one from), `cri-sweep` tears Pods down on `down`.
NODE_COMMANDS = ("kube-controller-manager", "kube-scheduler", "kubelet", "pause", "cri-sweep")
# How often a running build says what it is doing (a cold build takes many minutes).
_HEARTBEAT_SECONDS = 15.0


def cache_root() -> Path:
    """`$VEMIGRATE_CACHE`, else `$XDG_CACHE_HOME/vemigrate`, else `~/.cache/vemigrate`."""
    explicit = os.environ.get("VEMIGRATE_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "vemigrate"


def kubernetes_version(go_module: Path = GO_MODULE) -> str:
    """The k8s.io/kubernetes version the wrapper's go.mod requires (the single place it is pinned)."""
    text = (go_module / "go.mod").read_text()
    match = re.search(r"^\s*k8s\.io/kubernetes (v\d+\.\d+\.\d+)\s*$", text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"{go_module / 'go.mod'} does not require k8s.io/kubernetes; regenerate it.")
    return match.group(1)


@dataclass(frozen=True)
class Binaries:
    version: str
    directory: Path

    @property
    def kube_apiserver(self) -> Path:
        return self.directory / "kube-apiserver"

    @property
    def etcd(self) -> Path:
        return self.directory / "etcd"

    @property
    def kubectl(self) -> Path:
        return self.directory / "kubectl"

    def present(self, commands: tuple[str, ...] = COMMANDS) -> bool:
        return all(os.access(self.directory / name, os.X_OK) for name in commands)


def binaries(cache: Path | None = None, go_module: Path = GO_MODULE) -> Binaries:
    """Where the binaries for the pinned version live (they may not be built yet)."""
    version = kubernetes_version(go_module)
    return Binaries(version=version, directory=(cache or cache_root()) / "bin" / version)


def find_go() -> str | None:
    found = shutil.which("go")
    if found:
        return found
    # Debian's golang package and the upstream tarball install here without touching PATH.
    for candidate in ("/usr/local/go/bin/go", "/usr/lib/go/bin/go"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _ldflags(version: str) -> str:
    major, minor = version.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    # The same variables upstream's hack/lib/version.sh sets, so `kubectl version` and /version
    # report a real release (the apiserver's emulation-version checks read them too).
    for package in ("k8s.io/client-go/pkg/version", "k8s.io/component-base/version"):
        for key, value in (
            ("gitVersion", version),
            ("gitMajor", major),
            ("gitMinor", minor),
            ("gitTreeState", "clean"),
            ("buildDate", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())),
        ):
            flags.append(f"-X {package}.{key}={value}")
    return " ".join(flags)


@contextmanager
def exclusive(lock_path: Path) -> Iterator[None]:
    """One holder of `lock_path` at a time, across processes (two test sessions, or a shell and a test):
    a build into the cache, a state directory's up and down."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_binaries(
    log: Log = print, cache: Path | None = None, go_module: Path = GO_MODULE, commands: tuple[str, ...] = COMMANDS
) -> Binaries:
    """The binaries for the pinned version, built first if any of `commands` is missing."""
    wanted = binaries(cache, go_module)
    if wanted.present(commands):
        return wanted
    with exclusive(wanted.directory.parent / f".{wanted.version}.lock"):
        if wanted.present(commands):  # another process built them while we waited
            return wanted
        missing = tuple(name for name in commands if not wanted.present((name,)))
        _build(wanted, log, go_module, missing)
    return wanted


def _build(wanted: Binaries, log: Log, go_module: Path, commands: tuple[str, ...]) -> None:
    go = find_go()
    if go is None:
        raise RuntimeError(
            "Go is not installed (no `go` on PATH); it is needed once to build kube-apiserver, etcd "
            "and kubectl (see docs/controlplane.md)."
        )
    partial = wanted.directory.with_name(wanted.version + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    env = dict(os.environ, CGO_ENABLED="0", GOTOOLCHAIN="local")
    argv = [
        go,
        "build",
        "-v",
        "-trimpath",
        # No VCS stamping: the wrapper sits in our git tree, whose state says nothing about the build
        # (and a clone owned by another user would make go refuse to read it).
        "-buildvcs=false",
        "-ldflags",
        _ldflags(wanted.version),
        "-o",
        str(partial) + "/",
        *(f"./cmd/{name}" for name in commands),
    ]
    log(
        f"building {', '.join(commands)} {wanted.version} from Go modules into {wanted.directory} (once: a "
        "cold build takes 11 to 15 minutes on 2 cores and about 4 GB of disk, the node's commands more)"
    )
    started = time.monotonic()
    returncode, tail = _run_with_heartbeat(argv, go_module, env, log, started)
    if returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise RuntimeError(
            f"building the control plane failed (go build exit {returncode}); last output:\n" + "\n".join(tail)
        )
    # Renames are atomic: a half-built binary is never taken for a built one.
    if wanted.directory.is_dir():
        for name in commands:
            (partial / name).rename(wanted.directory / name)
        partial.rmdir()
    else:
        partial.rename(wanted.directory)
    log(f"built {wanted.version} in {_minutes(time.monotonic() - started)}")


@dataclass
class _Progress:
    packages: int = 0
    downloads: int = 0
    last: str = "resolving modules"


def _run_with_heartbeat(
    argv: list[str], cwd: Path, env: dict[str, str], log: Log, started: float
) -> tuple[int, list[str]]:
    """Run `go build -v`, summarising its package lines every few seconds instead of going silent."""
    process = subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    assert process.stdout is not None
    state = _Progress()
    tail: list[str] = []
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(_HEARTBEAT_SECONDS):
            log(
                f"  go build: {_minutes(time.monotonic() - started)} elapsed, {state.downloads} modules "
                f"downloaded, {state.packages} packages compiled (now: {state.last})"
            )

    ticker = threading.Thread(target=heartbeat, daemon=True)
    ticker.start()
    try:
        for raw in process.stdout:
            line = raw.rstrip()
            tail = [*tail[-19:], line]
            if line.startswith("go: downloading "):
                state.downloads += 1
                state.last = line.removeprefix("go: ")
            elif line and not line.startswith(("#", " ", "\t")):
                state.packages += 1
                state.last = line
        return process.wait(), tail
    finally:
        done.set()
        if process.poll() is None:
            process.kill()
            process.wait()


def _minutes(seconds: float) -> str:
    return f"{int(seconds) // 60}m{int(seconds) % 60:02d}s"
