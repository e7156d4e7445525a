"""SIMULATION, for the control-plane benchmark only: `SimulatedHost`, a hypervisor driver whose hosts
live in the operator's memory, so 1,000 migration objects can be reconciled on a 2-core machine that
could not run 1,000 guests.

Everything above the driver is the product, unchanged: `python -m benchmarks.simulated run ...` is
`vemigrate run` (kopf, the handlers, reconcile, the phase machine, the pre-flight checks, status
writes and Events against the real kube-apiserver) with the driver registry pointed at this class.
What is simulated is only what a driver would read from or do on a host:
- hosts named `sim-src-*` hold every VE they are asked about (a running 256 MiB VM) until it moves;
  other hosts hold none. Every host reports the same healthy facts.
- a migration job takes `VEMIGRATE_SIM_JOB_SECONDS` (default 3 s) from its start, then completes
  with a 50 ms downtime; the VE is then on the target, and disposing of the source forgets it there.
No network traffic, no SSH, no libvirt.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from vemigrate.api.host import CPUFacts, HostStatus, NetworkFacts, StorageFacts, VEKind, VersionFacts
from vemigrate.api.migration import SourceDisposition
from vemigrate.core.access import HostAccess
from vemigrate.core.observation import JobObservation, JobState, JobStats, VEFacts, VEState
from vemigrate.drivers.protocol import HypervisorDriver, MigrationPlan

SOURCE_PREFIX = "sim-src-"
POOL = "/var/lib/libvirt/images"
MEMORY = 256 << 20
DISK = 64 << 20

# The simulated world, shared by every driver instance in this process.
_moved: dict[str, str] = {}  # VE name -> the host it moved to
_jobs: dict[str, float] = {}  # migration UID -> monotonic start time
_disposed: set[str] = set()  # migration UIDs whose source was disposed of


def _job_seconds() -> float:
    return float(os.environ.get("VEMIGRATE_SIM_JOB_SECONDS", "3"))


def host_facts() -> HostStatus:
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
        default_path=POOL,
        encrypted_disk_copy=True,
        last_probe_time=datetime.now(UTC),
    )


def ve_facts(name: str) -> VEFacts:
    return VEFacts(
        name=name,
        uuid=str(uuid.uuid5(uuid.NAMESPACE_URL, f"sim:{name}")),
        type=VEKind.VM,
        state=VEState.RUNNING,
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


class SimulatedHost:
    """A simulated hypervisor host (see the module docstring). Answers at once."""

    def __init__(self, access: HostAccess) -> None:
        self.access = access

    def _holds(self, name: str) -> bool:
        where = _moved.get(name)
        return where == self.access.name if where else self.access.name.startswith(SOURCE_PREFIX)

    async def close(self) -> None:
        return None

    async def probe(self, paths: Sequence[str] = ()) -> HostStatus:
        return host_facts()

    async def find_ve(self, name: str) -> VEFacts | None:
        return ve_facts(name) if self._holds(name) else None

    async def reaches(self, other: HostAccess) -> bool:
        return True

    async def shared_disks(self, ve: VEFacts, target: HostAccess) -> tuple[str, ...] | None:
        return ()

    async def start_job(self, plan: MigrationPlan) -> None:
        _jobs.setdefault(plan.uid, time.monotonic())

    def _done(self, plan: MigrationPlan) -> bool:
        started = _jobs.get(plan.uid)
        return started is not None and time.monotonic() - started >= _job_seconds()

    async def job(self, plan: MigrationPlan) -> JobObservation:
        started = _jobs.get(plan.uid)
        if started is None:
            return JobObservation(state=JobState.NONE)
        total = MEMORY + DISK
        if not self._done(plan):
            done = int(total * (time.monotonic() - started) / _job_seconds())
            return JobObservation(
                state=JobState.RUNNING,
                stats=JobStats(bytes_processed=done, bytes_remaining=total - done, bytes_total=total),
            )
        _moved[plan.spec.source.name] = plan.target.name
        return JobObservation(
            state=JobState.COMPLETED, stats=JobStats(bytes_processed=total, bytes_total=total, downtime_ms=50)
        )

    async def wait_job_end(self, plan: MigrationPlan, seconds: float) -> bool | None:
        started = _jobs.get(plan.uid)
        if started is None:
            return None
        left = started + _job_seconds() - time.monotonic()
        await asyncio.sleep(min(max(left, 0.0), seconds))
        return left <= seconds

    async def abort_job(self, plan: MigrationPlan) -> None:
        _jobs.pop(plan.uid, None)

    async def force_complete(self, plan: MigrationPlan) -> None:
        _jobs[plan.uid] = time.monotonic() - _job_seconds()

    async def source_disposed(self, plan: MigrationPlan, disposition: SourceDisposition) -> bool:
        return plan.uid in _disposed

    async def dispose_source(self, plan: MigrationPlan, disposition: SourceDisposition) -> None:
        _disposed.add(plan.uid)

    async def forget_job(self, plan: MigrationPlan) -> None:
        _jobs.pop(plan.uid, None)

    async def verify_target(self, plan: MigrationPlan) -> bool:
        return self._done(plan)

    async def target_leftovers(self, plan: MigrationPlan) -> bool:
        return False

    async def cleanup_target(self, plan: MigrationPlan) -> None:
        return None


def simulated(access: HostAccess) -> HypervisorDriver:
    return SimulatedHost(access)


def main() -> int:
    """`vemigrate run` with every host simulated (the registry's factory replaced before it starts)."""
    from vemigrate import cli
    from vemigrate.drivers import registry

    registry.driver_for = simulated
    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
