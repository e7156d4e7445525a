"""A job that runs detached on a host, keyed by the migration's UID and attempt, and outlives the operator.

Layout on the host, under JOBS_DIR/<uid>/<attempt>/ (mode 0700: the script may hold a domain's
secrets): `job.sh` (the script), `pid` (its process group, the host's boot id and the process's start
time), `lock` (held by the job's processes for as long as any of them lives), `log` (its output),
`exit` (its exit status, written last). A restarted operator reads these to re-attach; nothing about
a job lives only in the operator's memory. Each attempt has a directory of its own, so a retry runs a
new job instead of adopting the last attempt's outcome.

Whether the job runs is read from its lock, not from `kill -0 <pid>`: after a reboot or once the pid is
reused, a pid names some other process, while the lock is free as soon as the job's last process is
gone. A signal goes only to the process group recorded at start, and only while the lock is held and
that process is still the one started then (same boot, same start time).

What a record says without a driver's help (not started, lost, failed or cancelled) is read the same way
for every driver (`observe`); only a running job's progress and a finished job's figures are the driver's.
"""

from __future__ import annotations

import re
import secrets
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from vemigrate.api.reasons import Reason
from vemigrate.core.observation import ErrorClass, JobObservation, JobState
from vemigrate.drivers.errors import PermanentError
from vemigrate.drivers.jobfailure import JobFailure
from vemigrate.drivers.ssh import SSHHost

JOBS_DIR = "/var/lib/libvirt/vemigrate/jobs"
_UID = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_REPORT = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
LOG_TAIL_LINES = 40

# A process's start time in clock ticks since boot: field 22 of /proc/<pid>/stat, counted after the
# command name, which is in parentheses and may itself hold spaces.
_STARTTIME = "sed 's/.*) //' \"/proc/$1/stat\" 2>/dev/null | cut -d' ' -f20"
_IDENTITY = f"started() {{ {_STARTTIME}; }}\nboot() {{ cat /proc/sys/kernel/random/boot_id; }}\n"

# In one round trip: makes the job directory, writes job.sh from stdin and starts it in its own
# session (so a kill reaches every process it started), records the pid with the boot id and the
# process's start time, and returns at once; a job that started already (pid exists, or its lock is
# held) is left alone. The lock is taken here, before the job starts, and the job inherits it, so it is
# held without a gap from now until the job's last process ends. $1 is the job directory; nothing else
# is interpolated. Only `setsid` goes to the background, so the pid is its session's.
_START = (
    _IDENTITY + "umask 077\n"
    'mkdir -p "$1" && cd "$1" || exit 1\n'
    "[ -e pid ] && exit 0\n"
    "exec 9>>lock && flock -n 9 || exit 0\n"
    "cat >job.sh.tmp && mv job.sh.tmp job.sh || exit 1\n"
    "setsid sh ./job.sh >log 2>&1 </dev/null &\n"
    'echo "$! $(boot) $(started $!)" >pid.tmp && mv pid.tmp pid\n'
)

# Prints what a reader needs in one round trip: exit status, whether the job's lock is held, whether
# the host restarted since the job started, the log's tail, and once the job has exited the reports it
# wrote ($4 ...), each after the separator $3 and its name (the separator is new at every read, so no
# report's or log's content can pass for one).
_READ = (
    _IDENTITY + 'cd "$1" 2>/dev/null || { echo state=none; exit 0; }\n'
    "[ -e pid ] || { echo state=none; exit 0; }\n"
    "read -r pid booted rest <pid\n"
    '[ "$booted" = "$(boot)" ] || echo rebooted=yes\n'
    # The exit record is looked at again once the lock is found free: the job writes it before its last
    # process lets the lock go, so a job that ended between the two looks is exited, never lost.
    "if [ -e exit ]; then state=exited\n"
    "elif ! flock -n lock true 2>/dev/null; then state=running\n"
    "elif [ -e exit ]; then state=exited\n"
    "else state=lost; fi\n"
    'echo "state=$state"; exited=\n'
    'if [ "$state" = exited ]; then echo "exit=$(cat exit)"; exited=1; fi\n'
    # A log that cannot be read fails the read: its record is not known (never taken as an empty log).
    'echo "--- log"; tail -n "$2" log 2>/dev/null || { echo "cannot read the job\'s log in $1" >&2; exit 1; }\n'
    '[ -n "$exited" ] && [ "$#" -gt 3 ] || exit 0\n'
    "sep=$3; shift 3\n"
    'for f in "$@"; do echo; echo "$sep $f"; cat -- "$f" 2>/dev/null; done; exit 0\n'
)

