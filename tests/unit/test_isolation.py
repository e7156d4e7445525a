"""Isolation of a host that stops answering (issue #14): its blocking calls hold only its own few
threads, then fail at once as `HostNotResponding` (never permanent); the liveness probe fails only when
migration passes stop completing. Blocking calls here are threads waiting on an Event: no libvirt, no
services. (The API client uses no thread at all: tests/cluster/test_kube_client.py writes a status while
every thread is held.)"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import kopf
import kubernetes
import pytest

from vemigrate import handlers, reconcile
from vemigrate.core.observation import ErrorClass
from vemigrate.drivers.errors import DriverError, PermanentError
from vemigrate.drivers.threads import NOT_RESPONDING, HostThreads, for_host
from vemigrate.kube.client import Kube
from vemigrate.memo import Memo, PassClock
from vemigrate.reconcile import _PERMANENT_CONNECT_REASONS


@pytest.fixture
def hung() -> Iterator[threading.Event]:
    """Released at the end of the test, whatever happened: no thread outlives it."""
    release = threading.Event()
    yield release
    release.set()


def test_a_hung_host_holds_its_own_threads_then_fails_fast(hung: threading.Event) -> None:
    async def scenario() -> None:
        frozen, other = HostThreads("ns/frozen", size=2), HostThreads("ns/other", size=2)
        for _ in range(2):  # each call outlives its deadline and keeps its thread
            with pytest.raises(TimeoutError):
                await frozen.run(hung.wait, 0.2, "reading")
        assert frozen.overdue() == 2
        started = time.monotonic()
        with pytest.raises(DriverError) as refused:
            await frozen.run(lambda: "sent", 30, "looking up the VE")
        assert time.monotonic() - started < 0.1, "refused at once, not after its deadline"
        error = refused.value
        assert error.reason == NOT_RESPONDING and error.error_class == ErrorClass.RETRYABLE
        assert not isinstance(error, PermanentError) and error.reason not in _PERMANENT_CONNECT_REASONS
        assert "frozen does not answer" in error.message and "looking up the VE was not sent" in error.message
        # Another host is not touched by it.
        assert await other.run(lambda: "answered", 1, "reading") == "answered"
        hung.set()  # the host answers again: its threads come back, and so do its calls
        deadline = time.monotonic() + 5
        while frozen.overdue() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert await frozen.run(lambda: "answered", 1, "reading") == "answered"

    asyncio.run(scenario())


def test_a_call_that_gets_no_thread_in_time_was_never_sent(hung: threading.Event) -> None:
    ran: list[str] = []

    async def scenario() -> None:
        threads = HostThreads("ns/busy", size=1)
        busy = asyncio.ensure_future(threads.run(hung.wait, 5, "a long call"))
        await asyncio.sleep(0.05)
        with pytest.raises(DriverError) as queued:
            await threads.run(lambda: ran.append("sent"), 0.2, "reading")
        assert queued.value.reason == NOT_RESPONDING and "got no thread" in queued.value.message
        hung.set()
        await busy
        await asyncio.sleep(0.05)

    asyncio.run(scenario())
    assert ran == [], "the queued call was dropped, not run after its caller gave up"


def test_each_host_has_one_set_of_threads_for_the_life_of_the_process() -> None:
    assert for_host("ns", "node-a") is for_host("ns", "node-a")
    assert for_host("ns", "node-a") is not for_host("other", "node-a")


def _probe(memo: Memo, clock: PassClock) -> Any:
    memo.passes = clock
    return asyncio.run(handlers.passes_complete(memo=memo))


def test_liveness_fails_only_when_passes_stop_completing() -> None:
    kube = Kube(kubernetes.client.Configuration())
    world = reconcile.World(kube=kube, make_driver=lambda access: None)  # type: ignore[arg-type,return-value]
    world.settings.stalled_pass_seconds = 100
    memo = Memo(world)
    now = time.monotonic()

    idle = PassClock()
    idle.last_end = now - 10_000
    assert idle.stalled(100) is None, "an idle operator, however long idle, is live"
    assert _probe(memo, idle)["running"] == 0

    working = PassClock()
    working.running = {1: now - 500}  # one pass stuck for long...
    working.last_end = now - 5  # ...while others keep ending: the operator works
    assert working.stalled(100) is None
    assert _probe(memo, working)["running"] == 1

    recent = PassClock()
    recent.running = {1: now - 50}  # a pass under way for less than the limit
    recent.last_end = now - 10_000
    assert recent.stalled(100) is None

    stuck = PassClock()
    stuck.running = {1: now - 150, 2: now - 120}
    stuck.last_end = now - 150
    said = stuck.stalled(100)
    assert said is not None and "2 migration pass(es) running, the oldest for 150 s" in said
    with pytest.raises(kopf.PermanentError, match="migration passes stopped completing"):
        _probe(memo, stuck)


def test_the_pass_clock_times_a_pass_from_its_start_to_its_end() -> None:
    clock = PassClock()
    with clock.timing():
        assert len(clock.running) == 1
        assert clock.stalled(60, now=time.monotonic() + 30) is None
        assert clock.stalled(60, now=time.monotonic() + 90) is not None, "running 90 s, none ended for 90 s"
    assert clock.running == {} and clock.stalled(60, now=time.monotonic() + 90) is None
    assert time.monotonic() - clock.last_end < 1
