"""Names of the pre-flight checks: one per requirement or restriction of the migration guide.

They live in the API because users name them in `spec.checks.skip` and read them in `status.checks`.
"""

from __future__ import annotations

from enum import StrEnum


class CheckName(StrEnum):
    # Requirements for every migration.
    SOURCE_VE = "SourceVE"  # the VE exists on the source host and can be read
    TARGET_FREE = "TargetNameFree"  # the target does not already hold a VE of that name or UUID
    VE_STATE = "VEState"  # the VE's state allows the requested mode (live: running or paused)
    TARGET_DISK = "TargetDiskSpace"
    TARGET_MEMORY = "TargetMemory"
    TARGET_CPU = "TargetCPU"
    SSH_PORT = "SSHPort"  # a direct SSH connection to port 22 of the target
    BRIDGES = "BridgeNames"  # the same bridge names on both hosts
    SNAPSHOTS = "NoSnapshots"
    LINKED_CLONES = "NoLinkedClones"
    MOVABLE_STORAGE = "MovableStorage"  # everything the VE keeps on its host moves with it (or is shared)
    SHARED_STORAGE = "SharedStorage"  # which disks both hosts share (left in place live); not with target.path
    VE_TYPE = "NoContainerToVM"  # a container can only land on a host that runs containers
    TUNNEL = "TunnelledContainer"  # tunnelless migration of containers is not supported
    DRIVER_CAPABILITIES = "DriverCapabilities"  # the source's driver can do what the spec and the VE ask
    # Live migration only.
    ENCRYPTED_DISK_COPY = "EncryptedDiskCopy"  # tunnel: true can keep local disks encrypted in flight
    TIME_SYNC = "TimeSync"
    LINK_SPEED = "LinkSpeed"
    SUBNET = "SameSubnet"
    CPU_VENDOR = "CPUVendor"
    CPU_FEATURES = "CPUFeatures"
    CPUID_OVERRIDE = "CpuidOverride"
    ENTER_SESSIONS = "NoEnterSessions"
    IPSEC = "NoIPSec"
    NFS_CLIENT = "NFSClient"
    NFS_SERVER = "NoNFSServer"
    # Virtuozzo 6 to Virtuozzo Hybrid Server 7.
    V6_SOURCE_VERSION = "V6SourceVersion"
    V6_TARGET_VERSION = "V6TargetVersion"
    V6_VM_RUNNING = "V6VMRunning"
    V6_CONTAINER_STOPPED = "V6ContainerStopped"
    V6_GUEST_OS = "V6GuestOS"


class CheckResult(StrEnum):
    PASSED = "Passed"
    FAILED = "Failed"
    SKIPPED = "Skipped"
