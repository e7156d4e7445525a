"""Why a migration job on a host failed, and whether another attempt may pass.

The job's own exit statuses come first: they are codes (a file in the way, a checksum that differs,
ssh's 255 for a connection that failed or dropped). `virsh` prints no error code, only libvirt's error
text, whose prefixes are fixed per error (`internal error: client socket is closed` is the RPC layer
losing its peer, `Cannot recv data` a system error on the socket, `unsupported configuration` a
refusal); those are matched next, most specific first. Anything else is `MigrationFailed`, not
retried, with the tool's own message kept.

`JobFailure` is what either driver makes of a failed job (the prlctl driver reads `prlctl migrate`'s
exit codes and words in drivers/prlctl_output.py); drivers/hostjob.py `observe` reports it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vemigrate.api.reasons import Reason
from vemigrate.core.observation import ErrorClass

# The job scripts' own exit statuses.
EXIT_IN_THE_WAY = 3
EXIT_CHECKSUM = 4
EXIT_SSH = 255  # ssh: the connection failed or dropped (remote commands' statuses pass through)

RETRYABLE, PERMANENT = ErrorClass.RETRYABLE, ErrorClass.PERMANENT

# (pattern over the job's log, reason, class): most specific first. Each pattern is libvirt's, QEMU's,
# ssh's or coreutils' own wording for one situation.
_TABLE = (
    ("no space left on device|not enough space|disk quota exceeded", Reason.NO_SPACE, PERMANENT),
    ("host key verification failed|remote host identification has changed", Reason.HOST_KEY_MISMATCH, PERMANENT),
    (r"permission denied \(publickey|authentication failed", Reason.AUTHENTICATION_FAILED, PERMANENT),
    ("domain '[^']*' already exists|already exists with uuid", Reason.NAME_IN_USE, PERMANENT),
    ("cannot get interface mtu|network '[^']*' not found|bridge .* not found", Reason.NETWORK_MISSING, PERMANENT),
    (
        "guest cpu doesn't match|cpu is incompatible|incompatible cpu|does not provide required features",
        Reason.CPU_INCOMPATIBLE,
        PERMANENT,
    ),
    ("unsupported configuration|operation not supported|argument unsupported", Reason.UNSUPPORTED, PERMANENT),
    (
        "connection refused|failed to connect to the hypervisor|unable to connect to server",
        Reason.PEER_UNAVAILABLE,
        RETRYABLE,
    ),
    ("keepalive|connection timed out|operation timed out|timed out during operation", Reason.TIMEOUT, RETRYABLE),
    (
        "client socket is closed|end of file while reading data|cannot recv data|cannot write data|"
        "connection reset|broken pipe|connection closed|no route to host|network is unreachable|"
        "unable to read from monitor",
        Reason.CONNECTION_LOST,
        RETRYABLE,
    ),
)
_PATTERNS = tuple((re.compile(pattern, re.IGNORECASE), reason, cls) for pattern, reason, cls in _TABLE)


@dataclass(frozen=True)
class JobFailure:
    reason: Reason
    error_class: ErrorClass
    message: str
    aborted: bool = False  # stopped on request (an abort, a cancel), not failed


def error_line(log_tail: str) -> str:
    """The last line that reads like an error, else the last line."""
    lines = [line.split("\r")[-1].strip() for line in log_tail.splitlines()]
    lines = [line for line in lines if line]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["(no output)"])[-1]


def classify(exit_status: int | None, log_tail: str) -> JobFailure:
    line = error_line(log_tail)[:1000]
    lowered = line.lower()
    if "operation aborted" in lowered or "migration job: canceled" in lowered:
        return JobFailure(Reason.ABORTED, PERMANENT, line, aborted=True)
    if exit_status == EXIT_IN_THE_WAY:
        return JobFailure(Reason.TARGET_PATH_IN_USE, PERMANENT, line)
    for pattern, reason, error_class in _PATTERNS:
        if pattern.search(log_tail):
            found = next((x for x in reversed(log_tail.splitlines()) if pattern.search(x)), line)
            return JobFailure(reason, error_class, found.split("\r")[-1].strip()[:1000] or line)
    if exit_status == EXIT_CHECKSUM:
        return JobFailure(Reason.CHECKSUM_MISMATCH, PERMANENT, line)
    if exit_status == EXIT_SSH:
        return JobFailure(Reason.CONNECTION_LOST, RETRYABLE, line)
    return JobFailure(Reason.MIGRATION_FAILED, PERMANENT, line)
