"""hostjob's scripts, run with a local sh: one round trip makes the directory, writes the script and
starts it in a session of its own; a second start leaves the running job alone; whether the job runs
comes from its lock, and a signal reaches only the process recorded at start."""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from vemigrate.drivers import hostjob
from vemigrate.drivers.ssh import Completed

pytestmark = pytest.mark.unit


def _start(directory: Path, text: str) -> None:
    subprocess.run(["sh", "-c", hostjob._START, "sh", str(directory)], input=text, text=True, check=True, timeout=10)


def _read(directory: Path) -> dict[str, str]:
    out = subprocess.run(
        ["sh", "-c", hostjob._READ, "sh", str(directory), "5"], capture_output=True, text=True, check=True, timeout=10
    ).stdout
    head = out.partition("--- log\n")[0]
    return dict(line.split("=", 1) for line in head.splitlines())


def _kill(directory: Path, member: str = "") -> None:
    subprocess.run(["sh", "-c", hostjob._KILL, "sh", str(directory), member], check=True, timeout=10)


def _wait_exit(directory: Path) -> str:
    deadline = time.monotonic() + 10
    while not (directory / "exit").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return (directory / "exit").read_text().strip()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].split()[0] != "Z"


def test_start_writes_and_starts_once_in_its_own_session(tmp_path: Path) -> None:
    job = tmp_path / "jobs" / "uid-1" / "1"
    _start(job, hostjob.script(["sleep 1", "echo first"]))
    pid = int((job / "pid").read_text().split()[0])
    assert os.getsid(pid) == pid, "the recorded pid leads its own session, so a kill reaches the whole job"
    assert (job / "pid").stat().st_mode & 0o077 == 0 and job.stat().st_mode & 0o077 == 0, "the job's files are private"
    assert _read(job)["state"] == "running"
    _start(job, hostjob.script(["echo second"]))  # already started: nothing is replaced or run again
    assert _wait_exit(job) == "0"
    assert (job / "log").read_text().split() == ["first"]
    assert "echo first" in (job / "job.sh").read_text()
    assert _read(job) == {"state": "exited", "exit": "0"}


def test_each_attempt_has_a_directory_of_its_own() -> None:
    assert hostjob.job_dir("uid-1", 1) != hostjob.job_dir("uid-1", 2)
    assert hostjob.job_dir("uid-1", 2).startswith(hostjob.migration_dir("uid-1") + "/")


