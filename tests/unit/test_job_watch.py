"""reconcile's watch on a migration's running job (World.watch_job): the job's end wakes the migration once,
however many passes ask to be woken by it, and a pass waits neither on the watch nor on its cancellation.
A stand-in source host answers the long poll: no services."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any, cast

from tests.unit.builders import spec
from vemigrate import reconcile
from vemigrate.api.migration import Mode
from vemigrate.core.access import HostAccess
from vemigrate.core.observation import JobObservation, JobState
from vemigrate.drivers.protocol import MigrationPlan

SOURCE = HostAccess(name="node-a", namespace="ns", address="192.0.2.1")
TARGET = HostAccess(name="node-b", namespace="ns", address="192.0.2.2")
PLAN = MigrationPlan(uid="m1", spec=spec(), mode=Mode.OFFLINE, ve=None, source=SOURCE, target=TARGET)


class Source:
    """The source host's side of the long poll. `ended`: the job is over, and the poll returns at once
    (as it does on the host once the job's exit record is written). `stubborn`: the poll's call does not
    return, and shrugs off cancellation until `release` is set (an SSH call that does not honour it)."""

    def __init__(self, *, ended: bool = True, stubborn: bool = False, outcome: JobObservation | None = None) -> None:
        self.access = SOURCE
        self.ended = ended
        self.outcome = outcome
        self.stubborn = stubborn
        self.release = asyncio.Event()
        self.polls = 0

    async def wait_job_end(self, plan: MigrationPlan, seconds: float) -> JobObservation | bool | None:
        self.polls += 1
        while self.stubborn and not self.release.is_set():
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                continue
        return self.outcome if self.ended and self.outcome is not None else self.ended


def _world(source: Source) -> tuple[reconcile.World, list[str]]:
    woken: list[str] = []
    world = reconcile.World(kube=cast(Any, None), make_driver=lambda access: cast(Any, source))
    world.job_ended = woken.append
    return world, woken


async def _settle() -> None:
    """Let the watch task run as far as it can without waiting on anything."""
    for _ in range(10):
        await asyncio.sleep(0)


async def test_a_job_end_wakes_the_migration_once_however_often_passes_ask() -> None:
    """After the wake-up, the passes that follow may not read the job (its read timed out under load) and
    ask to be woken by its end again: a new long poll on the ended job would return at once and wake
    another such pass at once, and so on, back to back. It is not made; the poll is the safety net."""
    source = Source(ended=True)
    world, woken = _world(source)
    assert world.watch_job("m1", PLAN), "a watch on the running job"
    await _settle()
    assert woken == ["m1"]
    for _ in range(3):  # passes that cannot read the job, each asking to be woken by its end
        assert not world.watch_job("m1", PLAN), "its end woke the migration already: the poll wakes the next"
        await _settle()
    assert woken == ["m1"] and source.polls == 1
    # A retry runs a job of its own: its end wakes the migration in turn.
    assert world.watch_job("m1", replace(PLAN, attempt=2))
    await _settle()
    assert woken == ["m1", "m1"] and source.polls == 2
    world.forget("m1")  # the migration ended: nothing kept
    assert world.watch_job("m1", None) is False


async def test_the_outcome_the_poll_read_goes_to_the_pass_it_wakes_once_and_for_its_job_only() -> None:
    """The driver's long poll read the ended job (its final record): the pass woken takes that instead of
    reading the job again, once; a pass of another attempt, or after the migration was forgotten, reads."""
    done = JobObservation(state=JobState.COMPLETED)
    source = Source(ended=True, outcome=done)
    world, woken = _world(source)
    assert world.watch_job("m1", PLAN)
    await _settle()
    assert woken == ["m1"]
    assert world.job_outcome("m1", replace(PLAN, attempt=2)) is None, "not this attempt's job"
    assert world.watch_job("m1", replace(PLAN, attempt=3))
    await _settle()
    assert world.job_outcome("m1", replace(PLAN, attempt=3)) is done
    assert world.job_outcome("m1", replace(PLAN, attempt=3)) is None, "taken once: a later pass reads the job"
    assert world.watch_job("m1", replace(PLAN, attempt=4))
    await _settle()
    world.forget("m1")
    assert world.job_outcome("m1", replace(PLAN, attempt=4)) is None


async def test_a_pass_waits_neither_on_the_watch_nor_on_its_cancellation() -> None:
    """A watch whose call hangs and shrugs off cancellation: the pass stops it and watches again without
    waiting on it, and when the stubborn call returns at last, the watch it belonged to is no longer the
    migration's and wakes nothing (the current watch's answer is the one that counts)."""
    source = Source(ended=True, stubborn=True)
    world, woken = _world(source)
    assert world.watch_job("m1", PLAN)
    await _settle()
    assert source.polls == 1 and not woken
    assert world.watch_job("m1", None) is False  # a pass that no longer waits on the job: returns at once
    await _settle()
    assert world.watch_job("m1", PLAN), "watched again, the stopped watch's call still hanging"
    await _settle()
    assert source.polls == 2 and not woken
    source.release.set()  # both calls return: the job ended
    await _settle()
    assert woken == ["m1"], "one wake-up, from the current watch only"
    assert not world.watch_job("m1", PLAN)


class Closing:
    """A host's driver that records its close; `hangs`: the close never returns (a host not answering)."""

    def __init__(self, access: HostAccess, *, hangs: bool = False) -> None:
        self.access = access
        self.hangs = hangs
        self.closed = False

    async def close(self) -> None:
        if self.hangs:
            await asyncio.Event().wait()
        self.closed = True

    async def wait_job_end(self, plan: MigrationPlan, seconds: float) -> bool | None:
        await asyncio.Event().wait()  # the job runs on
        return None


async def test_closing_the_world_stops_the_watches_and_closes_every_driver_a_hung_one_bounded() -> None:
    """At the operator's exit (kopf's cleanup handler), while the loop still runs: every driver's connections
    closed and the long polls stopped. One host that does not answer is left after the bound, not waited
    on for ever."""
    drivers = {SOURCE.name: Closing(SOURCE), TARGET.name: Closing(TARGET, hangs=True)}
    world = reconcile.World(kube=cast(Any, None), make_driver=lambda access: cast(Any, drivers[access.name]))
    assert world.watch_job("m1", PLAN)
    world.driver(TARGET)
    await _settle()
    (watch,) = [task for _, task in world._watches.values()]
    await world.close(timeout=0.2)
    await _settle()
    assert watch.cancelled()
    assert drivers[SOURCE.name].closed and not drivers[TARGET.name].closed
    assert world._drivers == {} and world._watches == {}
