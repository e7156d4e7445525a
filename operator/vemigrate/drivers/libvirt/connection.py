"""Reaching a host's libvirtd: through a Unix socket forwarded over the host's one SSH connection, whose
host key is verified (drivers/ssh.py), never through a URI opened as written (`_connection_plan`). Every
blocking libvirt call runs in one of the host's own threads (drivers/threads.py) under a deadline
(`Libvirtd.call`); a hung call is a fact (state unknown), not a reason to block, and it holds a thread
of its host only, until libvirtd answers again (no libvirt keepalive: see KEEPALIVE). libvirt's errors
are classified (`_classify`): retryable, permanent, or state unknown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

import libvirt

from vemigrate.api.host import LIBVIRT_URI, LIBVIRT_URI_SCHEME
from vemigrate.api.reasons import Reason
from vemigrate.core.access import HostAccess
from vemigrate.drivers.errors import DriverError, PermanentError, RetryableError, StateUnknownError
from vemigrate.drivers.ssh import SSHHost
from vemigrate.drivers.threads import NOT_RESPONDING
from vemigrate.drivers.threads import for_host as host_threads

log = logging.getLogger(__name__)
T = TypeVar("T")
CALL_TIMEOUT = 30.0
# KEEPALIVE: libvirt's keepalive is not turned on. It needs libvirt's event loop registered and run in a
# thread; with both, libvirt 9.0's client crashed this process (SIGSEGV in virNetClientIOEventFD) when a
# frozen libvirtd resumed after keepalive had closed a connection several calls were waiting on
# (tests/lab/test_isolation.py, three runs out of three). A call stuck on a hung libvirtd holds its
# host's thread until libvirtd answers again; the host's few threads bound that, and its calls fail at
# once meanwhile (drivers/threads.py).
LIBVIRT_SOCKET = "/run/libvirt/libvirt-sock"
# libvirt prints every error to stderr by default; ours are raised, classified and reported instead.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

# libvirt error codes that mean "cannot tell what happened" rather than "it failed".
_UNKNOWN_CODES = {libvirt.VIR_ERR_RPC, libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_NO_CONNECT}


def _connection_plan(uri: str | None, host: str) -> tuple[str, str]:
    """(hypervisor, path) of `spec.libvirtURI`. Only SSH transports (the default `qemu+ssh://`, or
    `lxc+ssh://`, `vz+ssh://`), and the operator never opens the URI as written: libvirtd is reached
    through its own SSH connection with the verified host key, never through an ssh binary (which
    would consult some other known_hosts) or a command, socket or TCP port named in the URI. Anything
    else is refused before any connection is made (api/host.py says which URIs and why)."""
    if not uri:
        return "qemu", "/system"
    parsed = urlsplit(uri) if re.match(LIBVIRT_URI_SCHEME, uri) else None
    if parsed is None:
        problem = "is not an SSH URI: only qemu+ssh://, lxc+ssh:// and vz+ssh:// are allowed"
    elif "?" in uri or "#" in uri:
        names = sorted({name for name, _ in parse_qsl(parsed.query, keep_blank_values=True)})
        listed = f" ({', '.join(names)[:200]})" if names else ""
        problem = f"has query parameters or a fragment{listed}: none is allowed"
    elif not re.fullmatch(LIBVIRT_URI, uri):
        problem = "is not of the form <driver>+ssh://[user@]host[:port][/system]"
    else:
        return parsed.scheme.partition("+")[0], "/system"
    raise PermanentError(Reason.UNSAFE_LIBVIRT_URI, f"spec.libvirtURI of HypervisorHost {host!r} {problem}")


def _classify(exc: libvirt.libvirtError, what: str) -> DriverError:
    code = exc.get_error_code()
    message = f"{what}: {exc.get_error_message() or exc}"
    if code in _UNKNOWN_CODES:
        return StateUnknownError(Reason.LIBVIRT_UNREACHABLE, message)
    if code in (libvirt.VIR_ERR_OPERATION_TIMEOUT, libvirt.VIR_ERR_AGENT_UNRESPONSIVE):
        return RetryableError(Reason.LIBVIRT_TIMEOUT, message)
    return PermanentError(Reason.LIBVIRT_ERROR, message)


def _alive(conn: Any) -> bool:
    with contextlib.suppress(libvirt.libvirtError):
        return bool(conn.isAlive())  # a local check, no round trip
    return False


def _close_in_thread(conn: Any) -> None:
    """Close a connection off the event loop, without waiting: a libvirt connection talks through an SSH
    forward that the loop serves, so closing it there (or its finalizer running there) could wait on
    the loop itself. Used for connections already dead (closing is local then) or nobody waits on."""

    def close() -> None:
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()

    threading.Thread(target=close, name="libvirt-close", daemon=True).start()


def _close_when_returned(call: Future[Any]) -> None:
    """The connection a connection attempt nobody waits on any more returns, if it ever does, closed."""

    def returned(done: Future[Any]) -> None:
        if not done.cancelled() and done.exception() is None:
            _close_in_thread(done.result())

    call.add_done_callback(returned)


def _open(uri: str) -> Any:
    """A connection, opened in one of the host's threads. No libvirt keepalive: see KEEPALIVE above."""
    return libvirt.open(uri)


