"""A driver for hosts this build cannot drive: every call fails with the reason, so the migration
(or the host's Reachable condition) says why instead of the operator crashing."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import NoReturn

from vemigrate.api.host import HostStatus
from vemigrate.api.migration import SourceDisposition
from vemigrate.api.reasons import Reason
from vemigrate.core.access import HostAccess
from vemigrate.core.observation import JobObservation, VEFacts
from vemigrate.drivers.errors import PermanentError
from vemigrate.drivers.protocol import MigrationPlan


class UnavailableDriver:
    def __init__(self, access: HostAccess, why: str) -> None:
        self.access = access
        self.why = why

    def _refuse(self) -> NoReturn:
        raise PermanentError(Reason.DRIVER_UNAVAILABLE, f"HypervisorHost {self.access.name!r}: {self.why}")

    async def close(self) -> None:
        return None

    async def probe(self, paths: Sequence[str] = ()) -> HostStatus:
        self._refuse()

    async def find_ve(self, name: str, *, for_checks: bool = False) -> VEFacts | None:
        self._refuse()

    async def reaches(self, other: HostAccess, uid: str | None = None) -> bool:
        self._refuse()

    async def shared_disks(self, ve: VEFacts, target: HostAccess, uid: str | None = None) -> tuple[str, ...] | None:
        self._refuse()

    async def start_job(self, plan: MigrationPlan) -> None:
        self._refuse()

    async def job(self, plan: MigrationPlan) -> JobObservation:
        self._refuse()

    async def wait_job_end(self, plan: MigrationPlan, seconds: float) -> bool | None:
        self._refuse()

    async def abort_job(self, plan: MigrationPlan) -> None:
        self._refuse()

    async def force_complete(self, plan: MigrationPlan) -> None:
        self._refuse()

    async def source_disposed(self, plan: MigrationPlan, disposition: SourceDisposition) -> bool:
        self._refuse()

    async def dispose_source(self, plan: MigrationPlan, disposition: SourceDisposition) -> None:
        self._refuse()

    async def forget_job(self, plan: MigrationPlan) -> None:
        self._refuse()

    async def verify_target(self, plan: MigrationPlan, seen: Collection[str] = ()) -> bool:
        self._refuse()

    async def target_leftovers(self, plan: MigrationPlan) -> bool:
        self._refuse()

    async def cleanup_target(self, plan: MigrationPlan) -> None:
        self._refuse()
