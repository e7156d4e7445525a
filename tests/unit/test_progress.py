"""Progress, deadlines and backoff."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.builders import GIB, T0, later
from vemigrate.api.migration import Progress, Timeouts
from vemigrate.core import deadlines, progress
from vemigrate.core.observation import JobStats


@pytest.mark.parametrize(
    ("stats", "percent"),
    [
        (JobStats(bytes_processed=0, bytes_total=100), 0),
        (JobStats(bytes_processed=50, bytes_total=100), 50),
        (JobStats(bytes_processed=50, bytes_remaining=25, bytes_total=100), 75),
        (JobStats(bytes_processed=100, bytes_remaining=0, bytes_total=100), 99),  # not done until the job says so
        (JobStats(bytes_processed=10), 0),  # no total: nothing to divide by
    ],
)
def test_percent_from_counters(stats: JobStats, percent: int) -> None:
    assert progress.advance(None, stats, T0).percent == percent


def test_percent_never_goes_backwards_when_a_live_pass_resends_pages() -> None:
    first = progress.advance(None, JobStats(bytes_processed=80, bytes_remaining=20, bytes_total=100), T0)
    # Dirty pages: remaining grows again, total grows.
    second = progress.advance(first, JobStats(bytes_processed=90, bytes_remaining=60, bytes_total=150), later(1))
    assert first.percent == 80
    assert second.percent == 80


def test_last_progress_time_moves_only_when_bytes_move() -> None:
    first = progress.advance(None, JobStats(bytes_processed=10, bytes_total=100), T0)
    stalled = progress.advance(first, JobStats(bytes_processed=10, bytes_total=100), later(30))
    moved = progress.advance(stalled, JobStats(bytes_processed=20, bytes_total=100), later(40))
    assert stalled.last_progress_time == T0
    assert moved.last_progress_time == later(40)


def test_eta_accounts_for_the_dirty_rate() -> None:
    first = progress.advance(None, JobStats(bytes_processed=0, bytes_total=100 * GIB), T0)
    # 1 GiB/s sent, 0.5 GiB/s dirtied: the rest (99 GiB) shrinks at 0.5 GiB/s.
    second = progress.advance(
        first,
        JobStats(bytes_processed=GIB, bytes_remaining=99 * GIB, dirty_rate_bytes_per_second=GIB // 2),
        later(1),
    )
    assert second.eta_seconds == 198
    # Dirtied faster than sent: no honest ETA.
    third = progress.advance(
        second,
        JobStats(bytes_processed=2 * GIB, bytes_remaining=99 * GIB, dirty_rate_bytes_per_second=2 * GIB),
        later(2),
    )
    assert third.eta_seconds is None


def test_completed_is_100_percent() -> None:
    done = progress.completed(Progress(percent=40), JobStats(bytes_processed=5), T0)
    assert (done.percent, done.bytes_remaining, done.eta_seconds) == (100, 0, 0)


@given(st.lists(st.tuples(st.integers(0, 10**12), st.none() | st.integers(0, 10**12), st.integers(0, 10**12))))
def test_percent_is_monotonic_and_bounded(samples: list[tuple[int, int | None, int]]) -> None:
    current: Progress | None = None
    now = T0
    for processed, remaining, total in samples:
        now += timedelta(seconds=1)
        nxt = progress.advance(
            current, JobStats(bytes_processed=processed, bytes_remaining=remaining, bytes_total=total), now
        )
        assert 0 <= nxt.percent <= 99
        assert current is None or nxt.percent >= current.percent
        current = nxt


@pytest.mark.parametrize(
    ("attempt", "base", "wait"),
    [(1, 30, 30), (2, 30, 60), (3, 30, 120), (10, 30, 3600), (1, 7200, 3600)],
)
def test_backoff_doubles_and_is_capped(attempt: int, base: int, wait: int) -> None:
    assert deadlines.backoff(attempt, base) == timedelta(seconds=wait)


@pytest.mark.parametrize(
    ("total", "seconds"),
    [(None, 300), (GIB // 2, 300), (GIB, 300), (4 * GIB, 1200)],
)
def test_completion_deadline_scales_with_size(total: int | None, seconds: int) -> None:
    assert deadlines.completion_deadline(T0, total, Timeouts()) == later(seconds)


def test_progress_stall_counts_from_start_until_bytes_move() -> None:
    timeouts = Timeouts(progress_seconds=60)
    assert not deadlines.progress_stalled(None, T0, timeouts, later(60))
    assert deadlines.progress_stalled(None, T0, timeouts, later(61))
    moved = Progress(percent=1, last_progress_time=later(50))
    assert not deadlines.progress_stalled(moved, T0, timeouts, later(100))


def test_completed_progress_has_processed_all_of_the_total() -> None:
    """libvirt's bytes sent skip zero pages: 100 MB of a 257 MB total, yet the transfer is complete."""
    running = progress.advance(None, JobStats(bytes_processed=90, bytes_remaining=10, bytes_total=250), T0)
    done = progress.completed(running, JobStats(bytes_processed=100, bytes_total=257), later(5))
    assert (done.percent, done.bytes_processed, done.bytes_remaining, done.bytes_total) == (100, 257, 0, 257)
