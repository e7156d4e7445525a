"""Waking a migration's daemon before its poll is due, and saying why: its job ended, a slot freed, its
spec.action changed. The first cause since the migration's last pass is the one its next pass is told."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from enum import StrEnum
from typing import Any

log = logging.getLogger(__name__)


class Cause(StrEnum):
    """What started a pass: a label of vemigrate_wakeups_total and the log's "a pass woken by"."""

    START = "start"  # the daemon's first pass (the migration was created, or the operator started)
    TIMER = "timer"  # its poll was due
    JOB_ENDED = "job-ended"
    SLOT_FREED = "slot-freed"  # a slot freed, a migration ahead in the queue went, or a host's limit rose
    SPEC_CHANGE = "spec-change"  # spec.action changed (Cancel, ForceComplete)
    DELETION = "deletion"


class _Wakeup:
    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.cause = Cause.TIMER

    def set(self, cause: Cause) -> None:
        if not self.event.is_set():
            self.cause = cause
        self.event.set()


_UNSEEN = object()


class Wakeups:
    """Every unfinished migration's wake-up, and its spec.action as last seen (to tell a change from
    another event of the object)."""

    def __init__(self) -> None:
        self._wakeups: dict[str, _Wakeup] = {}
        self._actions: dict[str, object] = {}

    def wake(self, uid: str, cause: Cause) -> None:
        self._wakeups.setdefault(uid, _Wakeup()).set(cause)

    async def sleep(self, uid: str, seconds: float, stopped: Awaitable[Any]) -> Cause:
        """Until the poll is due, something wakes the migration, or `stopped` is done; returns why the
        next pass runs (TIMER when nothing woke it). A wake-up that came during the pass counts."""
        wake = self._wakeups.setdefault(uid, _Wakeup())
        waiters = {asyncio.ensure_future(wake.event.wait()), asyncio.ensure_future(stopped)}
        _, pending = await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        cause = wake.cause if wake.event.is_set() else Cause.TIMER
        log.debug("migration %s woken by %s after up to %.1f s", uid, cause, seconds)
        wake.event.clear()
        return cause

    def action_seen(self, uid: str, action: object) -> None:
        """The watch delivered the migration with this spec.action: a change (not the first sight) wakes it."""
        seen = self._actions.get(uid, _UNSEEN)
        self._actions[uid] = action
        if seen is not _UNSEEN and seen != action:
            self.wake(uid, Cause.SPEC_CHANGE)

    def deleted(self, uid: str) -> None:
        """The object is gone: nothing kept of its spec."""
        self._actions.pop(uid, None)

    def ended(self, uid: str) -> None:
        """Its daemon stopped for good: no wake-up kept."""
        self._wakeups.pop(uid, None)
