"""SSH to hosts with asyncssh: host keys always verified, every command quoted and under a deadline."""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

import asyncssh

from vemigrate.api.reasons import Reason
from vemigrate.core.access import HostAccess
from vemigrate.drivers.errors import DriverError, PermanentError, RetryableError, StateUnknownError

CONNECT_TIMEOUT = 10.0
COMMAND_TIMEOUT = 30.0
# Commands that wait on the host (long polls) at once on one connection: OpenSSH allows 10 sessions
# per connection (MaxSessions), and the passes' own commands need the rest.
WAITS_PER_CONNECTION = 4


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    exit_status: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


def known_hosts_for(access: HostAccess) -> asyncssh.SSHKnownHosts:
    if not access.known_hosts.strip():
        raise PermanentError(
            Reason.NO_HOST_KEY,
            f"HypervisorHost {access.name!r} has no known_hosts entry or hostKey: refusing to connect unverified",
        )
    # asyncssh's parse errors quote the offending line ("Invalid known hosts entry: <line>"), which may
    # be any Secret's text: they are dropped, never chained, and the message names where the text is.
    try:
        return asyncssh.import_known_hosts(access.known_hosts)
    except (ValueError, asyncssh.KeyImportError):
        pass
    origin = access.known_hosts_origin or f"the known_hosts of HypervisorHost {access.name!r}"
    raise PermanentError(
        Reason.INVALID_KNOWN_HOSTS,
        f"{origin} is not a valid known_hosts file (HypervisorHost {access.name!r}; its text is not repeated here)",
    )


def _client_keys(access: HostAccess) -> list[asyncssh.SSHKey] | None:
    if access.private_key is None:
        return None
    try:
        return [asyncssh.import_private_key(access.private_key)]
    except (ValueError, asyncssh.KeyImportError):
        pass  # as in known_hosts_for: the error is not repeated
    origin = access.credentials_origin or f"the SSH private key of HypervisorHost {access.name!r}"
    raise PermanentError(
        Reason.INVALID_PRIVATE_KEY,
        f"{origin} is not an SSH private key the operator can read (OpenSSH or PEM, without a passphrase; "
        f"HypervisorHost {access.name!r})",
    )


def classify(access: HostAccess, exc: BaseException) -> DriverError:
    """Turn what asyncssh or the network raised into a driver error with a specific reason."""
    where = f"{access.user}@{access.address}:{access.port} ({access.name})"
    if isinstance(exc, DriverError):
        return exc
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return PermanentError(
            Reason.HOST_KEY_MISMATCH,
            f"host key of {where} does not match its known_hosts: refusing to connect ({exc.reason})",
        )
    if isinstance(exc, asyncssh.PermissionDenied):
        return PermanentError(
            Reason.AUTHENTICATION_FAILED, f"{where} refused the credentials from the Secret: {exc.reason}"
        )
    if isinstance(exc, TimeoutError):
        return StateUnknownError(Reason.TIMEOUT, f"{where} did not answer in time")
    if isinstance(exc, asyncssh.DisconnectError | asyncssh.ConnectionLost | asyncssh.ChannelOpenError):
        return StateUnknownError(Reason.CONNECTION_LOST, f"connection to {where} lost: {exc}")
    if isinstance(exc, OSError):
        return RetryableError(Reason.HOST_UNREACHABLE, f"cannot connect to {where}: {exc.strerror or exc}")
    return RetryableError(Reason.SSH_ERROR, f"{where}: {exc}")


class SSHHost:
    """One verified SSH connection per host, opened on first use and renewed when the host changes."""

    def __init__(self, access: HostAccess) -> None:
        self.access = access
        self._conn: asyncssh.SSHClientConnection | None = None
        self._lock = asyncio.Lock()
        self._waits = asyncio.Semaphore(WAITS_PER_CONNECTION)

    async def connection(self) -> asyncssh.SSHClientConnection:
        async with self._lock:
            if self._conn is not None and not self._conn.is_closed():
                return self._conn
            access = self.access
            try:
                self._conn = await asyncio.wait_for(
                    asyncssh.connect(
                        access.address,
                        port=access.port,
                        username=access.user,
                        known_hosts=known_hosts_for(access),
                        client_keys=_client_keys(access),
                        password=access.password,
                        agent_path=None,
                        config=None,
                        keepalive_interval=15,
                        keepalive_count_max=2,
                    ),
                    CONNECT_TIMEOUT,
                )
            except BaseException as exc:
                if isinstance(exc, asyncio.CancelledError):
                    raise
                raise classify(access, exc) from exc
            return self._conn

    async def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float = COMMAND_TIMEOUT,
        input: str | None = None,
        check: bool = True,
    ) -> Completed:
        """Run argv on the host. Each word is quoted, so no value is ever parsed by the remote shell."""
        command = shlex.join(argv)
        try:
            conn = await self.connection()
            result = await asyncio.wait_for(conn.run(command, input=input, check=False), timeout)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise classify(self.access, exc) from exc
        done = Completed(
            argv=tuple(argv),
            exit_status=result.exit_status if result.exit_status is not None else -1,
            stdout=str(result.stdout or ""),
            stderr=str(result.stderr or ""),
        )
        if check and not done.ok:
            raise PermanentError(
                Reason.COMMAND_FAILED,
                f"{argv[0]} on {self.access.name} exited {done.exit_status}: {done.stderr.strip()[:500]}",
            )
        return done

    async def wait(self, argv: Sequence[str], seconds: float) -> Completed | None:
        """Run a command that waits on the host for up to `seconds` (a long poll); None, without running
        it, when this connection already holds its share of them."""
        if self._waits.locked():
            return None
        async with self._waits:
            return await self.run(argv, timeout=seconds + COMMAND_TIMEOUT, check=False)

    async def forward_socket(self, local_path: str, remote_path: str) -> asyncssh.SSHListener:
        """A local Unix socket that reaches a Unix socket on the host through this connection."""
        try:
            conn = await self.connection()
            return await asyncio.wait_for(conn.forward_local_path(local_path, remote_path), CONNECT_TIMEOUT)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise classify(self.access, exc) from exc

    async def reaches(self, other: HostAccess) -> bool:
        """Whether this host opens SSH to `other` by itself: as root, by key, its host key already known
        (what a node-to-node migration needs; nothing prompts, nothing is learned)."""
        result = await self.run(
            [
                "ssh",
                "-o", "BatchMode=yes",
                "-o", "ConnectTimeout=5",
                "-o", "StrictHostKeyChecking=yes",
                "-p", str(other.port),
                f"{other.user}@{other.data_address}",
                "true",
            ],
            check=False,
        )  # fmt: skip
        return result.ok

    async def close(self) -> None:
        async with self._lock:
            if self._conn is not None:
                self._conn.close()
                await self._conn.wait_closed()
                self._conn = None
