"""Argo CD's application controller and repo server, built from Argo CD's Go module by the wrapper
module in tools/argocd/ into the cache, once per release, like the control plane's binaries
(controlplane_binaries). Upstream ships one multi-call binary that picks its part from argv[0]; the
wrapper's main keeps only the two parts the local environment runs, so only their packages compile,
and adds a third of ours, argocd-health-test: our health checks' health_test.yaml run in Argo CD's Lua.
The build also copies the release's CRDs (Application, AppProject) and the helper scripts its image
has on PATH out of the module cache, so a cleaned module cache does not break `vemigrate argocd up`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from vemigrate_dev.controlplane_binaries import (
    REPO_ROOT,
    Log,
    _minutes,
    _run_with_heartbeat,
    cache_root,
    exclusive,
    find_go,
)

GO_MODULE = REPO_ROOT / "tools" / "argocd"
ARGO_MODULE = "github.com/argoproj/argo-cd/v3"
# The names the multi-call binary answers to (upstream's common.CommandApplicationController, ...).
CONTROLLER = "argocd-application-controller"
REPO_SERVER = "argocd-repo-server"
# Ours (tools/argocd/cmd/argocd/healthtest.go): health_test.yaml cases run in Argo CD's own Lua VM.
HEALTH_TEST = "argocd-health-test"
CRD_FILES = ("application-crd.yaml", "appproject-crd.yaml")
# Scripts upstream's image puts on PATH beside the binary (its Dockerfile copies them from hack/): the
# repo server runs git-verify-wrapper.sh on every commit it renders, signed or not.
HELPERS = ("git-verify-wrapper.sh", "gpg-wrapper.sh")


def argocd_version(go_module: Path = GO_MODULE) -> str:
    """The Argo CD release the wrapper's go.mod requires (the single place it is pinned)."""
    text = (go_module / "go.mod").read_text()
    match = re.search(rf"^\s*{re.escape(ARGO_MODULE)} (v\d+\.\d+\.\d+)\s*$", text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"{go_module / 'go.mod'} does not require {ARGO_MODULE}")
    return match.group(1)


def go_toolchain(go_module: Path = GO_MODULE) -> str:
    """The go.mod's `toolchain` line (Argo CD 3.6 needs Go 1.27; `go` fetches that toolchain through
    the module proxy when the installed one is older), else `local`."""
    match = re.search(r"^toolchain (go\S+)\s*$", (go_module / "go.mod").read_text(), re.MULTILINE)
    return match.group(1) if match else "local"


@dataclass(frozen=True)
class ArgoBinaries:
    version: str
    directory: Path

    @property
    def binary(self) -> Path:
        return self.directory / "argocd"

    @property
    def controller(self) -> Path:
        return self.directory / CONTROLLER

    @property
    def repo_server(self) -> Path:
        return self.directory / REPO_SERVER

    @property
    def health_test(self) -> Path:
        return self.directory / HEALTH_TEST

    @property
    def helpers(self) -> list[Path]:
        return [self.directory / name for name in HELPERS]

    @property
    def crds(self) -> list[Path]:
        return [self.directory / "crds" / name for name in CRD_FILES]

    def present(self) -> bool:
        return (
            os.access(self.binary, os.X_OK)
            and self.controller.is_symlink()
            and self.repo_server.is_symlink()
            and self.health_test.is_symlink()  # a build from before it had this part is built again
            and all(path.is_file() for path in self.crds)
            and all(os.access(path, os.X_OK) for path in self.helpers)
        )


def argo_binaries(cache: Path | None = None, go_module: Path = GO_MODULE) -> ArgoBinaries:
    """Where the pinned release's binary lives (it may not be built yet)."""
    version = argocd_version(go_module)
    return ArgoBinaries(version=version, directory=(cache or cache_root()) / "bin" / f"argocd-{version}")


def ensure_argo_binaries(log: Log = print, cache: Path | None = None, go_module: Path = GO_MODULE) -> ArgoBinaries:
    """The pinned release's binary, built first if missing (one build at a time per cache)."""
    wanted = argo_binaries(cache, go_module)
    if wanted.present():
        return wanted
    with exclusive(wanted.directory.parent / f".argocd-{wanted.version}.lock"):
        if not wanted.present():  # else another process built it while we waited
            _build(wanted, log, go_module)
    return wanted


def _build(wanted: ArgoBinaries, log: Log, go_module: Path) -> None:
    go = find_go()
    if go is None:
        raise RuntimeError("Go is not installed (no `go` on PATH); it is needed once to build Argo CD.")
    partial = wanted.directory.with_name(wanted.directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    env = dict(os.environ, CGO_ENABLED="0", GOTOOLCHAIN=go_toolchain(go_module))
    argv = [
        go,
        "build",
        "-v",
        "-trimpath",
        "-buildvcs=false",
        "-ldflags",
        f"-s -w -X {ARGO_MODULE}/common.version={wanted.version.lstrip('v')}",
        "-o",
        str(partial / "argocd"),
        "./cmd/argocd",
    ]
    log(
        f"building Argo CD {wanted.version} ({CONTROLLER}, {REPO_SERVER}) from Go modules into "
        f"{wanted.directory} (once: about 8 minutes on 2 cores from a cold cache)"
    )
    started = time.monotonic()
    returncode, tail = _run_with_heartbeat(argv, go_module, env, log, started)
    if returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise RuntimeError(f"building Argo CD failed (go build exit {returncode}); last output:\n" + "\n".join(tail))
    for name in (CONTROLLER, REPO_SERVER, HEALTH_TEST):
        (partial / name).symlink_to("argocd")
    source = _module_dir(go, go_module, env)
    (partial / "crds").mkdir()
    for name in CRD_FILES:
        shutil.copyfile(source / "manifests" / "crds" / name, partial / "crds" / name)
    for name in HELPERS:
        shutil.copyfile(source / "hack" / name, partial / name)
        (partial / name).chmod(0o755)
    shutil.rmtree(wanted.directory, ignore_errors=True)
    partial.rename(wanted.directory)  # atomic: a half-built directory is never taken for a built one
    size = wanted.binary.stat().st_size / 2**20
    log(f"built Argo CD {wanted.version} in {_minutes(time.monotonic() - started)} ({size:.0f} MiB)")


def _module_dir(go: str, go_module: Path, env: dict[str, str]) -> Path:
    """Argo CD's source directory in the module cache (the build just downloaded it)."""
    result = subprocess.run(
        [go, "list", "-m", "-json", ARGO_MODULE], cwd=go_module, env=env, capture_output=True, text=True, check=True
    )
    return Path(json.loads(result.stdout)["Dir"])
