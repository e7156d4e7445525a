"""Reasons: the CamelCase words the operator writes where users and programs read them.

status.reason, status.failure.reason, the reasons of the conditions of migrations and HypervisorHosts,
Events' reasons and DriverError.reason are members of `Reason` (besides a phase's name, and a
`QueueCause` in Queued). The values are a contract: alert rules, Argo CD's health check, dashboards
and scripts match on them, so a value never changes. docs/api.md explains each one (a unit test keeps
that table and this enum the same).
"""

from __future__ import annotations

from enum import StrEnum, unique


@unique  # two members with one value would make one an alias: a reason documented twice
class Reason(StrEnum):
    # The outcome of a migration: the Succeeded condition and status.reason.
    MIGRATED = "Migrated"
    ALREADY_ON_TARGET = "AlreadyOnTarget"
    DRY_RUN = "DryRun"
    IN_PROGRESS = "InProgress"
    NOT_FAILED = "NotFailed"

    # The PreflightPassed condition.
    ALL_CHECKS_PASSED = "AllChecksPassed"
    NOT_CHECKED = "NotChecked"
    PREFLIGHT_FAILED = "PreflightFailed"

    # A migration observes and waits (the Progressing condition) or tells a story (Events).
    STATE_UNKNOWN = "StateUnknown"
    ABORTING = "Aborting"
    CLEANING_UP = "CleaningUp"
    CANCEL_TOO_LATE = "CancelTooLate"
    TARGET_MIGRATING = "TargetMigrating"
    COMPLETED_BEFORE_ABORT = "CompletedBeforeAbort"
    RECONCILE_ERROR = "ReconcileError"
    START_JOB_FAILED = "StartJobFailed"
    ABORT_JOB_FAILED = "AbortJobFailed"
    FORCE_COMPLETE_FAILED = "ForceCompleteFailed"
    CLEANUP_TARGET_FAILED = "CleanupTargetFailed"
    DISPOSE_SOURCE_FAILED = "DisposeSourceFailed"

    # Why a migration failed or rolled back (status.failure.reason), decided by the phase machine.
    INVALID_SPEC = "InvalidSpec"
    HOST_NOT_FOUND = "HostNotFound"
    DUPLICATE_MIGRATION = "DuplicateMigration"
    VE_NOT_FOUND = "VENotFound"
    PROGRESS_TIMEOUT = "ProgressTimeout"
    COMPLETION_TIMEOUT = "CompletionTimeout"
    TARGET_VERIFICATION_FAILED = "TargetVerificationFailed"
    ROLLBACK_INCOMPLETE = "RollbackIncomplete"
    NEEDS_ATTENTION = "NeedsAttention"
    ROLLED_BACK = "RolledBack"
    CANCELLED = "Cancelled"
    ABORTED = "Aborted"
    MIGRATION_FAILED = "MigrationFailed"

    # A host: its Reachable condition, and a failure when a migration's host cannot be used. From the
    # HypervisorHost's Secrets (kube/hosts.py), then the connection (drivers).
    PROBED = "Probed"
    SECRET_NOT_FOUND = "SecretNotFound"
    SECRET_FORBIDDEN = "SecretForbidden"
    SECRET_NOT_MARKED = "SecretNotMarked"
    SECRET_NOT_TEXT = "SecretNotText"
    SECRET_KEY_MISSING = "SecretKeyMissing"
    HOST_UNREACHABLE = "HostUnreachable"
    HOST_NOT_RESPONDING = "HostNotResponding"
    HOST_KEY_MISMATCH = "HostKeyMismatch"
    AUTHENTICATION_FAILED = "AuthenticationFailed"
    NO_HOST_KEY = "NoHostKey"
    INVALID_KNOWN_HOSTS = "InvalidKnownHosts"
    INVALID_PRIVATE_KEY = "InvalidPrivateKey"
    CONNECTION_LOST = "ConnectionLost"
    SSH_ERROR = "SSHError"
    COMMAND_FAILED = "CommandFailed"
    DRIVER_UNAVAILABLE = "DriverUnavailable"
    UNSAFE_LIBVIRT_URI = "UnsafeLibvirtURI"
    LIBVIRT_UNREACHABLE = "LibvirtUnreachable"
    LIBVIRT_TIMEOUT = "LibvirtTimeout"
    LIBVIRT_ERROR = "LibvirtError"
    PRLCTL_MISSING = "PrlctlMissing"
    PRLCTL_ERROR = "PrlctlError"
    PRLCTL_OUTPUT = "PrlctlOutput"
    DISPATCHER_UNAVAILABLE = "DispatcherUnavailable"

    # What a migration job reported (drivers/jobfailure.py, prlctl_output.py, hostjob.py).
    JOB_LOST = "JobLost"
    JOB_KILLED = "JobKilled"
    NO_SPACE = "NoSpace"
    NAME_IN_USE = "NameInUse"
    NETWORK_MISSING = "NetworkMissing"
    CPU_INCOMPATIBLE = "CPUIncompatible"
    UNSUPPORTED = "Unsupported"
    PEER_UNAVAILABLE = "PeerUnavailable"
    TIMEOUT = "Timeout"
    TARGET_PATH_IN_USE = "TargetPathInUse"
    CHECKSUM_MISMATCH = "ChecksumMismatch"
    INVALID_ARGUMENTS = "InvalidArguments"
    VE_FROZEN = "VEFrozen"

    # What a driver refuses to do, before or instead of acting.
    INVALID_UID = "InvalidUID"
    INVALID_ATTEMPT = "InvalidAttempt"
    INVALID_VE = "InvalidVE"
    INVALID_TARGET_PATH = "InvalidTargetPath"
    RELATIVE_TARGET_PATH = "RelativeTargetPath"
    UNSUPPORTED_BY_PRLCTL = "UnsupportedByPrlctl"
    CHANGE_SID_NEEDS_CLONE = "ChangeSidNeedsClone"
    CHANGE_SID_UNSUPPORTED = "ChangeSidUnsupported"
    TUNNELLESS_CONTAINER = "TunnellessContainer"
    LIVE_CONTAINER_UNSUPPORTED = "LiveContainerUnsupported"
    CLONE_NEEDS_STOPPED_VM = "CloneNeedsStoppedVM"
    CLONE_OF_SUSPENDED_VM = "CloneOfSuspendedVM"
    NO_PRIVATE_AREA = "NoPrivateArea"
    UNSUPPORTED_DISK = "UnsupportedDisk"
    UNSUPPORTED_DISPOSITION = "UnsupportedDisposition"
    TARGET_PATH_ON_SHARED_STORAGE = "TargetPathOnSharedStorage"
    TARGET_PATH_UNKNOWN = "TargetPathUnknown"
    SHARED_STORAGE_UNKNOWN = "SharedStorageUnknown"
    SOURCE_STILL_RUNNING = "SourceStillRunning"
    SOURCE_NOT_RENAMED = "SourceNotRenamed"
    TARGET_ACTIVE = "TargetActive"
    TARGET_NOT_EMPTY = "TargetNotEmpty"
    TARGET_OWNERSHIP_UNKNOWN = "TargetOwnershipUnknown"
