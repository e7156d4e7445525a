"""A few threads of its own for each host's blocking calls (libvirt's), so a host that stops answering
holds only its own threads and never the ones other hosts, or the API client, need.

A deadline frees the waiting coroutine, never the thread: a call that outlives its deadline keeps its
thread until the host answers. Once every thread of a host is held so, further calls on it fail at once
(`HostNotResponding`) instead of queueing behind them; they run again as soon as one of those threads
comes back.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from vemigrate.api.reasons import Reason
from vemigrate.drivers.errors import RetryableError

T = TypeVar("T")
# Calls on one host at once: a pass makes at most two (its reads of the source, or of the target, and
# a probe), and a few migrations and the host's own probe may share the host.
HOST_THREADS = 4
NOT_RESPONDING = Reason.HOST_NOT_RESPONDING


class HostThreads:
    """One host's threads. Loop-agnostic (a lock, no asyncio primitive): one instance serves the host for
    the life of the process, whichever driver object (renewed when the host's spec changes) uses it."""

    def __init__(self, host: str, size: int = HOST_THREADS) -> None:
        self.host = host
        self.size = size
        self._executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix=f"host-{host}"[:40])
        self._lock = threading.Lock()
        # Every call submitted and not returned, with its deadline (time.monotonic()).
        self._calls: dict[Future[Any], float] = {}

    def overdue(self) -> int:
        """Calls running past their deadline: threads held by a host that did not answer."""
        now = time.monotonic()
        with self._lock:
            return sum(1 for call, deadline in self._calls.items() if deadline < now and call.running())

    def not_responding(self, what: str) -> RetryableError:
        return RetryableError(
            NOT_RESPONDING,
            f"{self.host} does not answer: {self.overdue()} of its calls are past their deadline and still "
            f"waiting on it; {what} was not sent",
        )

    def submit(self, fn: Callable[[], T], timeout: float, what: str) -> Future[T]:
        """fn in one of the host's threads; refused at once (nothing sent) when every thread is held by an
        overdue call."""
        if self.overdue() >= self.size:
            raise self.not_responding(what)
        call = self._executor.submit(fn)
        with self._lock:
            if not call.done():
                self._calls[call] = time.monotonic() + timeout
        call.add_done_callback(self._returned)  # at once if it already returned
        return call

    def _returned(self, call: Future[Any]) -> None:
        with self._lock:
            self._calls.pop(call, None)

    async def wait(self, call: Future[T], timeout: float, what: str) -> T:
        """The call's result within `timeout`. TimeoutError when it ran and did not finish (it keeps its
        thread; its state on the host is unknown); HostNotResponding when it never got a thread."""
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(call)), timeout)
        except TimeoutError:
            if call.cancel():  # still queued: nothing was sent to the host
                raise RetryableError(
                    NOT_RESPONDING, f"{what} on {self.host} got no thread in {timeout:.0f} s: its threads are busy"
                ) from None
            raise
        except asyncio.CancelledError:
            call.cancel()  # dropped from the queue if it had not started; a running one finishes on its own
            raise

    async def run(self, fn: Callable[[], T], timeout: float, what: str) -> T:
        return await self.wait(self.submit(fn, timeout, what), timeout, what)


_hosts: dict[tuple[str, str], HostThreads] = {}
_hosts_lock = threading.Lock()


def for_host(namespace: str, name: str) -> HostThreads:
    """The threads of HypervisorHost namespace/name, the same for every driver object made for it: a host
    whose calls are stuck keeps them counted across a renewed driver, and never gets a second set."""
    with _hosts_lock:
        threads = _hosts.get((namespace, name))
        if threads is None:
            threads = _hosts[(namespace, name)] = HostThreads(f"{namespace}/{name}")
        return threads