def test_a_job_whose_processes_are_gone_is_lost_even_when_its_pid_lives_again(tmp_path: Path) -> None:
    """After a reboot or once pids wrap, the recorded pid may name another process: the lock tells."""
    job = tmp_path / "job"
    _start(job, hostjob.script(["sleep 30"]))
    pid, boot, start = (job / "pid").read_text().split()
    os.killpg(int(pid), signal.SIGKILL)  # the job dies without writing its exit status
    deadline = time.monotonic() + 5
    while _alive(int(pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    stranger = subprocess.Popen(["sleep", "30"], start_new_session=True)  # someone else's process
    try:
        (job / "pid").write_text(f"{stranger.pid} {boot} {start}\n")  # as if the pid were reused
        assert _read(job)["state"] == "lost"
        _kill(job)
        time.sleep(0.2)
        assert stranger.poll() is None, "a process that is not the job's was signalled"
    finally:
        stranger.kill()
        stranger.wait()


def test_a_reused_pid_is_not_signalled_while_the_job_lives(tmp_path: Path) -> None:
    """The lock is held (the job runs), but the recorded pid now names another process (another
    start time): no signal at all, rather than one to a stranger."""
    job = tmp_path / "job"
    _start(job, hostjob.script(["sleep 30"]))
    pid, boot, _ = (job / "pid").read_text().split()
    stranger = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        (job / "pid").write_text(f"{stranger.pid} {boot} 1\n")
        _kill(job)
        time.sleep(0.2)
        assert stranger.poll() is None, "a stranger's process group was signalled"
        assert _alive(int(pid)), "nothing could be proven, so nothing was signalled"
        assert _read(job)["state"] == "running"
    finally:
        stranger.kill()
        stranger.wait()
        os.killpg(int(pid), signal.SIGKILL)


def test_kill_stops_the_job_and_a_member_only_when_it_is_the_jobs(tmp_path: Path) -> None:
    job = tmp_path / "job"
    _start(job, hostjob.script(["sleep 30 & p=$!; echo $p >member.pid; wait $p"]))
    deadline = time.monotonic() + 5
    while not (job / "member.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    stranger = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        (job / "stranger.pid").write_text(str(stranger.pid))
        _kill(job, "stranger.pid")
        time.sleep(0.2)
        assert stranger.poll() is None, "a pid file naming a process outside the job was obeyed"
        member = int((job / "member.pid").read_text())
        _kill(job, "member.pid")
        assert _wait_exit(job) != "0", "the job's own member was stopped, and the job failed"
        assert not _alive(member)
    finally:
        stranger.kill()
        stranger.wait()


def test_a_job_started_before_the_hosts_last_boot_is_reported_as_such(tmp_path: Path) -> None:
    job = tmp_path / "job"
    _start(job, hostjob.script(["true"]))
    _wait_exit(job)
    fields = (job / "pid").read_text().split()  # a job this short may be gone before its start time is read
    fields[1] = "00000000-0000-0000-0000-000000000000"
    (job / "pid").write_text(" ".join(fields) + "\n")
    assert _read(job)["rebooted"] == "yes"


def test_kill_stops_every_process_of_the_job(tmp_path: Path) -> None:
    """With the host's own sh (dash on Debian, whose kill takes no `--`): the whole group stops."""
    job = tmp_path / "job"
    _start(job, hostjob.script(["sleep 30 & p=$!; echo $p >member.pid; wait $p"]))
    deadline = time.monotonic() + 5
    while not (job / "member.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    leader, member = int((job / "pid").read_text().split()[0]), int((job / "member.pid").read_text())
    _kill(job)
    deadline = time.monotonic() + 5
    while (_alive(leader) or _alive(member)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(leader) and not _alive(member)
    assert _read(job)["state"] == "lost", "killed before it could write its exit status"


@pytest.mark.parametrize(("lines", "status"), [(["echo ran"], "0"), (["echo ran", "exit 7", "echo never"], "7")])
def test_the_finally_lines_run_whatever_happened_and_keep_the_status(
    tmp_path: Path, lines: list[str], status: str
) -> None:
    """A job's shared SSH connection is closed by its `finally_` lines, on success and failure alike; they
    run before the exit record, so a job seen over has nothing of it still running."""
    job = tmp_path / "jobs" / "uid-1" / "1"
    _start(job, hostjob.script(lines, finally_=["[ -e exit ] || echo closed >closed"]))
    assert _wait_exit(job) == status
    assert (job / "closed").read_text() == "closed\n"
    assert (job / "log").read_text().split() == ["ran"]


class _ReadFailed(Exception):
    pass


class _Sh:
    """hostjob.read's one use of an SSH host: run argv, here with the local sh; a failed command raises,
    as SSHHost.run's does unless told `check=False`."""

    async def run(self, argv: list[str], *, check: bool = True, **_: object) -> Completed:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        if check and done.returncode != 0:
            raise _ReadFailed(f"the read's shell exited {done.returncode}: {done.stderr}")
        return Completed(tuple(argv), done.returncode, done.stdout, done.stderr)

    async def wait(self, argv: list[str], seconds: float) -> Completed:
        return await self.run(argv, check=False)


def test_a_finished_jobs_reports_come_with_its_record_byte_for_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hostjob, "JOBS_DIR", str(tmp_path))
    job = tmp_path / "uid-1" / "1"
    # Reports that look like the separators a reader might use, and a log without a final newline.
    stats = "Time elapsed: 12 ms\n--- log\n--- events\n"
    lines = ["sleep 1", f"printf %s {shlex.quote(stats)} >stats", "printf 'a\\nb'", "printf 'x' >events"]
    _start(job, hostjob.script(lines))
    running = asyncio.run(hostjob.read(_Sh(), "uid-1", 1, ["stats", "events"]))  # type: ignore[arg-type]
    assert _wait_exit(job) == "0"
    record = asyncio.run(hostjob.read(_Sh(), "uid-1", 1, ["stats", "events", "absent"]))  # type: ignore[arg-type]
    assert record.state == "exited" and record.exit_status == 0
    assert record.log_tail == "a\nb"
    assert record.reports == {"stats": stats, "events": "x", "absent": ""}
    assert running.state == "running" and running.reports == {}, "a running job's reports are not read"
    with pytest.raises(ValueError):
        asyncio.run(hostjob.read(_Sh(), "uid-1", 1, ["../secret"]))  # type: ignore[arg-type]


def test_a_job_whose_log_cannot_be_read_is_not_read_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A log that cannot be read (a directory in its place, an I/O error) fails the whole read: the record
    is then unknown and the migration waits, rather than taking an exit status with an empty log."""
    monkeypatch.setattr(hostjob, "JOBS_DIR", str(tmp_path))
    job = tmp_path / "uid-1" / "1"
    _start(job, hostjob.script(["echo ran"]))
    assert _wait_exit(job) == "0"
    assert asyncio.run(hostjob.read(_Sh(), "uid-1", 1, ["stats"])).log_tail == "ran\n"  # type: ignore[arg-type]
    (job / "log").rename(job / "log.kept")
    (job / "log").mkdir()
    for reports in ((), ("stats",)):
        with pytest.raises(_ReadFailed, match="cannot read the job's log"):
            asyncio.run(hostjob.read(_Sh(), "uid-1", 1, reports))  # type: ignore[arg-type]


def test_forget_ends_the_shared_connection_then_removes_every_attempt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The migration's shared SSH connection is asked to end (`ssh -O exit` on its socket; no error when
    there is none), and every attempt's directory goes; the other migrations' stay."""
    jobs = tmp_path / "jobs"
    monkeypatch.setattr(hostjob, "JOBS_DIR", str(jobs))
    for attempt in (1, 2):
        (jobs / "uid-1" / str(attempt)).mkdir(parents=True)
        (jobs / "uid-1" / str(attempt) / "log").write_text("x")
    (jobs / "uid-2" / "1").mkdir(parents=True)
    fake = tmp_path / "bin" / "ssh"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$*" >>{tmp_path}/calls\nexit 255\n')  # no master there: fails
    fake.chmod(0o700)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    asyncio.run(hostjob.forget(_Sh(), "uid-1"))  # type: ignore[arg-type]
    assert (tmp_path / "calls").read_text().splitlines() == [
        f"-o ControlPath={hostjob.control_path('uid-1')} -O exit _"
    ]
    assert not (jobs / "uid-1").exists() and (jobs / "uid-2" / "1").is_dir()


def test_the_long_poll_returns_the_ended_jobs_record_with_its_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The poll that sees the job end reads its record in the same round trip, as `read` would then; a job
    still running after the wait, or none at all, gives no record."""
    monkeypatch.setattr(hostjob, "JOBS_DIR", str(tmp_path))
    assert asyncio.run(hostjob.wait_end(_Sh(), "uid-1", 1, 1)) is None, "no job: nothing to wait on"  # type: ignore[arg-type]
    _start(tmp_path / "uid-1" / "1", hostjob.script(["sleep 3", "printf 'took 2s' >stats", "echo moved", "exit 3"]))
    assert asyncio.run(hostjob.wait_end(_Sh(), "uid-1", 1, 1, ["stats"])) is False, "still running after 1 s"  # type: ignore[arg-type]
    ended = asyncio.run(hostjob.wait_end(_Sh(), "uid-1", 1, 10, ["stats"]))  # type: ignore[arg-type]
    assert isinstance(ended, hostjob.JobRecord)
    assert (ended.state, ended.exit_status, ended.log_tail) == ("exited", 3, "moved\n")
    assert ended.reports == {"stats": "took 2s"}
    assert ended == asyncio.run(hostjob.read(_Sh(), "uid-1", 1, ["stats"])), "what a read says of it"  # type: ignore[arg-type]


def test_a_long_poll_whose_read_fails_only_says_the_job_is_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job ended but its log cannot be read: the poll wakes the pass (True) with no record, and the
    pass's own read then fails as it should (the migration waits, its record unknown)."""
    monkeypatch.setattr(hostjob, "JOBS_DIR", str(tmp_path))
    job = tmp_path / "uid-1" / "1"
    _start(job, hostjob.script(["echo ran"]))
    assert _wait_exit(job) == "0"
    (job / "log").rename(job / "log.kept")
    (job / "log").mkdir()
    assert asyncio.run(hostjob.wait_end(_Sh(), "uid-1", 1, 5)) is True  # type: ignore[arg-type]


def test_a_lost_jobs_long_poll_returns_it_lost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hostjob, "JOBS_DIR", str(tmp_path))
    job = tmp_path / "uid-1" / "1"
    _start(job, hostjob.script(["sleep 30"]))
    os.killpg(int((job / "pid").read_text().split()[0]), signal.SIGKILL)  # gone without an exit status
    ended = asyncio.run(hostjob.wait_end(_Sh(), "uid-1", 1, 10))  # type: ignore[arg-type]
    assert isinstance(ended, hostjob.JobRecord) and ended.state == "lost" and ended.exit_status is None


def test_a_job_that_ends_between_the_reads_two_looks_is_exited_not_lost(tmp_path: Path) -> None:
    """The read looks for the exit record, then at the lock. A job that writes its exit record and ends
    between the two leaves the lock free and the record there: it exited (seen in a bench run, where the
    operator's read raced the job's end and called it lost: a false NeedsAttention). A `flock` first on
    the PATH writes the record just before the real one runs, which is that moment made certain."""
    job = tmp_path / "uid-1" / "1"
    _start(job, hostjob.script(["sleep 30"]))
    os.killpg(int((job / "pid").read_text().split()[0]), signal.SIGKILL)  # the lock is free, no record yet
    wrapper = tmp_path / "bin" / "flock"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\necho 0 >exit\nexec {shlex.quote(shutil.which("flock") or "flock")} "$@"\n')
    wrapper.chmod(0o755)
    out = subprocess.run(
        ["sh", "-c", hostjob._READ, "sh", str(job), "5"],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
        env={**os.environ, "PATH": f"{wrapper.parent}:{os.environ['PATH']}"},
    ).stdout
    fields = dict(line.split("=", 1) for line in out.partition("--- log\n")[0].splitlines())
    assert fields["state"] == "exited" and fields["exit"] == "0", out
