"""Progress of a transfer, from the hypervisor's counters. Percent never goes backwards."""

from __future__ import annotations

from datetime import datetime

from vemigrate.api.migration import Progress
from vemigrate.core.observation import JobStats

# Until the job reports completion the transfer is not done, whatever the counters say (a live
# migration re-sends dirtied pages, so remaining can touch zero and grow again).
_CEILING_BEFORE_COMPLETION = 99


def advance(previous: Progress | None, stats: JobStats, now: datetime) -> Progress:
    """Fold one sample of job counters into the stored progress."""
    before = previous or Progress()
    processed = stats.bytes_processed if stats.bytes_processed is not None else before.bytes_processed
    total = stats.bytes_total if stats.bytes_total is not None else before.bytes_total
    remaining = stats.bytes_remaining
    if remaining is None and total is not None and processed is not None:
        remaining = max(total - processed, 0)

    computed = 0
    if total and processed is not None:
        done = total - remaining if remaining is not None else processed
        computed = min(_CEILING_BEFORE_COMPLETION, max(0, done * 100 // total))
    percent = max(before.percent, computed)

    grew = processed is not None and (before.bytes_processed is None or processed > before.bytes_processed)
    last = now if grew or before.last_progress_time is None else before.last_progress_time

    eta = before.eta_seconds
    if grew and before.bytes_processed is not None and before.last_progress_time is not None:
        elapsed = (now - before.last_progress_time).total_seconds()
        assert processed is not None
        rate = (processed - before.bytes_processed) / elapsed if elapsed > 0 else 0.0
        # Memory dirtied while sending must be sent again: only the difference shrinks the rest.
        net = rate - (stats.dirty_rate_bytes_per_second or 0)
        eta = int(remaining / net) if remaining is not None and net > 0 else None

    return Progress(
        percent=percent,
        bytes_processed=processed,
        bytes_remaining=remaining,
        bytes_total=total,
        dirty_rate_bytes_per_second=stats.dirty_rate_bytes_per_second,
        iteration=stats.iteration if stats.iteration is not None else before.iteration,
        eta_seconds=eta,
        last_progress_time=last,
    )


def completed(previous: Progress | None, stats: JobStats, now: datetime) -> Progress:
    """The final sample: everything sent. All of bytesTotal is then processed, whatever the hypervisor's
    own counter of bytes sent says (libvirt's skips zero pages and compresses, so a live migration's
    reads below its total; re-sent dirty pages can lift it above)."""
    done = advance(previous, stats, now)
    processed = done.bytes_total if done.bytes_total is not None else done.bytes_processed
    return done.model_copy(
        update={"percent": 100, "bytes_processed": processed, "bytes_remaining": 0, "eta_seconds": 0}
    )
