"""What one reconcile pass saw: plain facts about the VE, both hosts, the job and the other migrations.

Drivers and the kube layer fill these in; `decide` reads them. `None` always means "not known this
pass" (a host did not answer), which is different from "known to be absent".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from vemigrate.api.host import HostStatus, VEKind
from vemigrate.api.migration import FINAL_PHASES
from vemigrate.api.reasons import Reason

_FINAL = frozenset(p.value for p in FINAL_PHASES)


class VEState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"
    SUSPENDED = "suspended"  # saved state on disk (libvirt managed save, prlctl suspend)
    MIGRATING = "migrating"  # paused by the hypervisor for the final switchover
    OTHER = "other"

    @property
    def live(self) -> bool:
        """States that migrate live (the seed: running and paused VMs, running containers)."""
        return self in (VEState.RUNNING, VEState.PAUSED, VEState.MIGRATING)


@dataclass(frozen=True)
class NFSFacts:
    """NFS use inside a container, as far as the live-migration rules care."""

    client: bool = False
    open_device_files: int = 0  # block and character device files shared over NFS that are open
    remote_locks: bool = False
    overmounted: bool = False


@dataclass(frozen=True)
class VEFacts:
    """One VE as a host reports it."""

    name: str
    uuid: str
    type: VEKind
    state: VEState
    memory_bytes: int | None = None
    vcpus: int = 1
    disk_bytes: int | None = None  # what a copy needs on the target (allocated size of every disk)
    bridges: tuple[str, ...] = ()
    snapshots: int | None = None
    linked_clone: bool | None = None  # a linked clone, or the base of one (qcow2 backing chains)
    enter_sessions: int | None = None  # open `prlctl enter` sessions; None: the driver cannot tell
    ipsec: bool | None = None
    nfs: NFSFacts | None = None
    nfs_server: bool | None = None
    guest_os_installed: bool | None = None
    storage_path: str | None = None  # directory holding the VE's files on its host
    disk_paths: tuple[str, ...] = ()  # the VE's disk files on its host
    private_area: str | None = None  # a container's root file system directory on its host
    shared_storage: bool = False  # on Virtuozzo Storage or NFS: nothing to copy
    # The disk files the target host sees as the very same files (storage both hosts share, found by the
    # driver's probe before the checks); None: not probed, or it could not tell.
    shared_disks: tuple[str, ...] | None = None
    macs: tuple[str, ...] = ()
    # After a failed post-copy migration (libvirt: paused or running with reason post-copy failed): the
    # VE's running state is split between the hosts, so neither copy alone is complete.
    post_copy_failed: bool = False
    # libvirt's reason says post-copy is under way (paused on the source, running on the target). Normal
    # while the job runs; once the job has ended (libvirt gave up, the link broke) QEMU may still be
    # pulling pages, so the VE is split between the hosts as after a failed post-copy.
    in_post_copy: bool = False
    # What the copy does not move, one description each ("NVRAM /var/lib/.../x_VARS.fd", "vTPM state",
    # "hdc: cdrom /srv/x.iso"): it would be lost with the source, so such VEs are refused.
    unmovable: tuple[str, ...] = ()
    # Disks that are not files ("vdb: block device /dev/sdb", pool volumes, network disks): left where
    # they are, so they migrate only live on storage both hosts see (shared_storage).
    non_file_disks: tuple[str, ...] = ()


@dataclass(frozen=True)
class HostObservation:
    """A host as seen this pass. `reachable` None: not asked; False: asked, no answer."""

    name: str
    reachable: bool | None
    exists: bool = True  # False: no HypervisorHost of that name in the migration's namespace
    facts: HostStatus | None = None
    error: str | None = None  # why it was not reachable, for the condition message
    error_reason: Reason | None = None  # HostUnreachable, HostKeyMismatch, SecretNotFound, ...
    permanent: bool = False  # waiting will not help (wrong key, host key mismatch, missing Secret)
    max_inbound: int = 2
    max_outbound: int = 2


class JobState(StrEnum):
    NONE = "None"  # no job for this migration exists on the host
    RUNNING = "Running"
    SWITCHOVER = "Switchover"  # the VE is paused for the final copy
    POST_COPY = "PostCopy"  # the VE runs on the target, pages still arriving
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELLED = "Cancelled"


class ErrorClass(StrEnum):
    RETRYABLE = "Retryable"  # a later attempt may pass (network, timeout, busy host)
    PERMANENT = "Permanent"  # it will fail the same way again (unsupported, invalid)
    UNKNOWN_STATE = "UnknownState"  # cannot tell what happened: wait and observe


@dataclass(frozen=True)
class JobStats:
    """Counters of a running or finished job, from the hypervisor."""

    bytes_processed: int | None = None
    bytes_remaining: int | None = None
    bytes_total: int | None = None
    dirty_rate_bytes_per_second: int | None = None
    iteration: int | None = None
    downtime_ms: int | None = None
    # When a finished live job paused the source for the switchover (or began post-copy), as the job
    # recorded it on the source host (that host's clock).
    switchover_time: datetime | None = None
    switchover_evidence: str | None = None  # what switchover_time was read from, for the Event


@dataclass(frozen=True)
class JobObservation:
    """The long-running migration job keyed by the migration's UID. None in `Observation.job`: unknown."""

    state: JobState
    stats: JobStats = field(default_factory=JobStats)
    error_reason: Reason | None = None
    error_message: str | None = None
    error_class: ErrorClass | None = None
    # The files a completed job found on the target at its end (its last command there), which the
    # verification of the copy need not look for again.
    on_target: frozenset[str] = frozenset()