# Returns when the job is over or after $2 seconds, whichever is first: over once its `exit` record is
# written or its lock is free (its last process is gone: it ended, or was lost). flock blocks on the lock,
# so a job's end is seen at once; the exit record is looked at every second in case something the job
# left behind still holds the lock. Its first line says which: `waited=ended`, `waited=running` (the $2
# seconds passed), or `waited=none`: no job was started here (or flock failed: sysexits codes; its timeout
# is 1, and older util-linux has no -E to choose another).
# Once it is over, the rest of $@ ($3 ...) is `_READ`'s: the job's record follows in the same round trip.
_WAIT_END = (
    r"""
cd "$1" 2>/dev/null && [ -e pid ] || { echo waited=none; exit 0; }
end=$(($(date +%s) + $2))
while [ ! -e exit ]; do
    flock -w 1 lock true 2>/dev/null
    case $? in 0) break ;; 1) ;; *) echo waited=none; exit 0 ;; esac
    [ "$(date +%s)" -lt "$end" ] || { echo waited=running; exit 0; }
done
echo waited=ended
dir=$1; shift 2; set -- "$dir" "$@"
"""
    + _READ
)

# SIGTERM to the job's process group ($2 empty), or to the one process whose pid the job wrote into the
# file $2 once it is checked to belong to the job: in the job's session (field 6 of /proc/<pid>/stat), or
# a child of a process that is (a command the job runs on a terminal of its own). Only while the job
# lives (its lock is held) and the recorded pid is still the process started then; otherwise nothing is
# signalled.
_KILL = (
    _IDENTITY + 'cd "$1" 2>/dev/null || exit 0\n'
    "[ -e exit ] && exit 0\n"
    "read -r pid booted start <pid 2>/dev/null || exit 0\n"
    "flock -n lock true 2>/dev/null && exit 0\n"
    '[ -n "$start" ] && [ "$booted" = "$(boot)" ] && [ "$(started "$pid")" = "$start" ] || exit 0\n'
    # Not `kill -TERM -- -<pgid>`: dash's kill takes no `--` and signalled nothing.
    'if [ -z "$2" ]; then kill -TERM "-$pid" 2>/dev/null; exit 0; fi\n'
    'member=$(cat "$2" 2>/dev/null) || exit 0\n'
    "case $member in ''|*[!0-9]*) exit 0;; esac\n"
    "field() { sed 's/.*) //' \"/proc/$1/stat\" 2>/dev/null | cut -d' ' -f$2; }\n"
    '[ "$(field "$member" 4)" = "$pid" ] || [ "$(field "$(field "$member" 2)" 4)" = "$pid" ] || exit 0\n'
    'kill -TERM "$member" 2>/dev/null; exit 0\n'
)


@dataclass(frozen=True)
class JobRecord:
    state: str  # none | running | exited | lost (the job's processes are gone without an exit status)
    exit_status: int | None
    log_tail: str
    rebooted: bool = False  # the host's boot id changed since the job started
    # The files of the job's directory asked for by `read`, once the job has exited (absent ones empty).
    reports: Mapping[str, str] = field(default_factory=dict)


def migration_dir(uid: str) -> str:
    """Every attempt's job of one migration lives under this directory."""
    if not _UID.match(uid):
        raise PermanentError(Reason.INVALID_UID, f"migration UID {uid!r} cannot name a job directory")
    return f"{JOBS_DIR}/{uid}"


def control_path(uid: str) -> str:
    """The socket of the migration's shared SSH connection from the source to its target (an OpenSSH
    master): made by the first node-to-node command that needs it, used by the jobs and the driver's own
    commands on the target alike, ended by `forget`. About 80 bytes, within a socket path's 108 with the
    suffix ssh adds while it makes one."""
    return f"{migration_dir(uid)}/ssh"


def end_connection(uid: str) -> str:
    """A shell line that ends the migration's shared SSH connection; nothing (and no error) when none is up."""
    return f"ssh -o ControlPath={shlex.quote(control_path(uid))} -O exit _ >/dev/null 2>&1 || true"


def job_dir(uid: str, attempt: int) -> str:
    if attempt < 1:
        raise PermanentError(Reason.INVALID_ATTEMPT, f"attempt {attempt} cannot name a job directory")
    return f"{migration_dir(uid)}/{attempt}"


def script(lines: Sequence[str], *, finally_: Sequence[str] = ()) -> str:
    """A job script: runs the lines in order, stops at the first failure, then the `finally_` lines
    whatever happened (they must not fail), and records the exit status."""
    body = "\n".join(lines)
    after = "".join(f"{line}\n" for line in finally_)
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
        f"{after}"
        'echo "$rc" >exit.tmp && mv exit.tmp exit\n'
    )


