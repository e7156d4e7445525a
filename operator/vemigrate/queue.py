"""This process's side of admission (core/admission.py decides whose turn it is): what the pure queue
cannot know from the API's view alone.

- The order the watch delivered the unfinished migrations in: the order they were created in, which
  orders those of one second of creationTimestamp.
- What this process decided for a waiting migration (admitted, or waiting still), and a pass that left
  its slot (back to Queued), remembered until the migration ends: the API's view lags the status writes,
  and without this two migrations could take the last slot at once, or one be counted in the slot it
  left (observation.others_in_view).
- The migrations it saw end, until the watch delivers their final status: the waiters woken when a slot
  frees must not still count them in flight.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable

from vemigrate.core.observation import OtherMigration, others_in_view


class Admission:
    def __init__(self) -> None:
        # Admission is decided under this lock: two waiting passes never both take the last slot.
        self.lock = asyncio.Lock()
        self._decided: dict[str, OtherMigration] = {}
        self._finished: set[str] = set()
        self._arrivals: dict[str, int] = {}
        self._count = itertools.count(1)

    def arrival(self, uid: str, *, final: bool) -> int:
        """The watch delivered the migration: its place in the order first seen (1, 2, ...), or 0 once it
        is final, when nothing is kept of it any more (the index has its final phase)."""
        if final:
            self._finished.discard(uid)
            self._arrivals.pop(uid, None)
            return 0
        if uid not in self._arrivals:
            self._arrivals[uid] = next(self._count)
        return self._arrivals[uid]

    def view(self, indexed: Iterable[OtherMigration]) -> list[OtherMigration]:
        """The migrations of the index as admission counts them: each once, as this process last decided it
        while its status write may not be in the index yet, and without those it saw end."""
        unfinished = (o for o in indexed if o.uid not in self._finished)
        return others_in_view(unfinished, self._decided.values())

    def decided(self, migration: OtherMigration) -> None:
        """A waiting pass decided (admitted, or waiting still), or a pass left its slot to wait again."""
        self._decided[migration.uid] = migration

    def ended(self, uid: str) -> None:
        """The migration ended in this process (its final status written, or its finalizer released):
        left out of the view until the watch delivers its final phase."""
        self._decided.pop(uid, None)
        self._finished.add(uid)

    def gone(self, uid: str) -> None:
        """The object was deleted without a pass of ours (a dry run has no finalizer): nothing kept of it;
        the index has dropped it already."""
        self._decided.pop(uid, None)
        self._finished.discard(uid)
        self._arrivals.pop(uid, None)
