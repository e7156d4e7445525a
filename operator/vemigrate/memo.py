"""What the operator keeps between passes, in one object: kopf hands it to every handler as `memo`
(`kopf.run(memo=...)`, vemigrate/cli.py). The handlers stay kopf's glue; what a pass does around
reconcile (one pass at a time per migration, run to its end even when kopf cancels its handler, timed
for the liveness probe, and waking the waiters whose turn it is when it makes room) is here, and runs
without kopf."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from vemigrate import reconcile
from vemigrate.api.migration import Phase
from vemigrate.core.decision import Decision
from vemigrate.core.machine import ACTIVE_PHASES
from vemigrate.core.observation import OtherMigration
from vemigrate.queue import Admission
from vemigrate.wakeups import Cause, Wakeups

# The namespace's migrations as the operator's watch has them at the time of the call (a kopf index).
Others = Callable[[], list[OtherMigration]]


class PassClock:
    """When each migration pass in progress began, and when the last one ended: what the liveness probe
    reads. Every call a pass makes has a deadline, so a working pass ends within minutes, whatever its
    hosts do."""

    def __init__(self) -> None:
        self.running: dict[int, float] = {}
        self.last_end = time.monotonic()
        self._keys = itertools.count()

    @contextlib.contextmanager
    def timing(self) -> Iterator[None]:
        key = next(self._keys)
        self.running[key] = time.monotonic()
        try:
            yield
        finally:
            del self.running[key]
            self.last_end = time.monotonic()

    def stalled(self, bound: float, now: float | None = None) -> str | None:
        """Why passes have stopped completing, or None: only when a pass has been running for `bound`
        seconds and none has ended for as long. An idle operator (no pass running) is never stalled."""
        now = time.monotonic() if now is None else now
        if not self.running:
            return None
        oldest = now - min(self.running.values())
        quiet = now - self.last_end
        if oldest < bound or quiet < bound:
            return None
        return (
            f"{len(self.running)} migration pass(es) running, the oldest for {oldest:.0f} s, and none has "
            f"ended for {quiet:.0f} s (limit {bound:g} s)"
        )


def left_queue_or_slot(before: Phase, after: Phase) -> bool:
    """A pass that makes room for others: it ended (in flight, or waiting ahead of others), or left its
    slot to wait again (a retry's backoff). Being admitted, or staying put, makes none."""
    return after.final or (before in ACTIVE_PHASES and after not in ACTIVE_PHASES)


@dataclass(eq=False)
class Memo:
    """The operator's state: the World (API client, drivers, job watches), admission, wake-ups, the
    pass clock, and one lock per migration so that its daemon and its deletion never run a pass at once."""

    world: reconcile.World
    admission: Admission = field(default_factory=Admission)
    wakeups: Wakeups = field(default_factory=Wakeups)
    passes: PassClock = field(default_factory=PassClock)
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    phases_counted: bool = False  # the phase gauge reads kopf's index: registered once
    # Migrations whose daemon runs in this process: it runs on until its pass has ended, though the final
    # status it wrote no longer matches the daemon's filter (handlers._passes).
    daemons: set[str] = field(default_factory=set)
    # Dry runs deleted while their daemon ran: kopf stops no daemon of an object without a finalizer.
    gone: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.world.job_ended = lambda uid: self.wakeups.wake(uid, Cause.JOB_ENDED)

    def __copy__(self) -> Memo:
        # kopf gives each object's handlers a shallow copy of the memo: they all get this one object.
        return self

    def lock(self, uid: str) -> asyncio.Lock:
        return self.locks.setdefault(uid, asyncio.Lock())

    async def daemon_pass(
        self,
        body: Mapping[str, Any],
        others: Others,
        cause: Cause,
        lookup: reconcile.HostLookup | None = None,
    ) -> Decision:
        """One pass of a migration's daemon, run to its end; when it makes room (it ended, or left its slot),
        the waiters whose turn it is now are woken within the same shielded run (kopf cancels the daemon
        as soon as the final status is written)."""
        namespace = body["metadata"]["namespace"]

        async def run() -> Decision:
            decision = await reconcile.migration_pass(
                self.world, body, admission=self.admission, others=others(), woken_by=cause, lookup=lookup
            )
            before = Phase((body.get("status") or {}).get("phase") or Phase.PENDING.value)
            if left_queue_or_slot(before, decision.status.phase):
                await self.next_up(namespace, others(), lookup)
            return decision

        return await self._whole(run())

    async def deletion_pass(
        self, body: Mapping[str, Any], others: Others, lookup: reconcile.HostLookup | None = None
    ) -> Decision:
        """A pass of a migration being deleted: it rolls back; once it releases the finalizer, nothing is
        kept of it and the waiters whose turn it is now are woken."""
        uid, namespace = body["metadata"]["uid"], body["metadata"]["namespace"]
        async with self.lock(uid):
            decision = await self._whole(
                reconcile.migration_pass(
                    self.world,
                    body,
                    admission=self.admission,
                    deleting=True,
                    others=others(),
                    woken_by=Cause.DELETION,
                    lookup=lookup,
                )
            )
        if decision.release_finalizer:
            self.ended(uid)
            self.admission.ended(uid)
            await self.next_up(namespace, others(), lookup)
        return decision

    async def next_up(
        self, namespace: str, indexed: Iterable[OtherMigration], lookup: reconcile.HostLookup | None = None
    ) -> list[str]:
        """A slot may have freed, or a migration ahead in the queue gone: wake the queued migrations whose
        turn it is now (core/admission.py), rather than at their next poll. The others sleep on: it is not
        their turn, and one woken whose turn it is not after all (the view moved on) only waits again.
        Returns the UIDs woken."""
        woken = [o.uid for o in await reconcile.next_up(self.world, self.admission, namespace, indexed, lookup)]
        for uid in woken:
            self.wakeups.wake(uid, Cause.SLOT_FREED)
        return woken

    def ended(self, uid: str) -> None:
        """The migration's daemon stopped for good, or its finalizer went: no lock, no wake-up kept."""
        self.locks.pop(uid, None)
        self.wakeups.ended(uid)

    async def dry_run_deleted(
        self, uid: str, namespace: str, indexed: Iterable[OtherMigration], lookup: reconcile.HostLookup | None = None
    ) -> None:
        """A dry run was deleted (it has no finalizer, so no deletion pass ran): its daemon, if it runs,
        stops at once, and its slot goes to the next waiter, as a deletion pass would give it."""
        if uid in self.daemons:
            self.gone.add(uid)
            self.wakeups.wake(uid, Cause.DELETION)
        self.admission.gone(uid)
        await self.next_up(namespace, indexed, lookup)

    async def _timed(self, coro: Coroutine[Any, Any, Decision]) -> Decision:
        with self.passes.timing():
            return await coro

    async def _whole(self, coro: Coroutine[Any, Any, Decision]) -> Decision:
        """Run a pass to its end even when kopf cancels the handler (it stops a daemon as soon as the
        status it just wrote is final): a pass's status write, Events, metrics and job clean-up belong
        together. Timed inside the shield: a cancelled handler does not end the pass it leaves running."""
        return await asyncio.shield(asyncio.ensure_future(self._timed(coro)))