@dataclass(frozen=True)
class OtherMigration:
    """Another migration in the same operator's view, for queueing and duplicate detection."""

    uid: str
    created: datetime
    phase: str
    source_host: str
    target_host: str
    ve_name: str
    name: str = ""
    # The order this operator first saw the migrations in (the watch's, which is the order they were
    # created in): creationTimestamp has whole seconds, this orders those of one second. 0: unknown.
    arrival: int = 0
    # What holds a waiting migration back besides the slots (core/admission.py: it then holds no place
    # in the queue): its maintenance window (spec.notBefore), its retry backoff (status.nextAttemptTime),
    # a Cancel or a deletion.
    not_before: datetime | None = None
    next_attempt: datetime | None = None
    cancelling: bool = False


def others_in_view(indexed: Iterable[OtherMigration], decided: Iterable[OtherMigration]) -> list[OtherMigration]:
    """Each other migration the API has, once: as this operator last decided it (`decided`: admitted, or
    waiting again) while its status write may not have reached the API's view yet, else as the API shows
    it. A final phase the API shows always stands."""
    mine = {o.uid: o for o in decided}
    return [o if o.phase in _FINAL else mine.get(o.uid, o) for o in indexed]


@dataclass(frozen=True)
class Observation:
    """Everything one pass knows. A field left None was not observed (or could not be)."""

    generation: int = 1
    deleting: bool = False
    source: HostObservation | None = None
    target: HostObservation | None = None
    source_ve: VEFacts | None = None  # None with source.reachable True: the VE is not on the source
    target_ve: VEFacts | None = None  # the VE (by name or UUID) on the target, if any
    target_verified: bool | None = None  # the target copy is complete (state as expected, checksums equal)
    source_disposed: bool | None = None  # the source was removed or renamed as the spec asks
    target_leftovers: bool | None = None  # half-built target files or definitions of this migration
    ssh_port_open: bool | None = None  # the source reaches the target's SSH port
    job: JobObservation | None = None
    created: datetime | None = None
    arrival: int = 0  # as OtherMigration.arrival
    uid: str = ""
    others: tuple[OtherMigration, ...] = ()
    cluster_limit: int = 0  # 0: no cluster-wide limit
    # Every HypervisorHost of the namespace (existence and limits), read by a waiting pass only when its
    # turn in the queue depends on other hosts' limits (admission.needs_every_host); None: not read.
    hosts: tuple[HostObservation, ...] | None = None
