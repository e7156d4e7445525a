"""`vemigrate run` where no cluster can be reached ends with one line saying why, not a traceback
(as it would in the image started outside a Pod, or with a mistyped --kubeconfig)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")}
    env["HOME"] = str(tmp_path)  # no ~/.kube/config
    argv = [sys.executable, "-m", "vemigrate", "run", "--metrics-port", "0", "--liveness", "", *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("kubeconfig", ["absent", "garbage", None])
def test_no_credentials_is_one_line_and_exit_2(tmp_path: Path, kubeconfig: str | None) -> None:
    args: list[str] = []
    if kubeconfig is not None:
        path = tmp_path / kubeconfig
        if kubeconfig == "garbage":
            path.write_text("clusters: [\n")
        args = ["--kubeconfig", str(path)]
    result = _run(tmp_path, *args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("vemigrate run: no Kubernetes credentials: not in a Pod"), result.stderr
    assert (str(tmp_path / kubeconfig) if kubeconfig else "~/.kube/config") in line, line


def test_the_earlier_started_replica_has_the_higher_peering_priority() -> None:
    """kopf lets the highest priority work and pauses the others (all of them at equal priority): a
    replica started later, a rollout's or a replacement's Pod, stands by instead of taking over from
    the one working mid-pass, whatever its tie-break; and the priority stays exact in JSON."""
    from vemigrate.cli import _TIE_BREAK, seniority

    start = 1_796_000_000.5  # 2026
    older, newer = seniority(start, 0), seniority(start + 0.01, _TIE_BREAK - 1)
    assert older > newer > 0
    assert seniority(start, 1) != seniority(start, 2), "the tie-break separates replicas started at once"
    assert seniority(0.001, _TIE_BREAK - 1) <= 2**53
    with pytest.raises(ValueError):
        seniority(start, _TIE_BREAK)
