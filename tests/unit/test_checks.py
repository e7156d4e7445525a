"""Pre-flight checks: given these facts, check X gives this result with a message saying this."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vemigrate.api.checks import CheckName, CheckResult
from vemigrate.api.host import Capability, CPUFacts, HostStatus, NetworkFacts, StorageFacts, VEKind, VersionFacts
from vemigrate.api.migration import CheckStatus, MigrationSpec, Mode
from vemigrate.core import checks
from vemigrate.core.checks import CheckInput, failed, is_virtuozzo6, run_checks, summary
from vemigrate.core.observation import NFSFacts, VEFacts, VEState
from vemigrate.core.plan import resolve

pytestmark = pytest.mark.unit

GIB = 1024**3
MIB = 1024**2
UUID = "3f1c2a9e-8d7b-4c1e-9a55-0e6f6d1b2c3d"
VZ7 = "Virtuozzo Hybrid Server 7.5.4"
VZ6 = "Virtuozzo 6.0.11-3466"
P, F, S = CheckResult.PASSED, CheckResult.FAILED, CheckResult.SKIPPED

LIVE_ONLY = {
    CheckName.TIME_SYNC,
    CheckName.LINK_SPEED,
    CheckName.SUBNET,
    CheckName.CPU_VENDOR,
    CheckName.CPU_FEATURES,
    CheckName.CPUID_OVERRIDE,
    CheckName.ENTER_SESSIONS,
    CheckName.IPSEC,
    CheckName.NFS_CLIENT,
    CheckName.NFS_SERVER,
}
V6_ONLY = {
    CheckName.V6_SOURCE_VERSION,
    CheckName.V6_TARGET_VERSION,
    CheckName.V6_VM_RUNNING,
    CheckName.V6_CONTAINER_STOPPED,
    CheckName.V6_GUEST_OS,
}


# -- builders -----------------------------------------------------------------------------------
def host(**overrides: Any) -> HostStatus:
    """A Virtuozzo Hybrid Server 7 host that meets every requirement."""
    facts = HostStatus(
        cpu=CPUFacts(vendor="Intel", model="Xeon", count=16, features=["sse4_2", "avx", "avx2"]),
        memory_total_bytes=64 * GIB,
        memory_free_bytes=32 * GIB,
        storage=[StorageFacts(path="/vz", free_bytes=500 * GIB, total_bytes=1000 * GIB)],
        network=NetworkFacts(bridges=["br0", "br1"], subnets=["192.0.2.0/24"], link_speed_mbps=10000),
        time_offset_ms=3,
        cpuid_override=True,
        nested=False,
        version=VersionFacts(product=VZ7),
        ve_types=[VEKind.VM, VEKind.CONTAINER],
        capabilities=list(Capability),
        default_path="/vz/vmprivate",
        encrypted_disk_copy=True,
    )
    return facts.model_copy(update=overrides)


# What each driver reports (drivers/libvirt/facts.py, drivers/prlctl.py), spelled out: the check is judged
# against the hosts as they are, not against the constants it is meant to catch.
QEMU = [Capability(c) for c in ("LiveVM", "OfflineVM", "Clone", "Bandwidth", "MaxDowntime", "AutoConverge", "PostCopy")]
LXC = [Capability(c) for c in ("OfflineContainer", "Clone", "Bandwidth")]
PRLCTL = [
    Capability(c)
    for c in (
        "LiveVM", "LiveContainer", "OfflineVM", "OfflineContainer", "Clone", "LiveClone", "SuspendedClone", "ChangeSid"
    )
]  # fmt: skip


def net(**overrides: Any) -> NetworkFacts:
    return NetworkFacts(bridges=["br0", "br1"], subnets=["192.0.2.0/24"], link_speed_mbps=10000).model_copy(
        update=overrides
    )


def cpu(**overrides: Any) -> CPUFacts:
    return CPUFacts(vendor="Intel", count=16, features=["sse4_2", "avx", "avx2"]).model_copy(update=overrides)


def version(product: str | None) -> VersionFacts:
    return VersionFacts(product=product)


def vm(**overrides: Any) -> VEFacts:
    """A running VM that passes every check."""
    base = VEFacts(
        name="web1",
        uuid=UUID,
        type=VEKind.VM,
        state=VEState.RUNNING,
        memory_bytes=2 * GIB,
        vcpus=2,
        disk_bytes=10 * GIB,
        bridges=("br0",),
        snapshots=0,
        linked_clone=False,
        enter_sessions=0,
        guest_os_installed=True,
    )
    return replace(base, **overrides)


def ct(**overrides: Any) -> VEFacts:
    """A running container that passes every check."""
    base = vm(type=VEKind.CONTAINER, ipsec=False, nfs=NFSFacts(), nfs_server=False, guest_os_installed=None)
    return replace(base, **overrides)


@dataclass
class Facts:
    """Everything a check sees; each field defaults to a case that passes."""

    ve: VEFacts = field(default_factory=vm)
    source: HostStatus = field(default_factory=host)
    target: HostStatus = field(default_factory=host)
    target_ve: VEFacts | None = None
    ssh: bool | None = True
    mode: Mode = Mode.AUTO  # requested (spec.mode)
    spec: dict[str, Any] = field(default_factory=dict)

    def input(self) -> CheckInput:
        data: dict[str, Any] = {
            "source": {"host": "node-a", "name": self.ve.name},
            "target": {"host": "node-b"},
            "mode": self.mode,
            **self.spec,
        }
        spec = MigrationSpec.model_validate(data)
        return CheckInput(
            spec=spec,
            plan=resolve("m1", spec, self.ve, self.target, None),  # as the phase machine resolves it
            ve=self.ve,
            source=self.source,
            target=self.target,
            target_ve=self.target_ve,
            ssh_port_open=self.ssh,
        )


def check(name: CheckName, facts: Facts) -> CheckStatus:
    return next(c for c in run_checks(facts.input()) if c.name == name)


def case(name: CheckName, result: CheckResult, fragment: str, id: str, **facts: Any) -> Any:
    return pytest.param(name, Facts(**facts), result, fragment, id=f"{name.value}-{id}")


V6_SOURCE = host(version=version(VZ6))
SHARED_DISK = "/mnt/nfs/web1.qcow2"
LOCAL_DISK = "/vz/images/web1-data.qcow2"

# -- the table: given these facts, check X gives <result> with a message containing <fragment> --
CASES = [
    # SourceVE: the VE was read, so it cannot fail here.
    case(CheckName.SOURCE_VE, P, f"VM 'web1' (UUID {UUID}), running", "read"),
    case(CheckName.SOURCE_VE, S, "skipped by spec.checks.skip", "skipped", spec={"checks": {"skip": ["SourceVE"]}}),
    # TargetNameFree
    case(CheckName.TARGET_FREE, P, "holds no VE named 'web1'", "free"),
    case(CheckName.TARGET_FREE, F, "already has a VE 'web1'", "same-name", target_ve=vm(uuid="other-uuid")),
    case(CheckName.TARGET_FREE, F, "same name and UUID", "same-both", target_ve=vm(state=VEState.STOPPED)),
    case(CheckName.TARGET_FREE, F, "with the same UUID", "same-uuid", target_ve=vm(name="web1-old")),
    case(
        CheckName.TARGET_FREE,
        F,
        "the name still collides",
        "clone-same-name",
        target_ve=vm(),
        spec={"clone": True},
    ),
    case(
        CheckName.TARGET_FREE,
        P,
        "a clone gets a new UUID",
        "clone-uuid-only",
        target_ve=vm(name="web1-old"),
        spec={"clone": True},
    ),
    # VEState
    case(CheckName.VE_STATE, P, "running: live migration", "running-auto"),
    case(CheckName.VE_STATE, P, "paused: live migration", "paused-vm", ve=vm(state=VEState.PAUSED)),
    case(CheckName.VE_STATE, P, "stopped: offline", "stopped-auto", ve=vm(state=VEState.STOPPED)),
    case(CheckName.VE_STATE, P, "suspended: offline", "suspended-ct", ve=ct(state=VEState.SUSPENDED)),
    case(CheckName.VE_STATE, P, "running: live", "live-running", mode=Mode.LIVE),
    case(
        CheckName.VE_STATE,
        F,
        "mode Live was requested but VM 'web1' is stopped",
        "live-on-stopped",
        mode=Mode.LIVE,
        ve=vm(state=VEState.STOPPED),
    ),
    case(
        CheckName.VE_STATE,
        F,
        "stop or suspend it first, or use mode Auto",
        "offline-on-running",
        mode=Mode.OFFLINE,
    ),
    case(CheckName.VE_STATE, F, "container 'web1' is paused", "paused-ct", ve=ct(state=VEState.PAUSED)),
    case(CheckName.VE_STATE, F, "being migrated already", "migrating", ve=vm(state=VEState.MIGRATING)),
    case(CheckName.VE_STATE, F, "is other", "other", ve=vm(state=VEState.OTHER)),
    # TargetDiskSpace
    case(CheckName.TARGET_DISK, P, "500 GiB free at /vz (holding /vz/vmprivate)", "enough"),
    case(
        CheckName.TARGET_DISK,
        F,
        "10 GiB free at /vz (holding /vz/vmprivate); VM 'web1' needs 10 GiB + 5% margin = 10.5 GiB",
        "margin",
        target=host(storage=[StorageFacts(path="/vz", free_bytes=10 * GIB)]),
    ),
    case(
        CheckName.TARGET_DISK,
        P,
        "at /srv/big (holding /srv/big/ves)",
        "longest-prefix",
        target=host(
            storage=[StorageFacts(path="/", free_bytes=GIB), StorageFacts(path="/srv/big", free_bytes=100 * GIB)]
        ),
        spec={"target": {"host": "node-b", "path": "/srv/big/ves"}},
    ),
    case(
        CheckName.TARGET_DISK,
        F,
        "1 GiB free at / (holding /srv/bigger)",
        "prefix-by-component",
        target=host(
            storage=[StorageFacts(path="/", free_bytes=GIB), StorageFacts(path="/srv/big", free_bytes=100 * GIB)]
        ),
        spec={"target": {"host": "node-b", "path": "/srv/bigger"}},
    ),
    case(
        CheckName.TARGET_DISK,
        P,
        "shared storage: no disk data is copied",
        "shared",
        ve=vm(shared_storage=True, disk_bytes=900 * GIB),
        target=host(storage=[StorageFacts(path="/vz", free_bytes=GIB, shared=True)]),
    ),
    case(
        CheckName.TARGET_DISK,
        F,
        "1 GiB free at /srv/fast (holding /srv/fast/images)",
        "live-disks-keep-their-paths",
        ve=vm(storage_path="/srv/fast/images", disk_paths=("/srv/fast/images/web1.qcow2",)),
        target=host(
            storage=[StorageFacts(path="/vz", free_bytes=500 * GIB), StorageFacts(path="/srv/fast", free_bytes=GIB)]
        ),
    ),
    case(
        CheckName.TARGET_DISK,
        P,
        "500 GiB free at /vz (holding /vz/live)",
        "live-target-path",
        ve=vm(storage_path="/srv/fast/images", disk_paths=("/srv/fast/images/web1.qcow2",)),
        target=host(
            storage=[StorageFacts(path="/vz", free_bytes=500 * GIB), StorageFacts(path="/srv/fast", free_bytes=GIB)]
        ),
        spec={"target": {"host": "node-b", "path": "/vz/live"}},
    ),
    case(
        CheckName.TARGET_DISK,
        P,
        "every disk of VM 'web1' is on storage both hosts share",
        "live-all-disks-shared",
        ve=vm(disk_paths=(SHARED_DISK,), shared_disks=(SHARED_DISK,), disk_bytes=900 * GIB),
    ),
    case(
        CheckName.TARGET_DISK,
        F,
        "VM 'web1' needs 900 GiB",
        "offline-copies-shared-disks",
        ve=vm(state=VEState.STOPPED, disk_paths=(SHARED_DISK,), shared_disks=(SHARED_DISK,), disk_bytes=900 * GIB),
    ),
    case(
        CheckName.TARGET_DISK,
        S,
        "target node-b did not report free disk space",
        "no-storage",
        target=host(storage=[]),
    ),
    case(
        CheckName.TARGET_DISK,
        S,
        "did not report free space for /vz/vmprivate (it reported /data)",
        "no-matching-path",
        target=host(storage=[StorageFacts(path="/data", free_bytes=GIB)]),
    ),
    case(
        CheckName.TARGET_DISK,
        S,
        "did not report its default VE directory",
        "no-path",
        target=host(default_path=None),
    ),
    case(CheckName.TARGET_DISK, S, "source node-a did not report the disk size", "no-disk", ve=vm(disk_bytes=None)),
    # TargetMemory
    case(CheckName.TARGET_MEMORY, P, "32 GiB memory free; VM 'web1' needs 2 GiB", "enough"),
    case(
        CheckName.TARGET_MEMORY,
        F,
        "512 MiB memory free; VM 'web1' needs 2 GiB",
        "short",
        target=host(memory_free_bytes=512 * MIB),
    ),
    case(
        CheckName.TARGET_MEMORY,
        S,
        "target node-b did not report free memory; not checked",
        "unknown",
        target=host(memory_free_bytes=None),
    ),
    # TargetCPU
    case(CheckName.TARGET_CPU, P, "16 logical CPUs; VM 'web1' has 2 vCPUs", "enough"),
    case(CheckName.TARGET_CPU, F, "1 logical CPUs; VM 'web1' has 2 vCPUs", "short", target=host(cpu=cpu(count=1))),
    case(CheckName.TARGET_CPU, S, "did not report its CPU count", "unknown", target=host(cpu=None)),
    # SSHPort
    case(CheckName.SSH_PORT, P, "reaches port 22 on target node-b", "open"),
    case(CheckName.SSH_PORT, F, "the source cannot reach port 22 on the target", "closed", ssh=False),
    case(CheckName.SSH_PORT, S, "not checked", "unknown", ssh=None),
    # BridgeNames
    case(CheckName.BRIDGES, P, "every bridge", "same", ve=vm(bridges=("br0", "br1"))),
    case(
        CheckName.BRIDGES,
        F,
        "lacks bridge(s) vmbr9 used by VM 'web1' (it has br0, br1)",
        "missing",
        ve=vm(bridges=("br0", "vmbr9")),
    ),
    case(CheckName.BRIDGES, F, "lacks bridge(s) BR0", "exact-name", ve=vm(bridges=("BR0",))),
    case(CheckName.BRIDGES, P, "uses no bridged network", "none-used", ve=vm(bridges=())),
    case(CheckName.BRIDGES, S, "target node-b did not report its bridges", "unknown", target=host(network=None)),
    # NoSnapshots
    case(CheckName.SNAPSHOTS, P, "has no snapshots", "none"),
    case(CheckName.SNAPSHOTS, S, "did not report the snapshots", "unknown", ve=vm(snapshots=None)),
    case(
        CheckName.SNAPSHOTS,
        F,
        "delete the 2 snapshots (prlctl snapshot-delete) or skip NoSnapshots",
        "two",
        ve=vm(snapshots=2),
    ),
    case(CheckName.SNAPSHOTS, S, "applies to virtual machines only", "container", ve=ct(snapshots=2)),
    # NoLinkedClones
    case(CheckName.LINKED_CLONES, P, "neither a linked clone", "plain"),
    case(CheckName.LINKED_CLONES, S, "did not report whether", "unknown", ve=vm(linked_clone=None)),
    case(CheckName.LINKED_CLONES, F, "linked clone", "linked", ve=vm(linked_clone=True)),
    # MovableStorage
    case(CheckName.MOVABLE_STORAGE, P, "the copy moves everything VM 'web1' keeps on node-a", "files"),
    case(CheckName.MOVABLE_STORAGE, P, "moves everything container 'web1'", "container", ve=ct()),
    case(
        CheckName.MOVABLE_STORAGE,
        F,
        "VM 'web1' has storage the copy does not move: vdb: block device /dev/sdb.",
        "block-offline",
        ve=vm(state=VEState.STOPPED, non_file_disks=("vdb: block device /dev/sdb",)),
    ),
    case(
        CheckName.MOVABLE_STORAGE,
        F,
        "proves shared storage for disk files only: if both hosts see these disks at the same paths",
        "block-live-local",
        ve=vm(non_file_disks=("vdb: block device /dev/sdb", "vdc: network disk rbd://mon1/vms/x")),
    ),
    case(
        CheckName.MOVABLE_STORAGE,
        P,
        "shared storage: live migration leaves vdb: block device /dev/sdb in place for node-b",
        "block-live-shared",
        ve=vm(shared_storage=True, non_file_disks=("vdb: block device /dev/sdb",)),
    ),
    case(
        CheckName.MOVABLE_STORAGE,
        F,
        "vdb: block device /dev/sdb",
        "block-offline-shared",
        ve=vm(state=VEState.STOPPED, shared_storage=True, non_file_disks=("vdb: block device /dev/sdb",)),
    ),
    case(
        CheckName.MOVABLE_STORAGE,
        F,
        "NVRAM /var/lib/libvirt/qemu/nvram/web1_VARS.fd, vTPM state (swtpm). Migrated as it is",
        "nvram-shared",
        ve=vm(shared_storage=True, unmovable=("NVRAM /var/lib/libvirt/qemu/nvram/web1_VARS.fd", "vTPM state (swtpm)")),
    ),
    case(
        CheckName.MOVABLE_STORAGE,
        F,
        "Eject CD/DVD or floppy media (virsh change-media NAME DEV --eject --config)",
        "cdrom",
        ve=vm(unmovable=("hdc: cdrom /srv/iso/debian-12.iso",)),
    ),
    # NoContainerToVM
    case(CheckName.VE_TYPE, P, "runs vm, container", "both", ve=ct()),
    case(
        CheckName.VE_TYPE,
        F,
        "a container cannot be migrated into a virtual machine",
        "ct-to-vm-host",
        ve=ct(),
        target=host(ve_types=[VEKind.VM]),
    ),
    case(
        CheckName.VE_TYPE,
        F,
        "choose a target that runs virtual machines",
        "vm-to-ct-host",
        target=host(ve_types=[VEKind.CONTAINER]),
    ),
    case(CheckName.VE_TYPE, S, "did not report which kinds of VE it runs", "unknown", target=host(ve_types=[])),
    # TunnelledContainer
    case(CheckName.TUNNEL, P, "encrypted tunnel", "tunnel", ve=ct()),
    case(
        CheckName.TUNNEL,
        F,
        "tunnelless container migration is not supported",
        "ct-no-tunnel",
        ve=ct(),
        spec={"tunnel": False},
    ),
    case(CheckName.TUNNEL, P, "unencrypted", "vm-no-tunnel", spec={"tunnel": False}),
    # DriverCapabilities: what the source's driver cannot do fails here, naming the option and the host
    case(CheckName.DRIVER_CAPABILITIES, P, "source node-a can do all this migration asks: LiveVM", "live-vm"),
    case(
        CheckName.DRIVER_CAPABILITIES,
        F,
        "source node-a cannot do what this migration asks: a live migration of container 'web1' needs "
        "LiveContainer, which its driver does not offer (it offers OfflineContainer, Clone, Bandwidth). Stop the "
        "container and migrate offline",
        "live-ct-libvirt",
        ve=ct(),
        source=host(capabilities=LXC),
    ),
    case(
        CheckName.DRIVER_CAPABILITIES,
        P,
        "OfflineContainer, Clone, Bandwidth",
        "offline-ct-clone-capped-libvirt",
        ve=ct(state=VEState.STOPPED),
        source=host(capabilities=LXC),
        spec={"clone": True, "bandwidthMiBps": 50},
    ),
    case(
        CheckName.DRIVER_CAPABILITIES,
        F,
        "spec.clone of VM 'web1', running (live) needs LiveClone",
        "live-clone-libvirt",
        source=host(capabilities=QEMU),
        spec={"clone": True},
    ),
    case(
        CheckName.DRIVER_CAPABILITIES,
        F,
        "spec.clone of VM 'web1', suspended needs SuspendedClone",
        "suspended-clone-libvirt",
        ve=vm(state=VEState.SUSPENDED),
        source=host(capabilities=QEMU),
        spec={"clone": True},
    ),
    case(
        CheckName.DRIVER_CAPABILITIES,
        F,
        "spec.changeSid needs ChangeSid",
        "change-sid-libvirt",
        ve=vm(state=VEState.STOPPED),
        source=host(capabilities=QEMU),
        spec={"clone": True, "changeSid": True},
    ),
    case(
        CheckName.DRIVER_CAPABILITIES,
        F,
        "spec.bandwidthMiBps needs Bandwidth; spec.postCopy needs PostCopy, which its driver does not offer",
        "tuning-prlctl",
        source=host(capabilities=PRLCTL),
        spec={"bandwidthMiBps": 100, "postCopy": True},
    ),
    case(
        CheckName.DRIVER_CAPABILITIES,
        S,
        "source node-a did not report what its driver can do",
        "unknown",
        source=host(capabilities=[]),
    ),
    # EncryptedDiskCopy: tunnel true never silently becomes a clear-text disk copy
    case(CheckName.ENCRYPTED_DISK_COPY, P, "both hosts copy local disks", "both"),
    case(
        CheckName.ENCRYPTED_DISK_COPY,
        F,
        "target node-b cannot copy local disks encrypted",
        "target-no-tls",
        target=host(encrypted_disk_copy=False),
    ),
    case(
        CheckName.ENCRYPTED_DISK_COPY,
        S,
        "did not report whether it can copy",
        "unknown",
        source=host(encrypted_disk_copy=None),
    ),
    case(
        CheckName.ENCRYPTED_DISK_COPY,
        P,
        "nothing to keep encrypted",
        "tunnel-off",
        target=host(encrypted_disk_copy=False),
        spec={"tunnel": False},
    ),
    case(
        CheckName.ENCRYPTED_DISK_COPY,
        P,
        "no local disks",
        "shared",
        ve=vm(shared_storage=True),
        target=host(encrypted_disk_copy=False),
    ),
    # TimeSync
    case(CheckName.TIME_SYNC, P, "clocks differ by 0 ms", "synced"),
    case(CheckName.TIME_SYNC, P, "differ by 1000 ms", "limit", target=host(time_offset_ms=1003)),
    case(
        CheckName.TIME_SYNC,
        F,
        "clocks differ by 1500 ms (source node-a +3 ms, target node-b -1497 ms",
        "skewed",
        target=host(time_offset_ms=-1497),
    ),
    case(CheckName.TIME_SYNC, F, "chronyd", "remedy", source=host(time_offset_ms=5000)),
    case(
        CheckName.TIME_SYNC,
        S,
        "source node-a did not report its clock offset",
        "unknown",
        source=host(time_offset_ms=None),
    ),
    case(CheckName.TIME_SYNC, S, "offline migration: not required", "offline", ve=vm(state=VEState.STOPPED)),
    # LinkSpeed
    case(CheckName.LINK_SPEED, P, "at least 1000 Mbit/s", "fast"),
    case(
        CheckName.LINK_SPEED,
        F,
        "target node-b links at 100 Mbit/s; live migration needs at least 1000 Mbit/s",
        "slow",
        target=host(network=net(link_speed_mbps=100)),
    ),
    case(
        CheckName.LINK_SPEED,
        S,
        "target node-b did not report its link speed",
        "unknown",
        target=host(network=net(link_speed_mbps=None)),
    ),
    # SameSubnet
    case(CheckName.SUBNET, P, "both hosts are on 192.0.2.0/24", "same"),
    case(
        CheckName.SUBNET,
        P,
        "10.0.0.0/16",
        "containing",
        source=host(network=net(subnets=["10.0.0.0/16"])),
        target=host(network=net(subnets=["10.0.3.7/24"])),
    ),
    case(
        CheckName.SUBNET,
        F,
        "source node-a is on 10.0.0.0/24, target node-b on 10.1.0.0/24",
        "different",
        source=host(network=net(subnets=["127.0.0.0/8", "fe80::/64", "10.0.0.0/24"])),
        target=host(network=net(subnets=["127.0.0.0/8", "fe80::/64", "10.1.0.0/24"])),
    ),
    case(
        CheckName.SUBNET,
        S,
        "target node-b did not report any subnet other than loopback",
        "garbled",
        target=host(network=net(subnets=["not-a-cidr"])),
    ),
    # CPUVendor
    case(CheckName.CPU_VENDOR, P, "both hosts have Intel CPUs", "same", target=host(cpu=cpu(vendor="GenuineIntel"))),
    case(
        CheckName.CPU_VENDOR,
        F,
        "source node-a has Intel CPUs, target node-b has AMD",
        "different",
        target=host(cpu=cpu(vendor="AuthenticAMD")),
    ),
    case(CheckName.CPU_VENDOR, S, "did not report its CPU vendor", "unknown", source=host(cpu=cpu(vendor=None))),
    # CPUFeatures
    case(
        CheckName.CPU_FEATURES,
        P,
        "offers all 3 CPU features",
        "superset",
        target=host(cpu=cpu(features=["sse4_2", "avx", "avx2", "avx512f"])),
    ),
    case(
        CheckName.CPU_FEATURES,
        F,
        "lacks 1 CPU feature(s) of source node-a: avx2; put both hosts in one CPU pool",
        "missing",
        target=host(cpu=cpu(features=["sse4_2", "avx"])),
    ),
    case(
        CheckName.CPU_FEATURES,
        F,
        "prlsrvctl set --cpu-features-mask",
        "mask-hint",
        target=host(cpu=cpu(features=["sse4_2"])),
    ),
    case(
        CheckName.CPU_FEATURES,
        F,
        "f00, f01, f02, f03, f04, f05, f06, f07, f08, f09 and 2 more",
        "ten-listed",
        source=host(cpu=cpu(features=[f"f{i:02d}" for i in range(12)])),
    ),
    case(
        CheckName.CPU_FEATURES,
        F,
        "do not work on AMD processors",
        "amd",
        source=host(cpu=cpu(vendor="AMD", features=["svm", "avx2"])),
        target=host(cpu=cpu(vendor="AMD", features=["svm"])),
    ),
    case(
        CheckName.CPU_FEATURES,
        P,
        "both hosts are in CPU pool 'pool-a'",
        "same-pool",
        source=host(cpu=cpu(pool="pool-a", features=["avx512f"])),
        target=host(cpu=cpu(pool="pool-a", features=["sse4_2"])),
    ),
    case(CheckName.CPU_FEATURES, S, "did not report its CPU features", "unknown", target=host(cpu=cpu(features=[]))),
    # CpuidOverride
    case(CheckName.CPUID_OVERRIDE, P, "both hosts have /proc/vz/cpuid_override", "both", ve=ct()),
    case(
        CheckName.CPUID_OVERRIDE,
        F,
        "target node-b lacks /proc/vz/cpuid_override",
        "missing",
        ve=ct(),
        target=host(cpuid_override=False),
    ),
    case(
        CheckName.CPUID_OVERRIDE,
        P,
        "or are nested",
        "nested",
        ve=ct(),
        target=host(cpuid_override=False, nested=True),
    ),
    case(
        CheckName.CPUID_OVERRIDE,
        S,
        "source node-a did not report whether /proc/vz/cpuid_override exists",
        "unknown",
        ve=ct(),
        source=host(cpuid_override=None),
    ),
    case(CheckName.CPUID_OVERRIDE, S, "applies to containers only", "vm", target=host(cpuid_override=False)),
    # NoEnterSessions
    case(CheckName.ENTER_SESSIONS, P, "no open prlctl enter sessions", "none"),
    case(CheckName.ENTER_SESSIONS, F, "2 open prlctl enter sessions", "two", ve=ct(enter_sessions=2)),
    case(
        CheckName.ENTER_SESSIONS, S, "did not report open prlctl enter sessions", "unknown", ve=vm(enter_sessions=None)
    ),
    # NoIPSec
    case(CheckName.IPSEC, P, "no IPSec connections", "none", ve=ct()),
    case(CheckName.IPSEC, F, "has IPSec connections", "ipsec", ve=ct(ipsec=True)),
    case(CheckName.IPSEC, S, "did not report IPSec use", "unknown", ve=ct(ipsec=None)),
    case(CheckName.IPSEC, S, "applies to containers only", "vm", ve=vm(ipsec=True)),
    # NFSClient
    case(CheckName.NFS_CLIENT, P, "has no NFS mounts", "none", ve=ct()),
    case(
        CheckName.NFS_CLIENT,
        P,
        "within the live-migration rules",
        "locks-only",
        ve=ct(nfs=NFSFacts(client=True, remote_locks=True)),
    ),
    case(
        CheckName.NFS_CLIENT,
        F,
        "3 block or character device file(s) shared over NFS are open",
        "devices",
        ve=ct(nfs=NFSFacts(client=True, open_device_files=3)),
    ),
    case(
        CheckName.NFS_CLIENT,
        F,
        "remote file locking and over-mounted NFS file systems are used together",
        "locks-and-overmount",
        ve=ct(nfs=NFSFacts(client=True, remote_locks=True, overmounted=True)),
    ),
    case(CheckName.NFS_CLIENT, S, "did not report NFS client use", "unknown", ve=ct(nfs=None)),
    # NoNFSServer
    case(CheckName.NFS_SERVER, P, "NFS server feature off", "off", ve=ct()),
    case(CheckName.NFS_SERVER, F, "NFS server feature on", "on", ve=ct(nfs_server=True)),
    case(CheckName.NFS_SERVER, S, "did not report whether the NFS server feature", "unknown", ve=ct(nfs_server=None)),
    # V6SourceVersion
    case(
        CheckName.V6_SOURCE_VERSION, P, "runs Virtuozzo 6.0.11-3466 (at least 6.0.11-3466)", "minimum", source=V6_SOURCE
    ),
    case(
        CheckName.V6_SOURCE_VERSION,
        P,
        "at least",
        "release-file",
        source=host(version=version("Virtuozzo release 6.0.12 (3501)")),
    ),
    case(
        CheckName.V6_SOURCE_VERSION,
        F,
        "runs Parallels Cloud Server 6.0.x: migration to Virtuozzo Hybrid Server 7 needs at least 6.0.11-3466",
        "pcs",
        source=host(version=version("Parallels Cloud Server 6.0.x")),
    ),
    case(
        CheckName.V6_SOURCE_VERSION,
        F,
        "needs at least 6.0.11-3466",
        "old-build",
        source=host(version=version("Virtuozzo 6.0.11-3200")),
    ),
    case(
        CheckName.V6_SOURCE_VERSION,
        S,
        "build number is unknown",
        "no-build",
        source=host(version=version("Virtuozzo 6.0.11")),
    ),
    case(CheckName.V6_SOURCE_VERSION, S, f"runs {VZ7}, not Virtuozzo 6: not required", "vz7"),
    case(
        CheckName.V6_SOURCE_VERSION,
        S,
        "source node-a did not report its product version",
        "unknown",
        source=host(version=None),
    ),
    # V6TargetVersion
    case(CheckName.V6_TARGET_VERSION, P, f"runs {VZ7} (at most", "7.5.4", source=V6_SOURCE),
    case(
        CheckName.V6_TARGET_VERSION,
        P,
        "at most",
        "update-4",
        source=V6_SOURCE,
        target=host(version=version("Virtuozzo Hybrid Server 7.5 Update 4")),
    ),
    case(
        CheckName.V6_TARGET_VERSION,
        P,
        "at most",
        "vz7.0",
        source=V6_SOURCE,
        target=host(version=version("Virtuozzo 7.0.14")),
    ),
    case(
        CheckName.V6_TARGET_VERSION,
        F,
        "newer than Virtuozzo Hybrid Server 7.5 Update 4",
        "too-new",
        source=V6_SOURCE,
        target=host(version=version("Virtuozzo Hybrid Server 7.5.5")),
    ),
    case(
        CheckName.V6_TARGET_VERSION,
        F,
        "runs libvirt 9.0.0: Virtuozzo 6 VEs migrate only to Virtuozzo (Hybrid Server) 7",
        "not-virtuozzo",
        source=V6_SOURCE,
        target=host(version=version("libvirt 9.0.0")),
    ),
    case(
        CheckName.V6_TARGET_VERSION,
        S,
        "target node-b did not report its product version",
        "unknown",
        source=V6_SOURCE,
        target=host(version=None),
    ),
    # V6VMRunning
    case(CheckName.V6_VM_RUNNING, P, "hot migration", "running", source=V6_SOURCE),
    case(
        CheckName.V6_VM_RUNNING,
        F,
        "is stopped: Virtuozzo 6 VMs migrate only running",
        "stopped",
        source=V6_SOURCE,
        ve=vm(state=VEState.STOPPED),
    ),
    case(CheckName.V6_VM_RUNNING, F, "start it first", "paused", source=V6_SOURCE, ve=vm(state=VEState.PAUSED)),
    case(CheckName.V6_VM_RUNNING, S, "applies to virtual machines only", "container", source=V6_SOURCE, ve=ct()),
    # V6ContainerStopped
    case(
        CheckName.V6_CONTAINER_STOPPED, P, "stopped: offline", "stopped", source=V6_SOURCE, ve=ct(state=VEState.STOPPED)
    ),
    case(CheckName.V6_CONTAINER_STOPPED, P, "suspended", "suspended", source=V6_SOURCE, ve=ct(state=VEState.SUSPENDED)),
    case(
        CheckName.V6_CONTAINER_STOPPED,
        F,
        "Virtuozzo 6 containers migrate only offline",
        "running",
        source=V6_SOURCE,
        ve=ct(),
    ),
    case(CheckName.V6_CONTAINER_STOPPED, S, "applies to containers only", "vm", source=V6_SOURCE),
    # SharedStorage
    case(CheckName.SHARED_STORAGE, P, "VM 'web1' has no disk files", "diskless"),
    case(
        CheckName.SHARED_STORAGE,
        P,
        f"{SHARED_DISK} of VM 'web1' is on storage both hosts share: not copied, node-b runs from the same files",
        "all-shared",
        ve=vm(disk_paths=(SHARED_DISK,), shared_disks=(SHARED_DISK,)),
    ),
    case(
        CheckName.SHARED_STORAGE,
        P,
        f"no disk of VM 'web1' is on storage both hosts share: {LOCAL_DISK} copied into /srv/ves/{UUID}/",
        "local-into-target-path",
        ve=vm(disk_paths=(LOCAL_DISK,), shared_disks=()),
        spec={"target": {"host": "node-b", "path": "/srv/ves"}},
    ),
    case(
        CheckName.SHARED_STORAGE,
        F,
        f"spec.target.path /srv/ves cannot be honoured: {SHARED_DISK} of VM 'web1' is on storage both hosts share",
        "target-path-on-shared",
        ve=vm(disk_paths=(SHARED_DISK, LOCAL_DISK), shared_disks=(SHARED_DISK,)),
        spec={"target": {"host": "node-b", "path": "/srv/ves"}},
    ),
    case(
        CheckName.SHARED_STORAGE,
        P,
        f"{SHARED_DISK} of VM 'web1' on storage both hosts share: not copied, nothing of them removed; {LOCAL_DISK} "
        "local: copied at the same paths",
        "mixed",
        ve=vm(disk_paths=(SHARED_DISK, LOCAL_DISK), shared_disks=(SHARED_DISK,)),
    ),
    case(
        CheckName.SHARED_STORAGE,
        S,
        "could not tell which disks of VM 'web1' node-b sees as the same files",
        "not-probed",
        ve=vm(disk_paths=(LOCAL_DISK,)),
    ),
    case(
        CheckName.SHARED_STORAGE,
        S,
        "offline migration: not required",
        "offline",
        ve=vm(state=VEState.STOPPED, disk_paths=(SHARED_DISK,), shared_disks=(SHARED_DISK,)),
        spec={"target": {"host": "node-b", "path": "/srv/ves"}},
    ),
    # V6GuestOS
    case(CheckName.V6_GUEST_OS, P, "has a guest OS installed", "installed", source=V6_SOURCE),
    case(
        CheckName.V6_GUEST_OS, F, "no guest OS installed", "missing", source=V6_SOURCE, ve=vm(guest_os_installed=False)
    ),
    case(
        CheckName.V6_GUEST_OS,
        S,
        "did not report whether VM 'web1' has a guest OS",
        "unknown",
        source=V6_SOURCE,
        ve=vm(guest_os_installed=None),
    ),
]


@pytest.mark.parametrize(("name", "facts", "result", "fragment"), CASES)
def test_check(name: CheckName, facts: Facts, result: CheckResult, fragment: str) -> None:
    got = check(name, facts)
    assert (got.result, fragment in got.message) == (result, True), got.message


def test_every_check_has_a_passing_and_a_failing_case() -> None:
    seen: dict[CheckName, set[CheckResult]] = {}
    for param in CASES:
        name, _, result, _ = param.values
        seen.setdefault(name, set()).add(result)
    cannot_fail = {CheckName.SOURCE_VE}  # the VE was read before the checks run
    for name in CheckName:
        assert P in seen.get(name, set()), f"{name} has no Passed case"
        assert (F if name not in cannot_fail else S) in seen[name], f"{name} has no Failed case"


# -- run_checks as a whole ----------------------------------------------------------------------
def test_healthy_live_vm_passes_everything_that_applies() -> None:
    results = run_checks(Facts().input())
    assert [c.name for c in results] == list(CheckName)
    assert failed(results) == []
    skipped = {c.name for c in results if c.result == S}
    assert skipped == V6_ONLY | {CheckName.CPUID_OVERRIDE, CheckName.IPSEC, CheckName.NFS_CLIENT, CheckName.NFS_SERVER}


def test_healthy_live_container_passes_everything_that_applies() -> None:
    results = run_checks(Facts(ve=ct()).input())
    assert failed(results) == []
    assert {c.name for c in results if c.result == S} == V6_ONLY | {CheckName.SNAPSHOTS, CheckName.SHARED_STORAGE}


def test_offline_skips_every_live_only_check() -> None:
    # Facts that would fail every live-only check, on a stopped container.
    bad = host(
        time_offset_ms=99999,
        network=net(subnets=["10.9.0.0/24"], link_speed_mbps=10),
        cpu=cpu(vendor="AMD", features=[]),
        cpuid_override=False,
    )
    ve = ct(state=VEState.STOPPED, enter_sessions=3, ipsec=True, nfs_server=True, nfs=NFSFacts(True, 1, True, True))
    results = {c.name: c for c in run_checks(Facts(ve=ve, target=bad).input())}
    for name in LIVE_ONLY:
        assert results[name].result == S
        assert results[name].message == "offline migration: not required"
    assert failed(list(results.values())) == []


def test_live_runs_the_live_only_checks() -> None:
    results = {c.name: c for c in run_checks(Facts(ve=ct()).input())}
    assert all(results[name].result == P for name in LIVE_ONLY)


def test_v6_checks_run_only_for_a_virtuozzo6_source() -> None:
    for product in (VZ7, "libvirt 9.0.0"):
        results = {c.name: c for c in run_checks(Facts(source=host(version=version(product))).input())}
        assert all(results[n].result == S and "not Virtuozzo 6" in results[n].message for n in V6_ONLY)
    v6 = {c.name: c.result for c in run_checks(Facts(source=V6_SOURCE).input())}
    assert v6[CheckName.V6_SOURCE_VERSION] == v6[CheckName.V6_TARGET_VERSION] == v6[CheckName.V6_VM_RUNNING] == P


def test_v6_running_vm_also_runs_the_live_rules() -> None:
    facts = Facts(source=V6_SOURCE, target=host(time_offset_ms=5000, network=net(link_speed_mbps=100)))
    results = {c.name: c.result for c in run_checks(facts.input())}
    assert results[CheckName.TIME_SYNC] == results[CheckName.LINK_SPEED] == F


def test_skip_list_skips_even_failing_checks() -> None:
    facts = Facts(
        ve=vm(snapshots=3),
        target=host(memory_free_bytes=0),
        spec={"checks": {"skip": ["NoSnapshots", "TargetMemory"]}},
    )
    results = {c.name: c for c in run_checks(facts.input())}
    for name in (CheckName.SNAPSHOTS, CheckName.TARGET_MEMORY):
        assert (results[name].result, results[name].message) == (S, "skipped by spec.checks.skip")
    assert failed(list(results.values())) == []


def test_nothing_reported_gives_skipped_never_passed() -> None:
    facts = Facts(source=HostStatus(), target=HostStatus(), ssh=None, ve=vm(enter_sessions=None))
    results = {c.name: c for c in run_checks(facts.input())}
    host_facts = {
        CheckName.TARGET_DISK,
        CheckName.TARGET_MEMORY,
        CheckName.TARGET_CPU,
        CheckName.SSH_PORT,
        CheckName.BRIDGES,
        CheckName.VE_TYPE,
        CheckName.TIME_SYNC,
        CheckName.LINK_SPEED,
        CheckName.SUBNET,
        CheckName.CPU_VENDOR,
        CheckName.CPU_FEATURES,
        CheckName.ENTER_SESSIONS,
    }
    for name in host_facts:
        assert results[name].result == S, (name, results[name].message)
        assert "not checked" in results[name].message


def test_failed_and_summary() -> None:
    facts = Facts(ve=vm(snapshots=1), target=host(storage=[StorageFacts(path="/vz", free_bytes=GIB)]))
    results = run_checks(facts.input())
    assert [c.name for c in failed(results)] == [CheckName.TARGET_DISK, CheckName.SNAPSHOTS]
    assert summary(results) == "2 of 31 checks failed: TargetDiskSpace, NoSnapshots"
    assert summary(run_checks(Facts().input())) == "22 of 31 checks passed, 9 skipped, none failed"


def test_a_check_that_raises_fails_instead_of_crashing(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(inp: CheckInput) -> tuple[CheckResult, str]:
        raise ValueError("boom")

    monkeypatch.setitem(checks.REGISTRY, CheckName.TARGET_CPU, broken)
    got = check(CheckName.TARGET_CPU, Facts())
    assert got.result == F and "internal error in check TargetCPU" in got.message


def test_long_lists_keep_messages_within_the_api_limit() -> None:
    many = [f"bridge-{i:03d}-{'x' * 40}" for i in range(200)]
    got = check(CheckName.BRIDGES, Facts(ve=vm(bridges=tuple(many)), target=host(network=net(bridges=["br0"]))))
    assert got.result == F and len(got.message) <= 4096 and "and 190 more" in got.message


@pytest.mark.parametrize(
    ("product", "v6"),
    [
        ("Virtuozzo 6.0.11-3466", True),
        ("Virtuozzo release 6.0.11 (3466)", True),
        ("Parallels Cloud Server 6.0.x", True),
        ("Parallels Cloud Server release 6.0.10 (2722)", True),
        ("Virtuozzo Hybrid Server 7.5.4", False),
        ("Virtuozzo 7.0.14", False),
        ("Virtuozzo Linux release 6.10", False),  # the host OS, not the hypervisor
        ("libvirt 9.0.0", False),
        ("", False),
        (None, False),
    ],
)
def test_is_virtuozzo6(product: str | None, v6: bool) -> None:
    assert is_virtuozzo6(host(version=version(product))) is v6


def test_is_virtuozzo6_without_version_facts() -> None:
    assert is_virtuozzo6(HostStatus()) is False


# -- properties ---------------------------------------------------------------------------------
_text = st.text(max_size=12)
_opt_int = st.none() | st.integers(min_value=0, max_value=2**50)
_products = (
    st.none()
    | st.sampled_from(
        [VZ6, VZ7, "Parallels Cloud Server 6.0.x", "Virtuozzo 6.0.11", "Virtuozzo 99", "libvirt 9.0.0", "Virtuozzo 6"]
    )
    | _text
)
_paths = st.sampled_from(["/", "/vz", "/vz/private", "/var/lib/libvirt/images", "relative", ""])

_hosts = st.builds(
    HostStatus,
    cpu=st.none()
    | st.builds(
        CPUFacts,
        vendor=st.none() | st.sampled_from(["Intel", "AMD", "GenuineIntel", " ", ""]) | _text,
        count=_opt_int,
        features=st.lists(st.sampled_from(["avx", "AVX", "sse4_2", "svm", ""]) | _text, max_size=15),
        pool=st.none() | st.sampled_from(["p", ""]),
    ),
    memory_free_bytes=_opt_int,
    storage=st.lists(
        st.builds(StorageFacts, path=_paths, free_bytes=st.integers(0, 2**50), shared=st.booleans()), max_size=4
    ),
    network=st.none()
    | st.builds(
        NetworkFacts,
        bridges=st.lists(st.sampled_from(["br0", "br1"]) | _text, max_size=4),
        subnets=st.lists(
            st.sampled_from(["10.0.0.0/24", "::1/128", "fe80::/64", "10.0.0.5/16", "x/99"]) | _text, max_size=4
        ),
        link_speed_mbps=_opt_int,
    ),
    time_offset_ms=st.none() | st.integers(-(10**9), 10**9),
    cpuid_override=st.none() | st.booleans(),
    nested=st.none() | st.booleans(),
    version=st.none() | st.builds(VersionFacts, product=_products),
    ve_types=st.lists(st.sampled_from(VEKind), max_size=2),
    capabilities=st.lists(st.sampled_from(Capability), max_size=12, unique=True),
    default_path=st.none() | _paths,
)

_ves = st.builds(
    VEFacts,
    name=st.sampled_from(["web1", "db"]),
    uuid=st.sampled_from([UUID, "u2"]),
    type=st.sampled_from(VEKind),
    state=st.sampled_from(VEState),
    memory_bytes=st.integers(0, 2**50),
    vcpus=st.integers(0, 512),
    disk_bytes=st.integers(0, 2**50),
    bridges=st.lists(st.sampled_from(["br0", "br9"]) | _text, max_size=4).map(tuple),
    snapshots=st.integers(0, 100),
    linked_clone=st.booleans(),
    enter_sessions=_opt_int,
    ipsec=st.none() | st.booleans(),
    nfs=st.none() | st.builds(NFSFacts, st.booleans(), st.integers(0, 9), st.booleans(), st.booleans()),
    nfs_server=st.none() | st.booleans(),
    guest_os_installed=st.none() | st.booleans(),
    shared_storage=st.booleans(),
    unmovable=st.lists(st.sampled_from(["NVRAM /x_VARS.fd", "vTPM state (swtpm)"]) | _text, max_size=3).map(tuple),
    non_file_disks=st.lists(st.sampled_from(["vdb: block device /dev/sdb"]) | _text, max_size=3).map(tuple),
)


@st.composite
def _inputs(draw: st.DrawFn) -> CheckInput:
    ve = draw(_ves)
    spec = MigrationSpec.model_validate(
        {
            "source": {"host": "node-a", "name": ve.name},
            "target": {"host": "node-b", "path": draw(st.none() | st.sampled_from(["/vz", "/vz/x", "/srv"]))},
            "mode": draw(st.sampled_from(Mode)),
            "clone": draw(st.booleans()),
            "tunnel": draw(st.booleans()),
            "checks": {"skip": draw(st.lists(st.sampled_from(CheckName), unique=True, max_size=5))},
        }
    )
    target = draw(_hosts)
    return CheckInput(
        spec=spec,
        plan=replace(resolve("m1", spec, ve, target, None), mode=draw(st.sampled_from([Mode.LIVE, Mode.OFFLINE]))),
        ve=ve,
        source=draw(_hosts),
        target=target,
        target_ve=draw(st.none() | _ves),
        ssh_port_open=draw(st.none() | st.booleans()),
    )


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(_inputs())
def test_property_one_result_per_check_and_no_check_raises(inp: CheckInput) -> None:
    for fn in checks.REGISTRY.values():
        result, message = fn(inp)  # called unguarded: a raise here fails the test
        assert isinstance(result, CheckResult) and message
    results = run_checks(inp)
    assert [c.name for c in results] == list(CheckName)
    for c in results:
        assert "internal error" not in c.message
        if c.name in inp.spec.checks.skip:
            assert (c.result, c.message) == (S, "skipped by spec.checks.skip")
        elif c.name in LIVE_ONLY and inp.mode == Mode.OFFLINE and c.result != S:
            pytest.fail(f"{c.name} ran for an offline migration: {c.message}")
    assert summary(results).startswith(f"{len(failed(results))} of 31" if failed(results) else "")
