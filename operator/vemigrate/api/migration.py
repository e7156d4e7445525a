"""VirtualEnvironmentMigration: one VE moved (or cloned) from a source host to a target host."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import Field
from pydantic.config import JsonDict

from vemigrate.api.checks import CheckName, CheckResult
from vemigrate.api.common import API_VERSION, Condition, Model, ObjectName

KIND = "VirtualEnvironmentMigration"
PLURAL = "virtualenvironmentmigrations"
SINGULAR = "virtualenvironmentmigration"
SHORT_NAMES = ["vem", "vems"]

# VE names reach commands on hosts. They are always quoted there; refusing shell metacharacters here
# as well means a hostile name never gets that far. Spaces stay legal: Virtuozzo VE names use them.
VE_NAME = r"^[A-Za-z0-9_][A-Za-z0-9 ._:+@-]*$"


class QueueCause(StrEnum):
    """Why a migration waits in Queued: the Progressing condition's reason there (queuedReason says more)."""

    WAITING_FOR_HOST = "WaitingForHost"  # a HypervisorHost it names does not exist yet
    MAINTENANCE_WINDOW = "MaintenanceWindow"  # spec.notBefore is ahead: paused on purpose
    RETRY_BACKOFF = "RetryBackoff"  # an attempt failed and the next one waits out spec.retry's backoff
    CONCURRENCY_LIMIT = "ConcurrencyLimit"  # the cluster's or a host's limit of migrations in flight


class Phase(StrEnum):
    PENDING = "Pending"
    QUEUED = "Queued"
    VALIDATING = "Validating"
    TRANSFERRING = "Transferring"
    SWITCHOVER = "Switchover"
    FINALIZING = "Finalizing"
    SUCCEEDED = "Succeeded"
    ROLLING_BACK = "RollingBack"
    FAILED = "Failed"
    CANCELLED = "Cancelled"

    @property
    def final(self) -> bool:
        return self in FINAL_PHASES


FINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED})


class Mode(StrEnum):
    AUTO = "Auto"
    LIVE = "Live"
    OFFLINE = "Offline"


class Action(StrEnum):
    CANCEL = "Cancel"
    FORCE_COMPLETE = "ForceComplete"


class ConditionType(StrEnum):
    PREFLIGHT_PASSED = "PreflightPassed"
    PROGRESSING = "Progressing"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class SourceDisposition(StrEnum):
    REMOVED = "Removed"
    RENAMED_MIGRATED = "RenamedMigrated"
    KEPT = "Kept"


class SourceRef(Model):
    """Where the VE is now."""

    host: ObjectName = Field(description="Name of the HypervisorHost (same namespace) the VE runs on.")
    name: Annotated[str, Field(min_length=1, max_length=128, pattern=VE_NAME)] = Field(
        description=(
            "The VE's name or UUID on the source host (prlctl migrate <VE>). Letters, digits, spaces "
            "and . _ : + @ - only."
        )
    )


