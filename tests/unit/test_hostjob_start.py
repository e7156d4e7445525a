"""hostjob's start script, run with a local sh: one round trip makes the directory, writes the script
and starts it in a session of its own; a second start leaves the running job alone."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from vemigrate.drivers import hostjob

pytestmark = pytest.mark.unit


def _start(directory: Path, text: str) -> None:
    subprocess.run(["sh", "-c", hostjob._START, "sh", str(directory)], input=text, text=True, check=True, timeout=10)


def test_start_writes_and_starts_once_in_its_own_session(tmp_path: Path) -> None:
    job = tmp_path / "jobs" / "uid-1"
    _start(job, hostjob.script(["sleep 1", "echo first"]))
    pid = int((job / "pid").read_text())
    assert os.getsid(pid) == pid, "the recorded pid leads its own session, so a kill reaches the whole job"
    _start(job, hostjob.script(["echo second"]))  # already started: nothing is replaced or run again
    deadline = time.monotonic() + 10
    while not (job / "exit").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (job / "exit").read_text().strip() == "0"
    assert (job / "log").read_text().split() == ["first"]
    assert "echo first" in (job / "job.sh").read_text()