class Libvirtd:
    """libvirtd on one host, connected on first use and again whenever the connection died. Its calls run
    in the host's own threads (shared by every Libvirtd of that HypervisorHost)."""

    def __init__(self, access: HostAccess, ssh: SSHHost) -> None:
        self.access = access
        self.ssh = ssh
        self.threads = host_threads(access.namespace, access.name)
        self._conn: Any = None
        self._forward: Any = None
        self._sockdir: tempfile.TemporaryDirectory[str] | None = None
        self._lock = asyncio.Lock()
        # A connection attempt that outlived its deadline, and when it began: no second one is made
        # while it holds its thread, and the connection it returns, if it ever does, is used.
        self._opening: Future[Any] | None = None
        self._opening_since = 0.0

    async def _connect(self) -> Any:
        async with self._lock:
            if self._conn is not None:
                if _alive(self._conn):
                    return self._conn
                # Closed: libvirtd went away (restarted, killed).
                stale, self._conn = self._conn, None
                _close_in_thread(stale)
            name = self.access.name
            if self._opening is not None:
                opening = self._opening
                if not opening.done():
                    waited = time.monotonic() - self._opening_since
                    raise RetryableError(
                        NOT_RESPONDING,
                        f"libvirtd on {name} does not answer: the connection opened {waited:.0f} s ago still waits "
                        "on it (no second one is opened meanwhile)",
                    )
                self._opening = None
                if not opening.cancelled() and opening.exception() is None:
                    late = opening.result()
                    if _alive(late):  # it answered after all, through the forward still open
                        self._conn = late
                        return late
                    _close_in_thread(late)
            hypervisor, path = _connection_plan(self.access.libvirt_uri, name)
            what = "connecting to libvirtd"
            if self.threads.overdue() >= self.threads.size:  # before a new forward that would go unused
                raise self.threads.not_responding(what)
            if self._forward is not None:
                self._forward.close()
            self._sockdir = tempfile.TemporaryDirectory(prefix="vem-")
            local = str(Path(self._sockdir.name) / "libvirt-sock")
            self._forward = await self.ssh.forward_socket(local, LIBVIRT_SOCKET)
            uri = f"{hypervisor}+unix://{path}?socket={local}"
            call = self.threads.submit(lambda: _open(uri), CALL_TIMEOUT, what)
            try:
                self._conn = await self.threads.wait(call, CALL_TIMEOUT, what)
            except TimeoutError as exc:
                self._opening, self._opening_since = call, time.monotonic() - CALL_TIMEOUT
                raise StateUnknownError(Reason.LIBVIRT_TIMEOUT, f"libvirtd on {name} did not answer") from exc
            except asyncio.CancelledError:
                if not call.cancelled():
                    self._opening, self._opening_since = call, time.monotonic()
                raise
            except libvirt.libvirtError as exc:
                raise _classify(exc, f"connecting to libvirtd on {name}") from exc
            return self._conn

    async def call(self, what: str, fn: Callable[[Any], T], timeout: float = CALL_TIMEOUT) -> T:
        """fn(connection) in one of the host's threads, under a deadline, with libvirt errors classified."""
        conn = await self._connect()
        try:
            return await self.threads.run(lambda: fn(conn), timeout, what)
        except TimeoutError as exc:
            raise StateUnknownError(
                Reason.LIBVIRT_TIMEOUT, f"{what} on {self.access.name} did not finish in {timeout:.0f} s"
            ) from exc
        except libvirt.libvirtError as exc:
            if not _alive(conn):
                # The connection closed under the call (libvirtd went away):
                # whatever libvirt calls the error, what the call did on the host is unknown.
                message = exc.get_error_message() or str(exc)
                raise StateUnknownError(
                    Reason.LIBVIRT_UNREACHABLE,
                    f"{what} on {self.access.name}: the connection to libvirtd closed ({message})",
                ) from exc
            raise _classify(exc, f"{what} on {self.access.name}") from exc

    async def close(self) -> None:
        """Close the connection and the forwarded socket; the SSH connection is the driver's to close."""
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                # In the host's threads: closing talks to libvirtd through the forward this loop serves.
                try:
                    await self.threads.run(conn.close, CALL_TIMEOUT, "closing the connection")
                except DriverError:  # not sent: its threads are all held; never dropped on this thread
                    _close_in_thread(conn)
                except (TimeoutError, libvirt.libvirtError):
                    pass
            if self._opening is not None:
                _close_when_returned(self._opening)
                self._opening = None
            if self._forward is not None:
                self._forward.close()
                self._forward = None
