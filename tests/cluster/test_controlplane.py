"""The control plane's own lifecycle: `up` is idempotent, a killed run's leftovers are cleaned, and
`down` leaves no process or listening port. Uses a second control plane in a temporary state dir, so
the session's one keeps serving the other tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.fixtures.controlplane import session_state_dir
from vemigrate_dev.controlplane import ControlPlane, ControlPlaneInfo


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _pid_exists(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _port(server: str) -> int:
    return int(server.rsplit(":", 1)[1])


def test_up_is_idempotent_cleans_a_killed_run_and_down_leaves_nothing(
    control_plane: ControlPlaneInfo,
) -> None:
    messages: list[str] = []
    # Named after this session, so a killed run's leftovers are stopped by the next session.
    plane = ControlPlane(session_state_dir("lifecycle"), crds=None, log=messages.append)
    assert plane.status() is None

    first = plane.ensure_up()
    assert first.server != control_plane.server
    assert _listening(_port(first.server))
    again = plane.ensure_up()
    assert (again.apiserver_pid, again.etcd_pid) == (first.apiserver_pid, first.etcd_pid)
    assert any("already running" in m for m in messages)

    # A run killed without `down`: the apiserver dies, etcd is orphaned, files stay behind.
    os.kill(first.apiserver_pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while plane.status() is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert plane.status() is None
    second = plane.ensure_up()
    assert any("stale state" in m for m in messages)
    assert not _pid_exists(first.etcd_pid)
    assert second.apiserver_pid != first.apiserver_pid

    assert plane.down() is True
    assert plane.status() is None
    for pid in (second.apiserver_pid, second.etcd_pid):
        assert not _pid_exists(pid)
    assert not _listening(_port(second.server))
    assert not second.kubeconfig.exists()
    assert plane.down() is False
    shutil.rmtree(plane.state_dir)


def _env(info: ControlPlaneInfo) -> dict[str, str]:
    # The CLI is pointed at this session's control plane, not the developer's default one.
    return {**os.environ, "VEMIGRATE_CONTROLPLANE_DIR": str(info.state_dir)}


def _vemigrate(info: ControlPlaneInfo, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vemigrate", "controlplane", *args],
        capture_output=True,
        text=True,
        check=False,
        env=_env(info),
    )


def test_the_cli_reports_the_running_control_plane(control_plane: ControlPlaneInfo) -> None:
    status = _vemigrate(control_plane, "status")
    assert status.returncode == 0, status.stderr
    assert control_plane.server in status.stdout
    kubeconfig = _vemigrate(control_plane, "kubeconfig")
    assert kubeconfig.stdout.strip() == str(control_plane.kubeconfig)
    up = _vemigrate(control_plane, "up")
    assert up.returncode == 0, up.stderr
    assert "already running" in up.stderr


def test_kubectl_get_vem_works_from_a_shell(control_plane: ControlPlaneInfo) -> None:
    # Exactly the line the README gives, with our kubectl and vemigrate first on PATH.
    path = os.pathsep.join([str(control_plane.kubectl.parent), str(Path(sys.executable).parent), os.environ["PATH"]])
    result = subprocess.run(
        ["bash", "-c", 'kubectl --kubeconfig "$(vemigrate controlplane kubeconfig)" get vem -A'],
        capture_output=True,
        text=True,
        check=False,
        env={**_env(control_plane), "PATH": path},
    )
    assert result.returncode == 0, result.stderr
    assert "No resources found" in result.stderr or result.stdout.startswith("NAMESPACE")


def test_kubectl_and_the_server_report_the_pinned_release(control_plane: ControlPlaneInfo) -> None:
    result = subprocess.run(
        [str(control_plane.kubectl), f"--kubeconfig={control_plane.kubeconfig}", "version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"Client Version: {control_plane.version}" in result.stdout
    assert f"Server Version: {control_plane.version}" in result.stdout
