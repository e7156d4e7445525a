"""A failed job's reason and whether `spec.retry` retries it, from the job's exit status and the words
libvirt, QEMU, ssh and coreutils print (each log line below is one such tool's own text)."""

from __future__ import annotations

import pytest

from vemigrate.core.observation import ErrorClass
from vemigrate.drivers.jobfailure import classify

pytestmark = pytest.mark.unit
R, P = ErrorClass.RETRYABLE, ErrorClass.PERMANENT


@pytest.mark.parametrize(
    ("exit_status", "log", "reason", "error_class"),
    [
        # The link to the target cut mid-transfer (seen on the lab), and its neighbours.
        (1, "Migration: [ 24 %]error: internal error: client socket is closed", "ConnectionLost", R),
        (1, "error: End of file while reading data: Input/output error", "ConnectionLost", R),
        (1, "error: Cannot recv data: Connection reset by peer", "ConnectionLost", R),
        (1, "error: operation failed: migration out job: Unable to write to socket: Broken pipe", "ConnectionLost", R),
        (1, "error: internal error: connection closed due to keepalive timeout", "Timeout", R),
        (1, "error: failed to connect to the hypervisor\nerror: Connection refused", "PeerUnavailable", R),
        (255, "ssh: connect to host 10.0.0.2 port 22: Connection timed out", "Timeout", R),
        (255, "client_loop: send disconnect: Broken pipe", "ConnectionLost", R),
        (255, "something ssh said that nobody wrote down", "ConnectionLost", R),
        # Refusals that will not change by themselves.
        (1, "tee: /srv/ves/u/vda.qcow2.part: No space left on device\nerror: checksum mismatch for /x", "NoSpace", P),
        (4, "error: checksum mismatch for /var/lib/libvirt/images/web1.qcow2", "ChecksumMismatch", P),
        (3, "error: /var/lib/libvirt/images/web1.qcow2 already exists on the target", "TargetPathInUse", P),
        (1, "error: operation failed: domain 'web1' already exists with uuid 1234", "NameInUse", P),
        (1, "error: Cannot get interface MTU on 'vmbr0': No such device", "NetworkMissing", P),
        (
            1,
            "error: the CPU is incompatible with host CPU: Host CPU does not provide required features: avx512f",
            "CPUIncompatible",
            P,
        ),
        (1, "error: unsupported configuration: Migration without shared storage is unsafe", "Unsupported", P),
        (255, "Host key verification failed.", "HostKeyMismatch", P),
        (255, "root@10.0.0.2: Permission denied (publickey).", "AuthenticationFailed", P),
        # Unknown: not retried, the tool's message kept.
        (1, "error: something new went wrong", "MigrationFailed", P),
    ],
)
def test_reasons_and_retries(exit_status: int, log: str, reason: str, error_class: ErrorClass) -> None:
    failure = classify(exit_status, log)
    assert (failure.reason, failure.error_class) == (reason, error_class)
    assert failure.message and failure.message in log.replace("\r", "\n")


def test_an_abort_is_not_a_failure() -> None:
    failure = classify(1, "Migration: [ 40 %]\rerror: operation aborted: migration out job: canceled by client")
    assert failure.aborted and failure.reason == "Aborted"


def test_the_message_is_the_line_that_says_why() -> None:
    log = "Migration: [ 10 %]\rMigration: [ 24 %]error: internal error: client socket is closed\n"
    assert classify(1, log).message == "Migration: [ 24 %]error: internal error: client socket is closed"
