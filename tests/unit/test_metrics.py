"""The metrics the alerts are built on count what they say, once, and start at zero."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from vemigrate import __version__, metrics
from vemigrate.api.migration import Failure, MigrationStatus, Mode, Phase, PhaseTransition

UID = "0b9c7a34-5d1e-4f9a-8f2e-1c3d5e7f9a0b"


def _value(name: str, **labels: str) -> float:
    value = metrics.REGISTRY.get_sample_value(name, labels)
    assert value is not None, f"no series {name}{labels}"
    return value


def _status(
    phase: Phase, *, reason: str | None = None, transitions: Sequence[tuple[Phase, datetime]] = ()
) -> MigrationStatus:
    failure = Failure(phase=Phase.TRANSFERRING, reason=reason, message="", retryable=True) if reason else None
    return MigrationStatus(
        phase=phase,
        mode=Mode.LIVE,
        driver="libvirt",
        failure=failure,
        phase_transitions=[PhaseTransition(phase=p, time=t) for p, t in transitions],
    )


@pytest.fixture(autouse=True)
def _empty_queue() -> None:
    metrics._ready.clear()


def test_series_that_alerts_take_increase_of_exist_at_zero_before_anything_happened() -> None:
    # increase() sees nothing in a series whose first sample is already 1: these must exist first.
    for driver in ("libvirt", "prlctl", "unknown"):
        for mode in ("Live", "Offline", "Unknown"):
            for result in ("Succeeded", "Failed", "Cancelled"):
                _value("vemigrate_migrations_total", driver=driver, mode=mode, result=result)
    for reason in ("ProgressTimeout", "CompletionTimeout"):
        _value("vemigrate_migration_timeouts_total", reason=reason)
    for kind in ("migration", "host"):
        for outcome in ("ok", "error"):
            _value("vemigrate_reconcile_passes_total", kind=kind, outcome=outcome)


def test_the_build_and_the_process_are_exported() -> None:
    assert _value("vemigrate_build_info", version=__version__) == 1
    # The process collector reads this very process (/proc/self): real figures, not zeros.
    assert _value("process_resident_memory_bytes") > 10 * 2**20
    assert _value("process_open_fds") >= 3
    assert time.time() - 86400 < _value("process_start_time_seconds") <= time.time()
    major, minor, patch = (str(part) for part in sys.version_info[:3])
    info = {"implementation": "CPython", "major": major, "minor": minor, "patchlevel": patch}
    assert _value("python_info", **info, version=f"{major}.{minor}.{patch}") == 1


def test_a_failed_migration_counts_once() -> None:
    before = _value("vemigrate_migrations_total", driver="libvirt", mode="Live", result="Failed")
    rolling = _status(Phase.ROLLING_BACK, reason="MigrationFailed")
    failed = _status(Phase.FAILED, reason="MigrationFailed")
    metrics.record_pass(UID, rolling, failed, None)
    metrics.record_pass(UID, failed, failed, None)  # the passes after it see a final phase already
    assert _value("vemigrate_migrations_total", driver="libvirt", mode="Live", result="Failed") == before + 1


@pytest.mark.parametrize("reason", ["ProgressTimeout", "CompletionTimeout"])
def test_a_timeout_counts_once_on_the_pass_that_rolls_back(reason: str) -> None:
    before = _value("vemigrate_migration_timeouts_total", reason=reason)
    transferring = _status(Phase.TRANSFERRING)
    rolling = _status(Phase.ROLLING_BACK, reason=reason)
    metrics.record_pass(UID, transferring, rolling, None)
    metrics.record_pass(UID, rolling, rolling, None)  # still rolling back: no second count
    metrics.record_pass(UID, rolling, _status(Phase.QUEUED, reason=reason), None)  # the retry waits
    assert _value("vemigrate_migration_timeouts_total", reason=reason) == before + 1


def test_other_rollbacks_are_no_timeouts() -> None:
    before = {
        r: _value("vemigrate_migration_timeouts_total", reason=r) for r in ("ProgressTimeout", "CompletionTimeout")
    }
    metrics.record_pass(UID, _status(Phase.TRANSFERRING), _status(Phase.ROLLING_BACK, reason="Cancelled"), None)
    metrics.record_pass(UID, _status(Phase.TRANSFERRING), _status(Phase.ROLLING_BACK, reason="MigrationFailed"), None)
    assert {r: _value("vemigrate_migration_timeouts_total", reason=r) for r in before} == before


def _wait() -> float:
    return _value("vemigrate_queue_longest_wait_seconds")


def test_queue_wait_is_the_longest_ready_wait_and_ends_when_admitted() -> None:
    now = datetime.now(UTC)
    assert _wait() == 0
    metrics.record_pass(
        UID, None, _status(Phase.QUEUED, transitions=[(Phase.QUEUED, now - timedelta(seconds=500))]), None
    )
    metrics.record_pass(
        "other", None, _status(Phase.QUEUED, transitions=[(Phase.QUEUED, now - timedelta(seconds=90))]), None
    )
    assert 500 <= _wait() < 510
    # Queued -> Validating -> (rolled back, retried) -> Queued again: the last stint counts.
    again = [(Phase.QUEUED, now - timedelta(hours=5)), (Phase.VALIDATING, now - timedelta(hours=4))]
    metrics.record_pass(
        UID, None, _status(Phase.QUEUED, transitions=[*again, (Phase.QUEUED, now - timedelta(seconds=200))]), None
    )
    assert 200 <= _wait() < 210
    metrics.record_pass(UID, None, _status(Phase.VALIDATING), None)
    assert 90 <= _wait() < 100
    metrics.record_pass("other", None, _status(Phase.CANCELLED), None)  # e.g. deleted while queued
    assert _wait() == 0


def test_waiting_for_the_window_or_a_backoff_is_not_counted_and_the_wait_starts_when_it_ends() -> None:
    now = datetime.now(UTC)
    queued = _status(Phase.QUEUED, transitions=[(Phase.QUEUED, now - timedelta(days=3))])
    metrics.record_pass(UID, None, queued, now + timedelta(hours=1))  # spec.notBefore ahead
    assert _wait() == 0
    metrics.record_pass(UID, None, queued, now - timedelta(seconds=60))  # the window opened a minute ago
    assert 60 <= _wait() < 70
    backoff = queued.model_copy(update={"next_attempt_time": now + timedelta(seconds=30)})
    metrics.record_pass(UID, None, backoff, None)
    assert _wait() == 0
    metrics.record_pass(UID, None, backoff.model_copy(update={"next_attempt_time": now - timedelta(seconds=40)}), None)
    assert 40 <= _wait() < 50


def test_a_queue_entry_no_pass_refreshes_is_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    now = datetime.now(UTC)
    metrics.record_pass(
        UID, None, _status(Phase.QUEUED, transitions=[(Phase.QUEUED, now - timedelta(seconds=30))]), None
    )
    assert _wait() > 0
    monkeypatch.setattr(metrics, "_QUEUE_FRESH_SECONDS", -1.0)  # as if its last pass were long ago
    assert _wait() == 0
    assert UID not in metrics._ready


def test_a_deleted_host_leaves_no_reachability_series() -> None:
    metrics.HOST_REACHABLE.labels(namespace="prod", host="node-z").set(0)
    assert _value("vemigrate_host_reachable", namespace="prod", host="node-z") == 0
    metrics.forget_host("prod", "node-z")
    assert (
        metrics.REGISTRY.get_sample_value("vemigrate_host_reachable", {"namespace": "prod", "host": "node-z"}) is None
    )
    metrics.forget_host("prod", "never-probed")  # no error


def test_migrations_per_phase_follow_the_objects_at_every_scrape() -> None:
    """Read when scraped, not when a pass runs: after the last migration ends no pass comes, and the
    gauge must still move it out of its old phase."""
    phases = ["Transferring", "Queued", "Queued"]
    metrics.count_phases(lambda: phases)
    assert _value("vemigrate_migrations_in_phase", phase="Queued") == 2
    assert _value("vemigrate_migrations_in_phase", phase="Transferring") == 1
    phases[0] = "Succeeded"  # what the watch brings into kopf's index; no pass runs
    assert _value("vemigrate_migrations_in_phase", phase="Transferring") == 0
    assert _value("vemigrate_migrations_in_phase", phase="Succeeded") == 1


def _failed(namespace: str, name: str, reason: str) -> float | None:
    labels = {"namespace": namespace, "name": name, "reason": reason}
    return metrics.REGISTRY.get_sample_value("vemigrate_migration_failed", labels)


def test_a_failed_object_is_one_series_until_it_is_deleted_or_re_created_not_failed() -> None:
    metrics.track_failed("prod", "vm1", "PreflightFailed")
    metrics.track_failed("prod", "vm1", "PreflightFailed")  # every later watch event of the object
    metrics.track_failed("dev", "vm1", "NoSpace")
    assert _failed("prod", "vm1", "PreflightFailed") == 1
    assert _failed("dev", "vm1", "NoSpace") == 1
    metrics.track_failed("prod", "vm1", None)  # deleted
    assert _failed("prod", "vm1", "PreflightFailed") is None
    assert _failed("dev", "vm1", "NoSpace") == 1
    metrics.track_failed("dev", "vm1", "HostUnreachable")  # re-created and failed otherwise: one series
    assert _failed("dev", "vm1", "NoSpace") is None
    assert _failed("dev", "vm1", "HostUnreachable") == 1
    metrics.track_failed("dev", "vm1", None)
    metrics.track_failed("dev", "never-failed", None)  # no error
    assert not [s for f in metrics.REGISTRY.collect() if f.name == "vemigrate_migration_failed" for s in f.samples]
