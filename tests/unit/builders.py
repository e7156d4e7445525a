"""Small builders for core tests: a healthy pair of hosts and a VE that passes every check."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from vemigrate.api.host import CPUFacts, HostStatus, NetworkFacts, StorageFacts, VEKind, VersionFacts
from vemigrate.api.migration import MigrationSpec, MigrationStatus, Mode, Phase, PhaseTransition
from vemigrate.core.access import HostAccess
from vemigrate.core.observation import (
    HostObservation,
    JobObservation,
    JobState,
    JobStats,
    Observation,
    VEFacts,
    VEState,
)
from vemigrate.core.plan import resolve
from vemigrate.drivers.protocol import MigrationPlan

T0 = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
GIB = 1024**3


def spec(**overrides: Any) -> MigrationSpec:
    data: dict[str, Any] = {"source": {"host": "node-a", "name": "web1"}, "target": {"host": "node-b"}}
    data.update(overrides)
    return MigrationSpec.model_validate(data)


def host_facts(**overrides: Any) -> HostStatus:
    facts = HostStatus(
        cpu=CPUFacts(vendor="Intel", model="Xeon", count=16, features=["sse4_2", "avx", "avx2"]),
        memory_total_bytes=64 * GIB,
        memory_free_bytes=32 * GIB,
        storage=[StorageFacts(path="/var/lib/libvirt/images", free_bytes=500 * GIB, total_bytes=1000 * GIB)],
        network=NetworkFacts(bridges=["br0"], subnets=["192.0.2.0/24"], link_speed_mbps=10000),
        time_offset_ms=3,
        cpuid_override=True,
        version=VersionFacts(product="libvirt 9.0.0", hypervisor="QEMU 7.2.0"),
        ve_types=[VEKind.VM],
        default_path="/var/lib/libvirt/images",
        encrypted_disk_copy=True,
    )
    return facts.model_copy(update=overrides)


def ve(**overrides: Any) -> VEFacts:
    data: dict[str, Any] = {
        "name": "web1",
        "uuid": "3f1c2a9e-8d7b-4c1e-9a55-0e6f6d1b2c3d",
        "type": VEKind.VM,
        "state": VEState.RUNNING,
        "memory_bytes": 2 * GIB,
        "vcpus": 2,
        "disk_bytes": 10 * GIB,
        "bridges": ("br0",),
        "snapshots": 0,
        "linked_clone": False,
        "enter_sessions": 0,
    }
    data.update(overrides)
    return VEFacts(**data)


def driver_plan(
    uid: str,
    spec: MigrationSpec,
    ve: VEFacts | None,
    source: HostAccess,
    target: HostAccess,
    *,
    mode: Mode | None = None,
    facts: HostStatus | None = None,
) -> MigrationPlan:
    """A driver's plan as reconcile makes it: resolved by core/plan.py against the target's facts (a healthy
    libvirt host's unless given); `mode` forces the mode (a driver test of one mode)."""
    resolved = resolve(uid, spec, ve, facts or host_facts(), None)
    if mode is not None:
        resolved = replace(resolved, mode=mode)
    return MigrationPlan.of(uid, spec, resolved, ve, source, target)


def running_job(**stats: Any) -> JobObservation:
    return JobObservation(state=JobState.RUNNING, stats=JobStats(**stats))


def job(state: JobState, **kwargs: Any) -> JobObservation:
    return JobObservation(state=state, **kwargs)


def observation(**overrides: Any) -> Observation:
    data: dict[str, Any] = {
        "generation": 1,
        "source": HostObservation(name="node-a", reachable=True, facts=host_facts()),
        "target": HostObservation(name="node-b", reachable=True, facts=host_facts()),
        "source_ve": ve(),
        "target_ve": None,
        "ssh_port_open": True,
        "job": JobObservation(state=JobState.NONE),
        "target_verified": None,
        "source_disposed": False,
        "target_leftovers": False,
        "created": T0,
        "uid": "uid-1",
    }
    data.update(overrides)
    return Observation(**data)


def status_in(phase: Phase, since: datetime = T0, **overrides: Any) -> MigrationStatus:
    """A stored status that entered `phase` at `since`, after one attempt."""
    transitions = [PhaseTransition(phase=Phase.VALIDATING, time=T0)]
    if phase != Phase.VALIDATING:
        transitions.append(PhaseTransition(phase=phase, time=since))
    data: dict[str, Any] = {
        "phase": phase,
        "phase_transitions": transitions,
        "attempts": 1,
        "start_time": T0,
    }
    if phase in (Phase.TRANSFERRING, Phase.SWITCHOVER, Phase.FINALIZING, Phase.ROLLING_BACK):
        data["mode"] = "Live"
    data.update(overrides)
    return MigrationStatus.model_validate(data)


def later(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)