def command(argv: Sequence[str]) -> str:
    """One shell line from argv: every word quoted."""
    return shlex.join(argv)


async def start(ssh: SSHHost, uid: str, attempt: int, text: str) -> None:
    """Upload the script and start it detached; a no-op when this job already started."""
    await ssh.run(["sh", "-c", _START, "sh", job_dir(uid, attempt)], input=text)


def _check_reports(reports: Sequence[str]) -> None:
    if any(not _REPORT.match(name) for name in reports):
        raise ValueError(f"job report names {list(reports)!r} are not plain file names")


async def read(ssh: SSHHost, uid: str, attempt: int, reports: Sequence[str] = ()) -> JobRecord:
    """The job's record; with `reports`, also those files of its directory once it has exited (what a
    finished job wrote about itself), in the same round trip."""
    _check_reports(reports)
    sep = f"--- vemigrate-report-{secrets.token_hex(8)}"
    argv = ["sh", "-c", _READ, "sh", job_dir(uid, attempt), str(LOG_TAIL_LINES), sep, *reports]
    return _record((await ssh.run(argv)).stdout, sep)


def _record(out: str, sep: str) -> JobRecord:
    """`_READ`'s answer."""
    head, _, rest = out.partition("--- log\n")
    tail, *found = rest.split(f"\n{sep} ")
    fields = dict(line.split("=", 1) for line in head.splitlines() if "=" in line)
    exit_text = fields.get("exit", "").strip()
    return JobRecord(
        state=fields.get("state", "none").strip(),
        exit_status=int(exit_text) if exit_text.lstrip("-").isdigit() else None,
        log_tail=tail,
        rebooted=fields.get("rebooted", "").strip() == "yes",
        reports={name: text for name, _, text in (part.partition("\n") for part in found)},
    )


async def wait_end(
    ssh: SSHHost, uid: str, attempt: int, seconds: float, reports: Sequence[str] = ()
) -> JobRecord | bool | None:
    """Once the job is over (its exit record written or its processes gone), its record as `read` gives
    it, read in the same round trip (True if that read failed); False when it still runs after `seconds`;
    None when there is nothing to wait for (no such job, no session to spare)."""
    _check_reports(reports)
    sep = f"--- vemigrate-report-{secrets.token_hex(8)}"
    wait = [job_dir(uid, attempt), str(max(1, int(seconds))), str(LOG_TAIL_LINES), sep, *reports]
    done = await ssh.wait(["sh", "-c", _WAIT_END, "sh", *wait], seconds)
    out = done.stdout if done else ""
    waited, _, rest = out.partition("\n")
    match waited.strip():
        case "waited=ended":
            # Read while the job is over: a record that says it runs was not read whole (a failed read).
            record = _record(rest, sep)
            return record if done is not None and done.ok and record.state not in ("running", "none") else True
        case "waited=running":
            return False
    return None


def observe(record: JobRecord, job: str, classify: Callable[[int | None, str], JobFailure]) -> JobObservation | None:
    """What a job's record says by itself: not started; lost (its processes are gone without an exit
    status: retried, and the message says whether the host restarted); or failed or cancelled, as
    `classify` reads its exit status and log. None while it runs and once it succeeded: how far it got is
    the driver's to read. `job` names it in the message ("prlctl migrate on node-a")."""
    if record.state == "none":
        return JobObservation(state=JobState.NONE)
    if record.state == "running":
        return None
    if record.state == "lost":
        why = "the host restarted since it started" if record.rebooted else "its processes are gone"
        return JobObservation(
            state=JobState.FAILED,
            error_reason=Reason.JOB_LOST,
            error_message=f"{job} ended without an exit status: {why}",
            error_class=ErrorClass.RETRYABLE,
        )
    if record.exit_status == 0:
        return None
    failure = classify(record.exit_status, record.log_tail)
    return JobObservation(
        state=JobState.CANCELLED if failure.aborted else JobState.FAILED,
        error_reason=failure.reason,
        error_message=failure.message,
        error_class=failure.error_class,
    )


async def kill(ssh: SSHHost, uid: str, attempt: int, member: str = "") -> None:
    """SIGTERM to every process of the job (its session), or with `member` to the one process whose pid
    the job wrote into that file of its directory; only when the job provably still runs."""
    await ssh.run(["sh", "-c", _KILL, "sh", job_dir(uid, attempt), member])


async def forget(ssh: SSHHost, uid: str) -> None:
    """End the migration's shared SSH connection, when there is one, and remove the records of every
    attempt of this migration."""
    await ssh.run(["sh", "-c", f'{end_connection(uid)}; rm -rf -- "$1"', "sh", migration_dir(uid)])
