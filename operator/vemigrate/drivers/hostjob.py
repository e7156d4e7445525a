"""A job that runs detached on a host, keyed by the migration's UID, and outlives the operator.

Layout on the host, under JOBS_DIR/<uid>/: `job.sh` (the script), `pid` (its process group),
`log` (its output), `exit` (its exit status, written last). A restarted operator reads these to
re-attach; nothing about a job lives only in the operator's memory.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from vemigrate.drivers.errors import PermanentError
from vemigrate.drivers.ssh import SSHHost

JOBS_DIR = "/var/lib/libvirt/vemigrate/jobs"
_UID = re.compile(r"^[A-Za-z0-9-]{1,64}$")
LOG_TAIL_LINES = 40

# In one round trip: makes the job directory, writes job.sh from stdin and starts it in its own
# session (so a kill reaches every process it started), records the pid, and returns at once; a job
# that started already (pid exists) is left alone. $1 is the job directory; nothing else is
# interpolated. Only `setsid` goes to the background, so the pid is its session's.
_START = (
    'mkdir -p "$1" && cd "$1" || exit 1\n'
    "[ -e pid ] && exit 0\n"
    "cat >job.sh.tmp && mv job.sh.tmp job.sh || exit 1\n"
    "setsid sh ./job.sh >log 2>&1 </dev/null &\n"
    "echo $! >pid.tmp && mv pid.tmp pid\n"
)

# Prints what a reader needs in one round trip: exit status, whether the pid lives, the log's tail.
_READ = (
    'cd "$1" 2>/dev/null || { echo state=none; exit 0; }; '
    "[ -e pid ] || { echo state=none; exit 0; }; "
    'if [ -e exit ]; then echo "state=exited"; echo "exit=$(cat exit)"; '
    'elif kill -0 "$(cat pid)" 2>/dev/null; then echo state=running; '
    "else echo state=lost; fi; "
    'echo "--- log"; tail -n "$2" log 2>/dev/null'
)


@dataclass(frozen=True)
class JobRecord:
    state: str  # none | running | exited | lost (the process is gone without an exit status)
    exit_status: int | None
    log_tail: str

    def error_line(self) -> str:
        """The last line that reads like an error, else the last line."""
        lines = [line.strip() for line in self.log_tail.splitlines() if line.strip()]
        errors = [line for line in lines if "error" in line.lower()]
        return (errors or lines or ["(no output)"])[-1]


def job_dir(uid: str) -> str:
    if not _UID.match(uid):
        raise PermanentError("InvalidUID", f"migration UID {uid!r} cannot name a job directory")
    return f"{JOBS_DIR}/{uid}"


def script(lines: Sequence[str]) -> str:
    """A job script: runs the lines in order, stops at the first failure, and records the exit status."""
    body = "\n".join(lines)
    return (
        "#!/bin/sh\n"
        "# Written by the vemigrate operator; its outcome is read back from ./exit.\n"
        "set -u\n"
        'cd "$(dirname "$0")"\n'
        "run() {\n"
        "set -e\n"
        f"{body}\n"
        "}\n"
        "( run ); rc=$?\n"
        'echo "$rc" >exit.tmp && mv exit.tmp exit\n'
    )


def command(argv: Sequence[str]) -> str:
    """One shell line from argv: every word quoted."""
    return shlex.join(argv)


async def start(ssh: SSHHost, uid: str, text: str) -> None:
    """Upload the script and start it detached; a no-op when this job already started."""
    await ssh.run(["sh", "-c", _START, "sh", job_dir(uid)], input=text)


async def read(ssh: SSHHost, uid: str) -> JobRecord:
    out = (await ssh.run(["sh", "-c", _READ, "sh", job_dir(uid), str(LOG_TAIL_LINES)])).stdout
    head, _, tail = out.partition("--- log\n")
    fields = dict(line.split("=", 1) for line in head.splitlines() if "=" in line)
    exit_text = fields.get("exit", "").strip()
    return JobRecord(
        state=fields.get("state", "none").strip(),
        exit_status=int(exit_text) if exit_text.lstrip("-").isdigit() else None,
        log_tail=tail,
    )


async def kill(ssh: SSHHost, uid: str) -> None:
    """Stop every process of the job (its session), if it still runs."""
    await ssh.run(
        ["sh", "-c", 'p=$(cat "$1/pid" 2>/dev/null) && kill -TERM -- "-$p" 2>/dev/null; true', "sh", job_dir(uid)]
    )


async def forget(ssh: SSHHost, uid: str) -> None:
    await ssh.run(["rm", "-rf", "--", job_dir(uid)])
