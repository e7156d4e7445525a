"""SIMULATION: hypervisor hosts that live in this process's memory, behind the HypervisorDriver contract
(drivers/protocol.py). It stands in only for what cannot exist here: the 1,000 guests of the control-plane
benchmark (benchmarks/simulated.py), and hosts whose jobs fail, or that stop answering, on demand, for the
tests of reconcile and the handlers. No network, no SSH, no libvirt.

Never handed out for a user's HypervisorHost: drivers/registry.py does not know it (a host whose
spec.driver says "simulated" gets the UnavailableDriver); only `SimulatedWorld.driver`, a DriverFactory
given to a reconcile.World explicitly (by the benchmark or a test), makes one.

What it reproduces of the real drivers (libvirt, prlctl):
- a job lives on the source host, keyed by the migration's UID and attempt: `job()` reads NONE until it
  starts, RUNNING with counters, then COMPLETED, FAILED or CANCELLED (after abort_job), and its outcome
  stays readable until forget_job(); start_job of an existing job does nothing;
- while a job runs, the target holds a half-built copy tagged with the migration's UID (not listed as a
  VE, but target_leftovers sees it); a completed job leaves the copy complete there (running after a live
  job, as the source's was after an offline one) and the source's copy stopped until disposed of (VMs
  removed, containers renamed <name>.migrated); a failed or aborted job leaves the half-built copy for
  cleanup_target;
- destructive calls refuse what is not provably the migration's (PermanentError, as the real drivers):
  dispose_source a source copy that still runs, cleanup_target an active copy; a copy not tagged with the
  migration's UID is never touched;
- a host that stops answering raises its error (StateUnknownError, the SSH driver's Timeout, unless
  told another) from every call.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from vemigrate.api.host import Capability, CPUFacts, HostStatus, NetworkFacts, StorageFacts, VEKind, VersionFacts
from vemigrate.api.migration import Mode, SourceDisposition
from vemigrate.api.reasons import Reason
from vemigrate.core.access import HostAccess
from vemigrate.core.observation import ErrorClass, JobObservation, JobState, JobStats, VEFacts, VEState
from vemigrate.drivers.errors import DriverError, PermanentError, StateUnknownError
from vemigrate.drivers.protocol import HypervisorDriver, MigrationPlan

POOL = "/var/lib/libvirt/images"
MEMORY = 256 << 20
DISK = 64 << 20
MIGRATED_SUFFIX = ".migrated"


def host_facts() -> HostStatus:
    """A healthy host, the same for every simulated one: every pre-flight check that applies passes."""
    return HostStatus(
        cpu=CPUFacts(vendor="GenuineIntel", model="Simulated", count=32, features=["sse4_2", "avx2"]),
        memory_total_bytes=256 << 30,
        memory_free_bytes=128 << 30,
        storage=[StorageFacts(path=POOL, free_bytes=4 << 40, total_bytes=8 << 40)],
        network=NetworkFacts(bridges=["vmbr0"], subnets=["10.231.0.0/16"], link_speed_mbps=10000),
        time_offset_ms=0,
        cpuid_override=False,
        version=VersionFacts(product="libvirt 9.0.0", hypervisor="QEMU 7.2.0", kernel="6.1.0"),
        ve_types=[VEKind.VM],
        capabilities=list(Capability),  # a simulated host refuses no option (JobScript.refused does, when told)
        default_path=POOL,
        encrypted_disk_copy=True,
        last_probe_time=datetime.now(UTC),
    )


def ve_facts(name: str, state: VEState = VEState.RUNNING, kind: VEKind = VEKind.VM) -> VEFacts:
    """A small VE that every pre-flight check passes (its UUID follows from its name)."""
    return VEFacts(
        name=name,
        uuid=str(uuid.uuid5(uuid.NAMESPACE_URL, f"sim:{name}")),
        type=kind,
        state=state,
        memory_bytes=MEMORY,
        vcpus=1,
        disk_bytes=DISK,
        bridges=("vmbr0",),
        snapshots=0,
        linked_clone=False,
        storage_path=POOL,
        disk_paths=(f"{POOL}/{name}.qcow2",),
        macs=("52:54:00:00:00:01",),
    )


@dataclass(frozen=True)
class JobScript:
    """How a VE's next job goes. `seconds`: how long it runs (None: until SimulatedWorld.end_job);
    `failure`: it ends FAILED with this reason, message and class; `refused`: start_job raises this and
    no job starts."""

    seconds: float | None = None
    failure: tuple[Reason, str, ErrorClass] | None = None
    refused: DriverError | None = None


@dataclass
class _Copy:
    """A VE on a host. `migration`: the UID of the migration that made this copy ("": none did);
    `complete` False: half-built by a job that has not completed."""

    facts: VEFacts
    migration: str = ""
    complete: bool = True


@dataclass
class _Job:
    plan: MigrationPlan
    started: float
    ends: float | None  # monotonic; None: until told
    failure: tuple[Reason, str, ErrorClass] | None
    aborted: bool = False
    settled: bool = False  # its end was applied to both hosts' copies
    ended: asyncio.Event = field(default_factory=asyncio.Event)


class SimulatedWorld:
    """SIMULATION (see the module docstring): every simulated host's VEs and jobs, and what each was
    asked. Hosts need not be declared: an undeclared one answers with `host_facts()` and holds no VE.
    `holds_any(host)`: hosts that hold every VE they are asked about, as a running VM (the benchmark's
    sources), until it leaves them. `clock`: monotonic seconds."""

    def __init__(
        self,
        *,
        job_seconds: float = 3.0,
        holds_any: Callable[[str], bool] = lambda host: False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.job_seconds = job_seconds
        self.holds_any = holds_any
        self.clock = clock
        self.facts: dict[str, HostStatus] = {}
        self.calls: list[tuple[str, str]] = []  # (host, method) of every driver call, in order
        self._ves: dict[str, dict[str, _Copy]] = {}  # host -> VE name -> copy
        self._asked: set[tuple[str, str]] = set()  # (host, name) a holds_any host was asked about
        self._jobs: dict[str, dict[tuple[str, int], _Job]] = {}  # host -> (uid, attempt) -> job
        self._scripts: dict[str, list[JobScript]] = {}  # VE name -> its next jobs
        self._silent: dict[str, DriverError] = {}
        self.unreachable: set[tuple[str, str]] = set()  # (source, target): no SSH from one to the other

    # -- setting the world up ------------------------------------------------------------------
    def add_host(self, name: str, facts: HostStatus | None = None) -> None:
        self.facts[name] = facts or host_facts()

    def add_ve(self, host: str, ve: VEFacts | str) -> VEFacts:
        facts = ve_facts(ve) if isinstance(ve, str) else ve
        self._ves.setdefault(host, {})[facts.name] = _Copy(facts)
        return facts

    def script(self, ve_name: str, *jobs: JobScript) -> None:
        """The VE's next jobs, in order; the jobs after them run `job_seconds` and complete."""
        self._scripts.setdefault(ve_name, []).extend(jobs)

    def stop_answering(self, host: str, error: DriverError | None = None) -> None:
        self._silent[host] = error or StateUnknownError(Reason.TIMEOUT, f"{host} did not answer in time (simulated)")

    def answer_again(self, host: str) -> None:
        self._silent.pop(host, None)

    def end_job(self, uid: str) -> None:
        """End the migration's running jobs now (as scripted: completed, or failed)."""
        for jobs in self._jobs.values():
            for job in jobs.values():
                if job.plan.uid == uid and not self._over(job):
                    job.ends = self.clock()
                    job.ended.set()

    # -- reading the world (for tests' assertions) ----------------------------------------------
    def ve(self, host: str, name: str) -> VEFacts | None:
        """The complete copy of VE `name` on `host`, or None."""
        found = self._copy(host, name)
        return found.facts if found is not None else None

    def leftovers(self, host: str, uid: str) -> list[str]:
        """Names of the copies on `host` that migration `uid` made (complete or not)."""
        self._settle_all()
        return [name for name, c in self._ves.get(host, {}).items() if c.migration == uid]

    def jobs(self, host: str) -> list[tuple[str, int]]:
        """The (UID, attempt) of every job whose records `host` keeps."""
        return list(self._jobs.get(host, {}))

    def driver(self, access: HostAccess) -> HypervisorDriver:
        """The DriverFactory to give a reconcile.World: one SimulatedHost per HypervisorHost."""
        return SimulatedHost(self, access)

    # -- the hosts' side ----------------------------------------------------------------------
    def _answer(self, host: str, method: str) -> None:
        self.calls.append((host, method))
        error = self._silent.get(host)
        if error is not None:
            raise error

    def _copy(self, host: str, name: str) -> _Copy | None:
        self._settle_all()
        copies = self._ves.setdefault(host, {})
        if name not in copies and self.holds_any(host) and (host, name) not in self._asked:
            copies[name] = _Copy(ve_facts(name))
        self._asked.add((host, name))
        found = copies.get(name) or next((c for c in copies.values() if c.facts.uuid == name), None)
        return found if found is not None and found.complete else None

    def _over(self, job: _Job) -> bool:
        return job.aborted or (job.ends is not None and self.clock() >= job.ends)

    def _settle_all(self) -> None:
        for jobs in self._jobs.values():
            for job in jobs.values():
                if not job.settled and self._over(job):
                    self._settle(job)

    def _settle(self, job: _Job) -> None:
        """The job's end on both hosts: a completed one's copy is whole on the target, the source's copy
        stopped (a live job's; an offline job's source was not running); else the half-built copy stays."""
        job.settled = True
        job.ended.set()
        plan = job.plan
        if job.aborted or job.failure is not None or plan.ve is None:
            return
        target = self._ves.setdefault(plan.target.name, {})
        name = plan.ve.name
        state = plan.ve.state if plan.mode == Mode.LIVE else VEState.STOPPED
        target[name] = _Copy(replace(plan.ve, state=state), migration=plan.uid, complete=True)
        source = self._ves.get(plan.source.name, {}).get(name)
        if source is not None and not plan.spec.clone:
            source.facts = replace(source.facts, state=VEState.STOPPED)

    def _job(self, plan: MigrationPlan) -> _Job | None:
        self._settle_all()
        return self._jobs.get(plan.source.name, {}).get((plan.uid, plan.attempt))

    def _start(self, plan: MigrationPlan) -> None:
        jobs = self._jobs.setdefault(plan.source.name, {})
        if (plan.uid, plan.attempt) in jobs:
            return  # a no-op when it already exists (the contract)
        if plan.ve is None:
            raise PermanentError(Reason.VE_NOT_FOUND, f"VE {plan.spec.source.name!r} is not on {plan.source.name}")
        scripted = self._scripts.get(plan.ve.name) or [JobScript(seconds=self.job_seconds)]
        script = scripted.pop(0)
        if script.refused is not None:
            raise script.refused
        now = self.clock()
        jobs[(plan.uid, plan.attempt)] = _Job(
            plan, now, None if script.seconds is None else now + script.seconds, script.failure
        )
        half_built = replace(plan.ve, state=VEState.STOPPED)
        self._ves.setdefault(plan.target.name, {}).setdefault(
            plan.ve.name, _Copy(half_built, migration=plan.uid, complete=False)
        )

    def _observe(self, plan: MigrationPlan) -> JobObservation:
        job = self._job(plan)
        if job is None:
            return JobObservation(state=JobState.NONE)
        total = MEMORY + DISK
        if job.aborted:
            return JobObservation(
                state=JobState.CANCELLED,
                error_reason=Reason.ABORTED,
                error_message="migration job: canceled by client (simulated)",
                error_class=ErrorClass.PERMANENT,
            )
        if not job.settled:
            elapsed = self.clock() - job.started
            length = (job.ends - job.started) if job.ends is not None else None
            done = int(total * elapsed / length) if length else total // 2
            done = min(done, total)
            stats = JobStats(bytes_processed=done, bytes_remaining=total - done, bytes_total=total)
            return JobObservation(state=JobState.RUNNING, stats=stats)
        if job.failure is not None:
            reason, message, error_class = job.failure
            return JobObservation(
                state=JobState.FAILED, error_reason=reason, error_message=message, error_class=error_class
            )
        return JobObservation(
            state=JobState.COMPLETED, stats=JobStats(bytes_processed=total, bytes_total=total, downtime_ms=50)
        )

    async def _wait(self, plan: MigrationPlan, seconds: float) -> bool | None:
        job = self._job(plan)
        if job is None:
            return None
        if job.settled:
            return True
        left = seconds if job.ends is None else min(max(job.ends - self.clock(), 0.0), seconds)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(job.ended.wait(), left)
        return self._over(job)

    def _abort(self, plan: MigrationPlan) -> None:
        job = self._job(plan)
        if job is not None and not job.settled:
            job.aborted = True
            self._settle(job)

    def _force(self, plan: MigrationPlan) -> None:
        job = self._job(plan)
        if plan.mode == Mode.LIVE and job is not None and not job.settled:
            job.ends = self.clock()
            self._settle(job)

    def _disposed(self, plan: MigrationPlan, disposition: SourceDisposition) -> bool:
        return disposition == SourceDisposition.KEPT or self._copy(plan.source.name, plan.spec.source.name) is None

    def _dispose(self, plan: MigrationPlan, disposition: SourceDisposition) -> None:
        host = plan.source.name
        found = self._copy(host, plan.spec.source.name)
        if found is None or disposition == SourceDisposition.KEPT:
            return
        if found.facts.state.live:
            raise PermanentError(Reason.SOURCE_STILL_RUNNING, f"{found.facts.name} still runs on {host}")
        copies = self._ves[host]
        del copies[found.facts.name]
        if disposition == SourceDisposition.RENAMED_MIGRATED:
            renamed = found.facts.name + MIGRATED_SUFFIX
            copies[renamed] = replace(found, facts=replace(found.facts, name=renamed))

    def _forget(self, plan: MigrationPlan) -> None:
        jobs = self._jobs.get(plan.source.name, {})
        for key in [k for k in jobs if k[0] == plan.uid]:
            del jobs[key]

    def _target_copy(self, plan: MigrationPlan) -> _Copy | None:
        self._settle_all()
        name = plan.ve.name if plan.ve is not None else plan.spec.source.name
        found = self._ves.get(plan.target.name, {}).get(name)
        return found if found is not None and found.migration == plan.uid else None

    def _verified(self, plan: MigrationPlan) -> bool:
        found = self._target_copy(plan)
        if found is None or not found.complete:
            return False
        return plan.mode != Mode.LIVE or found.facts.state in (VEState.RUNNING, VEState.PAUSED)

    def _clean(self, plan: MigrationPlan) -> None:
        found = self._target_copy(plan)
        if found is None:
            return  # nothing of this migration's: never touched
        if found.complete and found.facts.state.live:
            raise PermanentError(Reason.TARGET_ACTIVE, f"{found.facts.name} runs on {plan.target.name}; left as it is")
        del self._ves[plan.target.name][found.facts.name]