class TargetRef(Model):
    """Where the VE goes."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.path) || self.path.startsWith('/')",
                    "message": "target.path must be an absolute directory (prlctl migrate --dst=<path>)",
                    "fieldPath": ".path",
                },
                {
                    "rule": "!has(self.path) || !(self.path.contains('/../') || self.path.endsWith('/..'))",
                    "message": "target.path must not contain '..' components",
                    "fieldPath": ".path",
                },
            ]
        }
    }

    host: ObjectName = Field(description="Name of the HypervisorHost (same namespace) to move the VE to.")
    path: Annotated[str, Field(max_length=1024, pattern=r"^[^\x00-\x1f\x7f]*$")] | None = Field(
        default=None,
        description=(
            "Absolute directory on the target host for the VE's files (prlctl migrate --dst). The VE "
            "lands in <path>/<VE_UUID>. Default: the target host's default VE location."
        ),
    )


class Timeouts(Model):
    """When a migration that moves too slowly is stopped (and rolled back)."""

    completion_per_gib_seconds: int = Field(
        default=300,
        ge=1,
        le=86400,
        alias="completionPerGiBSeconds",
        description=(
            "Allowed transfer time per GiB of memory and disk to move (libvirt progress timeout "
            "scaled by size, as KubeVirt's completionTimeoutPerGiB). Past it, a live migration "
            "is aborted, or force-completed when postCopy is on."
        ),
    )
    progress_seconds: int = Field(
        default=300,
        ge=10,
        le=86400,
        description="Longest time without any progress in bytes before the migration is aborted.",
    )


class ChecksSpec(Model):
    """Pre-flight checks to leave out."""

    skip: list[CheckName] = Field(
        default_factory=list,
        max_length=64,
        description=(
            "Names of pre-flight checks not to run (reported as Skipped). Use only when you know the "
            "requirement is met some other way, for example a CPU pool or a feature mask."
        ),
    )


class RetrySpec(Model):
    """What to do when an attempt fails for a reason that may pass (an unreachable host, a timeout)."""

    max_attempts: int = Field(
        default=1, ge=1, le=20, description="Attempts in all, the first included. 1 means no retry."
    )
    backoff_seconds: int = Field(
        default=30,
        ge=1,
        le=86400,
        description="Wait before the second attempt; it doubles for each further one (capped at one hour).",
    )


# Every spec field except `action` is immutable: one rule per field, so the message names it.
_IMMUTABLE = (
    "source",
    "target",
    "mode",
    "clone",
    "changeSid",
    "tunnel",
    "compression",
    "bandwidthMiBps",
    "maxDowntimeMs",
    "autoConverge",
    "postCopy",
    "timeouts",
    "checks",
    "dryRun",
    "retry",
    "notBefore",
)


def _immutability_rules() -> list[JsonDict]:
    return [
        {
            "rule": f"has(self.{f}) == has(oldSelf.{f}) && (!has(self.{f}) || self.{f} == oldSelf.{f})",
            "message": f"spec.{f} is immutable: only spec.action may change; create a new migration instead",
            "fieldPath": f".{f}",
            "reason": "FieldValueForbidden",
        }
        for f in _IMMUTABLE
    ]


class MigrationSpec(Model):
    """What to migrate, where, and how (the options of prlctl migrate)."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "self.source.host != self.target.host",
                    "message": "target.host must differ from source.host",
                    "fieldPath": ".target.host",
                },
                {
                    "rule": "!self.changeSid || self.clone",
                    "message": "changeSid is only allowed with clone: true (prlctl migrate --changesid needs --clone)",
                    "fieldPath": ".changeSid",
                },
                {
                    "rule": "!has(oldSelf.action) || oldSelf.action != 'Cancel' || "
                    "(has(self.action) && self.action == 'Cancel')",
                    "message": "action: Cancel cannot be withdrawn or changed",
                    "fieldPath": ".action",
                },
                *_immutability_rules(),
            ]
        }
    }

    source: SourceRef = Field(description="The VE to migrate and the host it is on.")
    target: TargetRef = Field(description="The host to migrate it to, and optionally the directory.")
    mode: Mode = Field(
        default=Mode.AUTO,
        description=(
            "Auto: live for running and paused VEs, offline for stopped and suspended ones. Live fails "
            "the pre-flight checks for a stopped VE; Offline fails them for a running one."
        ),
    )
    clone: bool = Field(
        default=False,
        description=(
            "Keep the source VE (prlctl migrate --clone). The copy gets a new UUID and MAC address. "
            "Default: a VM is removed from the source, a container's private area and config are "
            "renamed with a .migrated suffix."
        ),
    )
    change_sid: bool = Field(
        default=False,
        description=(
            "Give a cloned Windows VM a new SID (--changesid; only with clone). For Windows Server "
            "2019 use Sysprep instead."
        ),
    )
    tunnel: bool = Field(
        default=True,
        description=(
            "Carry the migration through an encrypted tunnel. false is --no-tunnel: faster, "
            "unencrypted, needs the target's firewall open; refused for containers."
        ),
    )
    compression: bool = Field(default=True, description="Compress the data sent (false is --no-compression).")
    bandwidth_mib_ps: int | None = Field(
        default=None,
        ge=1,
        le=1048576,
        alias="bandwidthMiBps",
        description=(
            "Cap on migration bandwidth in MiB/s: libvirt's for a live migration, the copy stream's (after "
            "compression) offline. Unset: no cap."
        ),
    )
    max_downtime_ms: int | None = Field(
        default=None,
        ge=1,
        le=600000,
        description="Longest pause the VE may see at switchover, in milliseconds (live only).",
    )
    auto_converge: bool = Field(
        default=False,
        description="Throttle the VE's vCPUs when memory is dirtied faster than it is sent (live only).",
    )
    post_copy: bool = Field(
        default=False,
        description=(
            "Allow switching to post-copy when the migration does not converge: the VE resumes on the "
            "target and fetches missing pages. A network failure then loses the VE (live only)."
        ),
    )
    timeouts: Timeouts = Field(
        default_factory=Timeouts,
        description="Progress and completion timeouts.",
        json_schema_extra={"default": {}},
    )
    checks: ChecksSpec = Field(
        default_factory=ChecksSpec,
        description="Pre-flight checks to skip.",
        json_schema_extra={"default": {}},
    )
    dry_run: bool = Field(
        default=False,
        description="Run the pre-flight checks only and report them; move nothing.",
    )
    action: Action | None = Field(
        default=None,
        description=(
            "The only field that may change after creation. Cancel: stop and roll back (the VE stays on "
            "the source). ForceComplete: finish a live migration now (pause the VE, or switch to "
            "post-copy when postCopy is on)."
        ),
    )
    retry: RetrySpec = Field(
        default_factory=RetrySpec,
        description="Retries of retryable failures.",
        json_schema_extra={"default": {}},
    )
    not_before: datetime | None = Field(
        default=None,
        description="Start of the maintenance window: the migration stays Queued until then (RFC 3339).",
    )


