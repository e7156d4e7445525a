"""The one protocol every hypervisor driver implements, and the plan it is handed.

A driver instance serves one host. Every method has a deadline (the driver enforces it) and raises
`DriverError` subclasses: `StateUnknownError` when the host did not answer in time, which the
reconcile pass turns into "not observed" (None) rather than a failure.

Jobs are keyed by the migration's UID and attempt and live on the source host, not in the operator: a restarted
operator finds a running job with `job()`, and a finished job's outcome (exit status and error)
stays readable there until `forget_job()`. So `job()` returning JobState.NONE means the job was
never started.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from vemigrate.api.host import HostStatus
from vemigrate.api.migration import MigrationSpec, Mode, SourceDisposition
from vemigrate.core.access import HostAccess
from vemigrate.core.observation import JobObservation, VEFacts
from vemigrate.core.plan import Plan


@dataclass(frozen=True)
class MigrationPlan:
    """Everything a driver needs to run or inspect one migration. The resolved values (core/plan.py) are
    the ones to act on: a driver never works them out again from the spec or the host's facts."""

    uid: str
    spec: MigrationSpec
    mode: Mode  # Live or Offline, resolved
    ve: VEFacts | None  # the VE as seen on the source this pass (None once it was removed)
    source: HostAccess
    target: HostAccess
    attempt: int = 1  # status.attempts: each attempt runs a job of its own
    # The seed's --dst, resolved: spec.target.path, else the target's default for the VE's kind (as
    # recorded when the job started). None: not known, and nothing may be made in a default directory.
    target_path: str | None = None
    copy_uuid: str | None = None  # the copy's UUID: the VE's own, or a clone's new one
    disposition: SourceDisposition = SourceDisposition.REMOVED

    @classmethod
    def of(
        cls, uid: str, spec: MigrationSpec, plan: Plan, ve: VEFacts | None, source: HostAccess, target: HostAccess,
        attempt: int = 1,
    ) -> MigrationPlan:  # fmt: skip
        return cls(
            uid=uid, spec=spec, mode=plan.mode, ve=ve, source=source, target=target, attempt=attempt,
            target_path=plan.target_path, copy_uuid=plan.copy_uuid, disposition=plan.disposition,
        )  # fmt: skip


class HypervisorDriver(Protocol):
    access: HostAccess

    async def close(self) -> None:
        """Release connections (the host's credentials or spec changed, or the operator stops)."""

    async def probe(self, paths: Sequence[str] = ()) -> HostStatus:
        """Facts about the host for the pre-flight checks and the HypervisorHost status; `paths`: more
        directories whose file system's free space to report (spec.target.path, made or not yet)."""

    async def find_ve(self, name: str, *, for_checks: bool = False) -> VEFacts | None:
        """The VE with this name or UUID on this host, or None when there is none. `for_checks`: also the
        facts only the pre-flight checks use that cost a command on the host (whether it is a linked
        clone, a container's size on disk); otherwise those may be left unknown (None)."""

    async def reaches(self, other: HostAccess, uid: str | None = None) -> bool:
        """Whether this host opens a direct SSH connection to `other` on its SSH port. With `uid`, the
        connection may stay up as that migration's shared one where the driver keeps one (then a new
        login when none is up), for `shared_disks` and the job to reuse."""

    async def shared_disks(self, ve: VEFacts, target: HostAccess, uid: str | None = None) -> tuple[str, ...] | None:
        """Which of the VE's disk files (on this host) `target` sees as the very same files: storage both
        hosts share, which a live migration leaves in place. None: it could not tell. With `uid`, asked on
        that migration's connection to the target where the driver keeps one (its job reuses it)."""

    # -- on the source ----------------------------------------------------------------------
    async def start_job(self, plan: MigrationPlan) -> None:
        """Start the migration job for plan.uid; a no-op when it already exists."""

    async def job(self, plan: MigrationPlan) -> JobObservation:
        """The job's state, counters and outcome."""

    async def wait_job_end(self, plan: MigrationPlan, seconds: float) -> JobObservation | bool | None:
        """Wait on the host until the job is over, for at most `seconds` (False: still running); None:
        nothing to wait for. Over: what `job()` would say of it now, read in the same round trip from the
        job's final record (or True, when the driver did not read it), which the pass this wakes takes
        instead of reading the job again."""

    async def abort_job(self, plan: MigrationPlan) -> None:
        """Ask the job to stop; the VE keeps running on the source."""

    async def force_complete(self, plan: MigrationPlan) -> None:
        """Finish a live migration now: pause the VE for switchover, or switch to post-copy."""

    async def source_disposed(self, plan: MigrationPlan, disposition: SourceDisposition) -> bool:
        """Whether the source VE was already removed or renamed as `disposition` says."""

    async def dispose_source(self, plan: MigrationPlan, disposition: SourceDisposition) -> None:
        """Remove the source VE (VMs) or rename it .migrated (containers). Called only once the target
        copy is verified."""

    async def forget_job(self, plan: MigrationPlan) -> None:
        """Remove the job's records from the host once the migration is final."""

    # -- on the target ----------------------------------------------------------------------
    async def verify_target(self, plan: MigrationPlan, seen: Collection[str] = ()) -> bool:
        """Whether the copy here is complete: defined, in the expected state, data intact. `seen`: files
        the migration's job found here at its end (JobObservation.on_target), not looked for again."""

    async def target_leftovers(self, plan: MigrationPlan) -> bool:
        """Whether this migration left anything here (a half-defined VE, partial disks)."""

    async def cleanup_target(self, plan: MigrationPlan) -> None:
        """Remove what this migration left here. Never called while the source copy is missing."""


class DriverFactory(Protocol):
    def __call__(self, access: HostAccess) -> HypervisorDriver: ...
