"""The SIMULATED driver (vemigrate/drivers/simulated.py) keeps the HypervisorDriver contract the tests of
reconcile and the handlers, and the control-plane benchmark, rely on: a job's states and records, the
copies a job leaves on both hosts, refusals of what is not the migration's, a host that stops answering;
and the registry never hands it out for a user's HypervisorHost."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.unit.builders import spec
from vemigrate.api.host import VEKind
from vemigrate.api.migration import Mode, SourceDisposition
from vemigrate.api.reasons import Reason
from vemigrate.core.access import HostAccess
from vemigrate.core.observation import ErrorClass, JobObservation, JobState, VEState
from vemigrate.drivers.errors import PermanentError, StateUnknownError
from vemigrate.drivers.protocol import MigrationPlan
from vemigrate.drivers.registry import driver_for
from vemigrate.drivers.simulated import JobScript, SimulatedWorld, ve_facts
from vemigrate.drivers.unavailable import UnavailableDriver

SOURCE = HostAccess(name="node-a", namespace="ns", address="192.0.2.1")
TARGET = HostAccess(name="node-b", namespace="ns", address="192.0.2.2")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _world(**kwargs: object) -> tuple[SimulatedWorld, Clock]:
    clock = Clock()
    world = SimulatedWorld(clock=clock, **kwargs)  # type: ignore[arg-type]
    world.add_ve("node-a", "web1")
    return world, clock


def _plan(world: SimulatedWorld, mode: Mode = Mode.LIVE, attempt: int = 1) -> MigrationPlan:
    return MigrationPlan(
        uid="m1", spec=spec(), mode=mode, ve=world.ve("node-a", "web1"), source=SOURCE, target=TARGET, attempt=attempt
    )


async def test_a_live_job_runs_completes_and_stays_readable_until_forgotten() -> None:
    world, clock = _world(job_seconds=10)
    src, dst = world.driver(SOURCE), world.driver(TARGET)
    plan = _plan(world)
    assert (await src.job(plan)).state == JobState.NONE, "never started"
    await src.start_job(plan)
    await src.start_job(plan)  # a no-op: the job exists
    assert world.jobs("node-a") == [("m1", 1)]
    clock.now += 4
    running = await src.job(plan)
    assert running.state == JobState.RUNNING and running.stats.bytes_processed == running.stats.bytes_total * 4 // 10
    assert await dst.find_ve("web1") is None, "a half-built copy is not a VE"
    assert await dst.target_leftovers(plan) and not await dst.verify_target(plan)
    assert await src.wait_job_end(plan, 1) is False, "still running after the wait"
    clock.now += 10
    ended = await src.wait_job_end(plan, 30)
    assert isinstance(ended, JobObservation) and ended == await src.job(plan), "the end comes with its outcome"
    assert ended.state == JobState.COMPLETED
    moved = await dst.find_ve("web1")
    assert moved is not None and moved.state == VEState.RUNNING and await dst.verify_target(plan)
    left = await src.find_ve("web1")
    assert left is not None and left.state == VEState.STOPPED, "libvirt leaves the source's copy shut off"
    assert not await src.source_disposed(plan, SourceDisposition.REMOVED)
    await src.dispose_source(plan, SourceDisposition.REMOVED)
    assert await src.source_disposed(plan, SourceDisposition.REMOVED) and world.ve("node-a", "web1") is None
    await src.forget_job(plan)
    assert (await src.job(plan)).state == JobState.NONE and world.jobs("node-a") == []
    assert await src.wait_job_end(plan, 1) is None, "nothing to wait for"


async def test_a_failed_job_says_why_and_leaves_its_half_built_copy_for_cleanup() -> None:
    world, clock = _world()
    broke = (Reason.HOST_UNREACHABLE, "the link broke", ErrorClass.RETRYABLE)
    world.script("web1", JobScript(seconds=1, failure=broke))
    src, dst = world.driver(SOURCE), world.driver(TARGET)
    plan = _plan(world)
    await src.start_job(plan)
    clock.now += 2
    failed = await src.job(plan)
    assert (failed.state, failed.error_reason, failed.error_class) == (
        JobState.FAILED,
        "HostUnreachable",
        ErrorClass.RETRYABLE,
    )
    assert (await src.find_ve("web1")).state == VEState.RUNNING  # type: ignore[union-attr]
    assert await dst.target_leftovers(plan)
    await dst.cleanup_target(plan)
    assert not await dst.target_leftovers(plan)
    # The next attempt runs a job of its own, unscripted: it completes.
    retry = replace(plan, attempt=2)
    await src.start_job(retry)
    clock.now += 5
    assert (await src.job(retry)).state == JobState.COMPLETED
    assert (await src.job(plan)).state == JobState.FAILED, "the first attempt's record stays"


async def test_an_aborted_job_is_cancelled_and_a_refused_start_starts_nothing() -> None:
    world, _ = _world()
    world.script("web1", JobScript(seconds=None), JobScript(refused=PermanentError(Reason.UNSUPPORTED, "no")))
    src = world.driver(SOURCE)
    plan = _plan(world)
    await src.start_job(plan)
    await src.abort_job(plan)
    assert (await src.job(plan)).state == JobState.CANCELLED
    with pytest.raises(PermanentError, match="no"):
        await src.start_job(replace(plan, attempt=2))
    assert (await src.job(replace(plan, attempt=2))).state == JobState.NONE


async def test_destructive_calls_refuse_what_is_not_the_migrations() -> None:
    world, _ = _world(job_seconds=0)
    world.add_ve("node-b", "other")  # on the target, made by no migration
    src, dst = world.driver(SOURCE), world.driver(TARGET)
    plan = _plan(world)
    with pytest.raises(PermanentError) as running:
        await src.dispose_source(plan, SourceDisposition.REMOVED)
    assert running.value.reason == "SourceStillRunning" and world.ve("node-a", "web1") is not None
    await src.start_job(plan)
    assert (await src.job(plan)).state == JobState.COMPLETED
    with pytest.raises(PermanentError) as active:
        await dst.cleanup_target(plan)
    assert active.value.reason == "TargetActive" and world.ve("node-b", "web1") is not None
    foreign = replace(plan, uid="m2", ve=ve_facts("other"), spec=spec(source={"host": "node-a", "name": "other"}))
    await dst.cleanup_target(foreign)
    assert world.ve("node-b", "other") is not None, "not this migration's: never touched"


async def test_a_container_is_renamed_migrated_after_an_offline_move() -> None:
    world, _ = _world(job_seconds=0)
    world.add_ve("node-a", ve_facts("web1", VEState.STOPPED, VEKind.CONTAINER))
    src, dst = world.driver(SOURCE), world.driver(TARGET)
    plan = _plan(world, Mode.OFFLINE)
    await src.start_job(plan)
    assert (await src.job(plan)).state == JobState.COMPLETED and await dst.verify_target(plan)
    await src.dispose_source(plan, SourceDisposition.RENAMED_MIGRATED)
    assert await src.source_disposed(plan, SourceDisposition.RENAMED_MIGRATED)
    assert world.ve("node-a", "web1.migrated") is not None


async def test_a_host_that_stops_answering_raises_state_unknown_from_every_call() -> None:
    world, _ = _world()
    world.stop_answering("node-a")
    src = world.driver(SOURCE)
    with pytest.raises(StateUnknownError):
        await src.find_ve("web1")
    with pytest.raises(StateUnknownError):
        await src.job(_plan(world))
    world.answer_again("node-a")
    assert await src.find_ve("web1") is not None
    assert world.calls == [("node-a", "find_ve"), ("node-a", "job"), ("node-a", "find_ve")]


async def test_the_benchmarks_sources_hold_any_ve_until_it_leaves() -> None:
    world = SimulatedWorld(job_seconds=0, holds_any=lambda host: host.startswith("sim-src-"))
    src = world.driver(replace(SOURCE, name="sim-src-0"))
    dst = world.driver(replace(TARGET, name="sim-dst-0"))
    ve = await src.find_ve("vm-0001")
    assert ve is not None and ve.state == VEState.RUNNING and await dst.find_ve("vm-0001") is None
    plan = MigrationPlan(uid="m1", spec=spec(), mode=Mode.LIVE, ve=ve, source=src.access, target=dst.access, attempt=1)
    await src.start_job(plan)
    assert (await src.job(plan)).state == JobState.COMPLETED
    await src.dispose_source(
        replace(plan, spec=spec(source={"host": "sim-src-0", "name": "vm-0001"})), SourceDisposition.REMOVED
    )
    assert await src.find_ve("vm-0001") is None, "gone for good, not made again when asked"


def test_the_registry_never_hands_out_the_simulation() -> None:
    access = HostAccess(name="node-a", namespace="ns", address="192.0.2.1", driver="simulated")
    assert isinstance(driver_for(access), UnavailableDriver)