class CheckStatus(Model):
    """The outcome of one pre-flight check."""

    name: CheckName = Field(description="Which requirement of the migration guide was checked.")
    result: CheckResult = Field(description="Passed, Failed or Skipped.")
    message: str = Field(
        default="", max_length=4096, description="What was compared, with the numbers, and what to do."
    )


class Progress(Model):
    """How far the transfer is. Percent never goes backwards."""

    percent: int = Field(default=0, ge=0, le=100, description="Share of the work done, 0-100; never decreases.")
    bytes_processed: int | None = Field(
        default=None,
        ge=0,
        description=(
            "Bytes sent so far, as the hypervisor counts them (a live copy skips zero pages and sends "
            "dirtied pages again, so it can lag or pass bytesTotal while running); bytesTotal once the "
            "transfer completed."
        ),
    )
    bytes_remaining: int | None = Field(default=None, ge=0, description="Bytes still to send (estimate).")
    bytes_total: int | None = Field(default=None, ge=0, description="Bytes to send in all (estimate).")
    dirty_rate_bytes_per_second: int | None = Field(
        default=None, ge=0, description="How fast the running VE dirties memory (live only)."
    )
    iteration: int | None = Field(default=None, ge=0, description="Memory copy pass (live only).")
    eta_seconds: int | None = Field(default=None, ge=0, description="Estimated seconds to completion.")
    last_progress_time: datetime | None = Field(
        default=None, description="When bytesProcessed last grew; the progress timeout counts from here."
    )


class PhaseTransition(Model):
    """When the migration entered a phase."""

    phase: Phase = Field(description="The phase entered.")
    time: datetime = Field(description="When it was entered.")


