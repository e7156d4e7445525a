"""The migration's plan, resolved in one place: the mode, the directory the copy goes under, the copy's
UUID and what becomes of the source. The pre-flight checks judge it and the drivers carry it out
(drivers/protocol.py MigrationPlan), so neither works any of these out on its own.

Once the job starts, the plan is recorded in status (`status.mode`, `status.plan`), and every later pass
(and a restarted operator) takes it from there: what a rollback removes or a finalization disposes of
follows what the job was started with, never facts that changed since (a host's default directory).
"""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import dataclass

from vemigrate.api.host import HostStatus, VEKind
from vemigrate.api.migration import MigrationSpec, MigrationStatus, Mode, PlanStatus, SourceDisposition
from vemigrate.core.observation import VEFacts


@dataclass(frozen=True)
class Plan:
    mode: Mode  # Live or Offline, never Auto
    # The seed's --dst: spec.target.path, else the target's default directory for the VE's kind; the copy
    # lands in <target_path>/<copy UUID> (libvirt). None: neither given nor reported.
    target_path: str | None
    # The copy's UUID: the VE's own, or for a clone a new one every pass derives alike. None: no VE seen.
    copy_uuid: str | None
    disposition: SourceDisposition

    def recorded(self) -> PlanStatus:
        """What status keeps of it when the job starts (the mode has a field of its own)."""
        return PlanStatus(target_path=self.target_path, copy_uuid=self.copy_uuid, source_disposition=self.disposition)


def resolve_mode(requested: Mode, ve: VEFacts) -> Mode:
    """Auto: live for running and paused VEs, offline for stopped and suspended ones."""
    if requested != Mode.AUTO:
        return requested
    return Mode.LIVE if ve.state.live else Mode.OFFLINE


def disposition_for(spec: MigrationSpec, ve: VEFacts | None) -> SourceDisposition:
    """What becomes of the source (the seed): kept by a clone, containers renamed, VMs removed."""
    if spec.clone:
        return SourceDisposition.KEPT
    if ve is not None and ve.type == VEKind.CONTAINER:
        return SourceDisposition.RENAMED_MIGRATED
    return SourceDisposition.REMOVED


def clone_uuid(uid: str) -> str:
    """A clone's UUID, derived from the migration's UID: every pass, and a restarted operator, gets the same."""
    return str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"vemigrate:{uid}"))


def default_path(target: HostStatus | None, kind: VEKind | None) -> str | None:
    """The target's own directory for new VEs of this kind, as its probe reported it."""
    if target is None:
        return None
    if kind == VEKind.CONTAINER and target.default_container_path:
        return target.default_container_path
    return target.default_path


def resolve(
    uid: str, spec: MigrationSpec, ve: VEFacts | None, target: HostStatus | None, stored: MigrationStatus | None
) -> Plan:
    """The plan from what the job recorded when it started, else from the spec, the VE (on the source this
    pass) and the target's facts. `stored` None: a fresh resolution (the pre-flight checks of an attempt)."""
    recorded = stored.plan if stored is not None else None
    mode: Mode
    if stored is not None and stored.mode is not None and stored.mode != Mode.AUTO:
        mode = stored.mode
    else:
        mode = resolve_mode(spec.mode, ve) if ve is not None else Mode.OFFLINE
    if recorded is not None:
        return Plan(
            mode=mode,
            target_path=recorded.target_path,
            copy_uuid=recorded.copy_uuid,
            disposition=recorded.source_disposition or disposition_for(spec, ve),
        )
    copy_uuid = clone_uuid(uid) if spec.clone else ve.uuid if ve is not None else None
    return Plan(
        mode=mode,
        target_path=spec.target.path or default_path(target, ve.type if ve is not None else None),
        copy_uuid=copy_uuid,
        disposition=disposition_for(spec, ve),
    )
