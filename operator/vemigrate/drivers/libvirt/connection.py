"""Reaching a host's libvirtd: through a Unix socket forwarded over the host's one SSH connection, whose
host key is verified (drivers/ssh.py), never through a URI opened as written (`_connection_plan`). Every
blocking libvirt call runs in a thread under a deadline (`Libvirtd.call`); a hung call is a fact (state
unknown), not a reason to block, and libvirt's errors are classified (`_classify`): retryable,
permanent, or state unknown.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

import libvirt

from vemigrate.api.host import LIBVIRT_URI, LIBVIRT_URI_SCHEME
from vemigrate.core.access import HostAccess
from vemigrate.drivers.errors import DriverError, PermanentError, RetryableError, StateUnknownError
from vemigrate.drivers.ssh import SSHHost

T = TypeVar("T")
CALL_TIMEOUT = 30.0
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
    raise PermanentError("UnsafeLibvirtURI", f"spec.libvirtURI of HypervisorHost {host!r} {problem}")


def _classify(exc: libvirt.libvirtError, what: str) -> DriverError:
    code = exc.get_error_code()
    message = f"{what}: {exc.get_error_message() or exc}"
    if code in _UNKNOWN_CODES:
        return StateUnknownError("LibvirtUnreachable", message)
    if code in (libvirt.VIR_ERR_OPERATION_TIMEOUT, libvirt.VIR_ERR_AGENT_UNRESPONSIVE):
        return RetryableError("LibvirtTimeout", message)
    return PermanentError("LibvirtError", message)


class Libvirtd:
    """libvirtd on one host, connected on first use and again whenever the connection died."""

    def __init__(self, access: HostAccess, ssh: SSHHost) -> None:
        self.access = access
        self.ssh = ssh
        self._conn: Any = None
        self._forward: Any = None
        self._sockdir: tempfile.TemporaryDirectory[str] | None = None
        self._lock = asyncio.Lock()

    async def _connect(self) -> Any:
        async with self._lock:
            if self._conn is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    if self._conn.isAlive():  # a local check, no round trip
                        return self._conn
                stale, self._conn = self._conn, None
                with contextlib.suppress(libvirt.libvirtError, TimeoutError):
                    await asyncio.wait_for(asyncio.to_thread(stale.close), CALL_TIMEOUT)
            hypervisor, path = _connection_plan(self.access.libvirt_uri, self.access.name)
            if self._forward is not None:
                self._forward.close()
            self._sockdir = tempfile.TemporaryDirectory(prefix="vem-")
            local = str(Path(self._sockdir.name) / "libvirt-sock")
            self._forward = await self.ssh.forward_socket(local, LIBVIRT_SOCKET)
            uri = f"{hypervisor}+unix://{path}?socket={local}"
            try:
                self._conn = await asyncio.wait_for(asyncio.to_thread(libvirt.open, uri), CALL_TIMEOUT)
            except TimeoutError as exc:
                raise StateUnknownError("LibvirtTimeout", f"libvirtd on {self.access.name} did not answer") from exc
            except libvirt.libvirtError as exc:
                raise _classify(exc, f"connecting to libvirtd on {self.access.name}") from exc
            return self._conn

    async def call(self, what: str, fn: Callable[[Any], T], timeout: float = CALL_TIMEOUT) -> T:
        """fn(connection) in a thread, under a deadline, with libvirt errors classified."""
        conn = await self._connect()
        try:
            return await asyncio.wait_for(asyncio.to_thread(fn, conn), timeout)
        except TimeoutError as exc:
            raise StateUnknownError(
                "LibvirtTimeout", f"{what} on {self.access.name} did not finish in {timeout:.0f} s"
            ) from exc
        except libvirt.libvirtError as exc:
            raise _classify(exc, f"{what} on {self.access.name}") from exc

    async def close(self) -> None:
        """Close the connection and the forwarded socket; the SSH connection is the driver's to close."""
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                # In a thread: closing talks to libvirtd through the forward this loop serves.
                with contextlib.suppress(libvirt.libvirtError, TimeoutError):
                    await asyncio.wait_for(asyncio.to_thread(conn.close), CALL_TIMEOUT)
            if self._forward is not None:
                self._forward.close()
                self._forward = None