class SimulatedHost:
    """SIMULATION: the HypervisorDriver of one simulated host (see the module docstring). Answers at once,
    or raises the error its host was told to stop answering with."""

    def __init__(self, world: SimulatedWorld, access: HostAccess) -> None:
        self.world = world
        self.access = access

    def _call(self, method: str) -> None:
        self.world._answer(self.access.name, method)

    async def close(self) -> None:
        return None

    async def probe(self, paths: Sequence[str] = ()) -> HostStatus:
        self._call("probe")
        return self.world.facts.get(self.access.name) or host_facts()

    async def find_ve(self, name: str, *, for_checks: bool = False) -> VEFacts | None:
        self._call("find_ve")
        found = self.world._copy(self.access.name, name)
        return found.facts if found is not None else None

    async def reaches(self, other: HostAccess, uid: str | None = None) -> bool:
        self._call("reaches")
        return (self.access.name, other.name) not in self.world.unreachable

    async def shared_disks(self, ve: VEFacts, target: HostAccess, uid: str | None = None) -> tuple[str, ...] | None:
        self._call("shared_disks")
        return ()

    async def start_job(self, plan: MigrationPlan) -> None:
        self._call("start_job")
        self.world._start(plan)

    async def job(self, plan: MigrationPlan) -> JobObservation:
        self._call("job")
        return self.world._observe(plan)

    async def wait_job_end(self, plan: MigrationPlan, seconds: float) -> JobObservation | bool | None:
        self._call("wait_job_end")
        over = await self.world._wait(plan, seconds)
        return self.world._observe(plan) if over else over  # read with the end, as the real drivers do

    async def abort_job(self, plan: MigrationPlan) -> None:
        self._call("abort_job")
        self.world._abort(plan)

    async def force_complete(self, plan: MigrationPlan) -> None:
        self._call("force_complete")
        self.world._force(plan)

    async def source_disposed(self, plan: MigrationPlan, disposition: SourceDisposition) -> bool:
        self._call("source_disposed")
        return self.world._disposed(plan, disposition)

    async def dispose_source(self, plan: MigrationPlan, disposition: SourceDisposition) -> None:
        self._call("dispose_source")
        self.world._dispose(plan, disposition)

    async def forget_job(self, plan: MigrationPlan) -> None:
        self._call("forget_job")
        self.world._forget(plan)

    async def verify_target(self, plan: MigrationPlan, seen: Collection[str] = ()) -> bool:
        self._call("verify_target")
        return self.world._verified(plan)

    async def target_leftovers(self, plan: MigrationPlan) -> bool:
        self._call("target_leftovers")
        return self.world._target_copy(plan) is not None

    async def cleanup_target(self, plan: MigrationPlan) -> None:
        self._call("cleanup_target")
        self.world._clean(plan)
