"""Deadlines and backoff: when a slow migration is stopped, and when a failed one is tried again."""

from __future__ import annotations

from datetime import datetime, timedelta

from vemigrate.api.migration import Progress, Timeouts

GIB = 1024**3
BACKOFF_CAP = timedelta(hours=1)


def backoff(attempt: int, base_seconds: int) -> timedelta:
    """Wait before attempt `attempt + 1`: base, then doubling, capped at one hour."""
    return min(timedelta(seconds=base_seconds * 2 ** max(attempt - 1, 0)), BACKOFF_CAP)


def completion_deadline(started: datetime, bytes_total: int | None, timeouts: Timeouts) -> datetime:
    """Start plus completionPerGiBSeconds for every GiB to move (at least one GiB's worth)."""
    gib = max((bytes_total or 0) / GIB, 1.0)
    return started + timedelta(seconds=timeouts.completion_per_gib_seconds * gib)


def progress_stalled(progress: Progress | None, started: datetime, timeouts: Timeouts, now: datetime) -> bool:
    """No byte moved for progressSeconds (counted from the start when none has moved yet)."""
    since = progress.last_progress_time if progress and progress.last_progress_time else started
    return now - since > timedelta(seconds=timeouts.progress_seconds)