class Failure(Model):
    """Why the migration failed."""

    phase: Phase = Field(description="The phase the migration was in when it failed.")
    reason: str = Field(max_length=1024, description="One CamelCase word a program can match on.")
    message: str = Field(default="", max_length=32768, description="What happened and what to do.")
    retryable: bool = Field(default=False, description="Whether a later attempt may pass (spec.retry applies).")


class Result(Model):
    """Where the VE is after a successful migration."""

    target_name: str | None = Field(default=None, max_length=256, description="The VE's name on the target.")
    target_uuid: str | None = Field(
        default=None, max_length=64, alias="targetUUID", description="The VE's UUID on the target."
    )
    source_disposition: SourceDisposition | None = Field(
        default=None,
        description=(
            "What became of the source: Removed (VM), RenamedMigrated (container: .migrated suffix) or Kept (clone)."
        ),
    )


class PlanStatus(Model):
    """What the job was started with, recorded as it starts: every later pass (and a restarted operator)
    acts on these, not on facts that may have changed since (a host's default directory)."""

    target_path: str | None = Field(
        default=None,
        max_length=1024,
        description="The directory the copy goes under: spec.target.path, else the target's default for the VE's kind.",
    )
    copy_uuid: str | None = Field(
        default=None,
        max_length=64,
        alias="copyUUID",
        description="The copy's UUID: the VE's own, or a clone's new one.",
    )
    source_disposition: SourceDisposition | None = Field(
        default=None, description="What becomes of the source once the copy is verified."
    )


class MigrationStatus(Model):
    """What the operator observed and did. Written by the operator only."""

    phase: Phase = Field(default=Phase.PENDING, description="Where the migration is in its life.")
    mode: Mode | None = Field(default=None, description="The mode resolved from spec.mode and the VE's state.")
    plan: PlanStatus | None = Field(
        default=None, description="The target directory, copy UUID and source disposition the current job started with."
    )
    driver: str | None = Field(default=None, max_length=64, description="The driver moving the VE: libvirt or prlctl.")
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        description="PreflightPassed, Progressing, Succeeded and Failed.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    checks: list[CheckStatus] = Field(
        default_factory=list, max_length=64, description="The pre-flight checks and their outcomes."
    )
    progress: Progress | None = Field(default=None, description="Transfer progress.")
    phase_transitions: list[PhaseTransition] = Field(
        default_factory=list, max_length=64, description="Each phase entered, with its time."
    )
    start_time: datetime | None = Field(default=None, description="When the first attempt started validating.")
    completion_time: datetime | None = Field(default=None, description="When a final phase was reached.")
    downtime_ms: int | None = Field(
        default=None,
        ge=0,
        description="How long the VE was paused at switchover, as the hypervisor measured it.",
    )
    attempts: int = Field(default=0, ge=0, description="Attempts started so far.")
    next_attempt_time: datetime | None = Field(
        default=None, description="When the next attempt starts after a retryable failure."
    )
    failure: Failure | None = Field(default=None, description="Why it failed, when it failed.")
    reason: str | None = Field(
        default=None,
        max_length=1024,
        description=(
            "Why it ended: the reason of the Succeeded or Failed condition that is True (Cancelled when "
            "cancelled); while rolling back or waiting to retry, the failure's reason. "
            "What `kubectl get vem -o wide` shows as REASON."
        ),
    )
    result: Result | None = Field(default=None, description="Where the VE is now, when it succeeded.")
    queued_reason: str | None = Field(default=None, max_length=4096, description="Why the migration waits in Queued.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation this status was computed from."
    )


class VirtualEnvironmentMigration(Model):
    """Moves a virtual machine or container from one hypervisor host to another, like prlctl migrate."""

    api_version: str = Field(default=API_VERSION, description="vemigrate.io/v1alpha1")
    kind: str = Field(default=KIND, description="VirtualEnvironmentMigration")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Standard object metadata.")
    spec: MigrationSpec = Field(description="What to migrate, where, and how.")
    status: MigrationStatus | None = Field(default=None, description="Observed state, written by the operator.")
