"""Processes the lab starts and stops: commands run to completion, and daemons it tracks by PID.

A PID alone can be reused after a crash, so a tracked process is a PID plus its start time (field 22
of /proc/PID/stat); the lab never signals a PID whose start time changed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


class CommandError(RuntimeError):
    """A command the lab ran failed; the message names it and quotes its error output."""


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 60,
    input_text: str | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run argv (never through a shell), capture its output, raise CommandError when it fails."""
    try:
        proc = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input_text,
            env=dict(env) if env is not None else None,
            check=False,
        )
    except FileNotFoundError as exc:
        raise CommandError(f"{argv[0]} is not installed (run tools/setup.sh)") from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandError(f"{' '.join(argv)} did not finish within {timeout:g} s") from exc
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()[-2000:]
        raise CommandError(f"{' '.join(argv)} failed (exit {proc.returncode}): {detail}")
    return proc


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None when it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def children(pid: int) -> list[int]:
    """Direct children of a process (empty when it is gone)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


def command_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat[stat.rindex(")") + 2] == "Z"


@dataclass(frozen=True)
class Tracked:
    """A process the lab started: its PID and start time, so a reused PID is never signalled."""

    pid: int
    started: int

    @classmethod
    def of(cls, pid: int) -> Tracked:
        started = start_time(pid)
        if started is None:
            raise CommandError(f"process {pid} exited right after it was started")
        return cls(pid, started)

    def alive(self) -> bool:
        return start_time(self.pid) == self.started and not is_zombie(self.pid)

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds; returns once the process is gone."""
        stop_pids([self], grace)

    def to_json(self) -> dict[str, int]:
        return {"pid": self.pid, "started": self.started}

    @classmethod
    def from_json(cls, data: Mapping[str, int]) -> Tracked:
        return cls(int(data["pid"]), int(data["started"]))


def stop_pids(procs: Sequence[Tracked], grace: float = 3.0) -> None:
    """Stop several processes at once: SIGTERM to all, wait, SIGKILL to the rest, reap our children."""
    live = [p for p in procs if p.alive()]
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for p in live:
            if p.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _reap()
            live = [p for p in live if p.alive()]
            if not live:
                return
            time.sleep(0.05)
    if live:
        raise CommandError(f"processes {[p.pid for p in live]} survived SIGKILL")


def _reap() -> None:
    # Daemons started by this Python process become zombies until waited for.
    try:
        while True:
            pid, _ = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return
    except ChildProcessError:
        return


def spawn(argv: Sequence[str], log: Path) -> Tracked:
    """Start a long-running process detached from our session, output appended to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Tracked.of(proc.pid)


def wait_for(what: str, ready: Callable[[], object], timeout: float, interval: float = 0.05) -> None:
    """Poll `ready()` until it returns true; raise CommandError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        if ready():
            return
        if time.monotonic() > deadline:
            raise CommandError(f"{what} not ready after {timeout:g} s")
        time.sleep(interval)
