"""Pre-flight checks: one small function per requirement or restriction of the migration guide.

Each check reads plain facts (the VE, both hosts, the spec) and returns (result, message). A fact a
host did not report gives Skipped with a message naming the host and the fact, never a silent pass.
Messages are for the user who has to act: they name the numbers compared and what to do.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from vemigrate.api.checks import CheckName, CheckResult
from vemigrate.api.host import Capability, HostStatus, StorageFacts, VEKind
from vemigrate.api.migration import CheckStatus, MigrationSpec, Mode
from vemigrate.core.observation import VEFacts, VEState
from vemigrate.core.plan import Plan

PASSED, FAILED, SKIPPED = CheckResult.PASSED, CheckResult.FAILED, CheckResult.SKIPPED
Outcome = tuple[CheckResult, str]

DISK_MARGIN = 0.05  # room for metadata and conversion on top of the disks' allocated size
MAX_TIME_SKEW_MS = 1000
MIN_LINK_MBPS = 1000  # the guide: at least 1 Gbps
V6_MIN_SOURCE = (6, 0, 11, 3466)  # Virtuozzo 6.0.11-3466
V6_MAX_TARGET = (7, 5, 4)  # Virtuozzo Hybrid Server 7.5 Update 4
_MAX_LISTED = 10
_MAX_MESSAGE = 4096  # CheckStatus.message limit


@dataclass(frozen=True)
class CheckInput:
    spec: MigrationSpec
    plan: Plan  # the mode, the target directory, the copy's UUID and the source's fate, resolved (core/plan.py)
    ve: VEFacts  # the VE on the source
    source: HostStatus
    target: HostStatus
    target_ve: VEFacts | None  # a VE with the same name or UUID already on the target (None: none)
    ssh_port_open: bool | None  # whether the source reaches the target's SSH port 22 (None: unknown)

    @property
    def mode(self) -> Mode:
        return self.plan.mode

    @property
    def live(self) -> bool:
        return self.plan.mode == Mode.LIVE

    @property
    def src(self) -> str:
        return f"source {self.spec.source.host}"

    @property
    def dst(self) -> str:
        return f"target {self.spec.target.host}"

    @property
    def container(self) -> bool:
        return self.ve.type == VEKind.CONTAINER


CheckFn = Callable[[CheckInput], Outcome]

# CheckName -> the check, with its scope (live only, VE kind, Virtuozzo 6) already applied.
REGISTRY: dict[CheckName, CheckFn] = {}


# -- public interface ---------------------------------------------------------------------------
def run_checks(inp: CheckInput) -> list[CheckStatus]:
    """One CheckStatus per CheckName, in enum order."""
    skip = set(inp.spec.checks.skip)
    results: list[CheckStatus] = []
    for name in CheckName:
        if name in skip:
            result, message = SKIPPED, "skipped by spec.checks.skip"
        else:
            try:
                result, message = REGISTRY[name](inp)
            except Exception as exc:  # a bug in a check must block the migration, not crash the pass
                result, message = FAILED, f"internal error in check {name.value}: {exc!r}; please report it"
        results.append(CheckStatus(name=name, result=result, message=_clip(message)))
    return results


def failed(checks: Sequence[CheckStatus]) -> list[CheckStatus]:
    return [c for c in checks if c.result == CheckResult.FAILED]


def summary(checks: Sequence[CheckStatus]) -> str:
    """One line for a condition message."""
    bad = failed(checks)
    if bad:
        return f"{len(bad)} of {len(checks)} checks failed: {', '.join(c.name.value for c in bad)}"
    skipped = sum(1 for c in checks if c.result == CheckResult.SKIPPED)
    passed = len(checks) - skipped
    return f"{passed} of {len(checks)} checks passed, {skipped} skipped, none failed"


def is_virtuozzo6(host: HostStatus) -> bool:
    parsed = _product(host)
    return parsed is not None and parsed[0][:1] == (6,)


# -- registration and scope ---------------------------------------------------------------------
def _check(
    name: CheckName, *, live_only: bool = False, only: VEKind | None = None, v6_only: bool = False
) -> Callable[[CheckFn], CheckFn]:
    def register(fn: CheckFn) -> CheckFn:
        def scoped(inp: CheckInput) -> Outcome:
            why = _out_of_scope(inp, live_only=live_only, only=only, v6_only=v6_only)
            return (SKIPPED, why) if why is not None else fn(inp)

        REGISTRY[name] = scoped
        return fn

    return register


def _out_of_scope(inp: CheckInput, *, live_only: bool, only: VEKind | None, v6_only: bool) -> str | None:
    if v6_only and not is_virtuozzo6(inp.source):
        if _version_text(inp.source) is None:
            return (
                f"{inp.src} did not report its product version, so whether it runs Virtuozzo 6 is unknown; not checked"
            )
        return f"{inp.src} runs {_version_text(inp.source)}, not Virtuozzo 6: not required"
    if only == VEKind.CONTAINER and inp.ve.type != VEKind.CONTAINER:
        return "virtual machine: applies to containers only"
    if only == VEKind.VM and inp.ve.type != VEKind.VM:
        return "container: applies to virtual machines only"
    if live_only and not inp.live:
        return "offline migration: not required"
    return None


# -- formatting ---------------------------------------------------------------------------------
def _num(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def _size(n: int) -> str:
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= factor:
            return f"{_num(n / factor)} {unit}"
    return f"{n} B"


def _sizes(have: int, need: int) -> tuple[str, str]:
    """Both sizes in human form; exact bytes when rounding would make them look equal."""
    a, b = _size(have), _size(need)
    if a == b and have != need:
        return f"{a} ({have} bytes)", f"{b} ({need} bytes)"
    return a, b


def _listed(items: Sequence[str], limit: int = _MAX_LISTED) -> str:
    if not items:
        return "none"
    shown = ", ".join(items[:limit])
    return f"{shown} and {len(items) - limit} more" if len(items) > limit else shown


def _clip(message: str) -> str:
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 3] + "..."


def _unknown(host: str, what: str) -> Outcome:
    return SKIPPED, f"{host} did not report {what}; not checked"


def _ve(inp: CheckInput) -> str:
    kind = "container" if inp.container else "VM"
    return f"{kind} {inp.ve.name!r}"


# -- product versions ---------------------------------------------------------------------------
# "Virtuozzo 6.0.11-3466", "Virtuozzo release 6.0.11 (3466)", "Parallels Cloud Server 6.0.10 (2722)",
# "Virtuozzo 7.0.14", "Virtuozzo Hybrid Server 7.5.4", "Virtuozzo Hybrid Server 7.5 Update 4".
# "Virtuozzo Linux" is the host OS, not the hypervisor, so it is not a product here.
_PRODUCT = re.compile(
    r"\b(?P<family>parallels\s+cloud\s+server|virtuozzo(?:\s+hybrid\s+server)?)(?!\s+linux)"
    r"\s+(?:release\s+)?(?P<version>\d+(?:\.\d+)*)"
    r"(?:\s+update\s+(?P<update>\d+))?"
    r"(?:\s*-\s*(?P<build>\d+)|\s*\((?P<pbuild>\d+)\))?",
    re.IGNORECASE,
)


def _version_text(host: HostStatus) -> str | None:
    return host.version.product if host.version is not None and host.version.product else None


def _product(host: HostStatus) -> tuple[tuple[int, ...], int | None] | None:
    """(version, build) of Virtuozzo or its predecessor Parallels Cloud Server; None for anything else."""
    text = _version_text(host)
    match = _PRODUCT.search(text) if text else None
    if match is None:
        return None
    version = tuple(int(p) for p in match["version"].split("."))
    if match["update"] is not None:
        version = (*_pad(version, 2), int(match["update"]))
    build = match["build"] or match["pbuild"]
    return version, int(build) if build else None


def _pad(version: tuple[int, ...], n: int = 3) -> tuple[int, ...]:
    return (*version, *(0,) * n)[:n]


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(str(p) for p in version)


# -- requirements for every migration -----------------------------------------------------------
@_check(CheckName.SOURCE_VE)
def _source_ve(inp: CheckInput) -> Outcome:
    ve = inp.ve
    return PASSED, f"{inp.src} has {_ve(inp)} (UUID {ve.uuid}), {ve.state.value}"


@_check(CheckName.TARGET_FREE)
def _target_name_free(inp: CheckInput) -> Outcome:
    other = inp.target_ve
    if other is None:
        return PASSED, f"{inp.dst} holds no VE named {inp.ve.name!r} or with UUID {inp.ve.uuid}"
    same_name = other.name == inp.ve.name
    same_uuid = other.uuid == inp.ve.uuid
    where = f"{inp.dst} already has a VE {other.name!r} (UUID {other.uuid}, {other.state.value})"
    if inp.spec.clone and not same_name:
        return (
            PASSED,
            f"{where} with the source's UUID, but a clone gets a new UUID and the name {inp.ve.name!r} is free",
        )
    if inp.spec.clone and same_name:
        clash = "with the same name: the clone gets a new UUID but the name still collides"
    elif same_name and same_uuid:
        clash = "with the same name and UUID: the VE may already have been migrated there"
    elif same_name:
        clash = "with the same name"
    elif same_uuid:
        clash = "with the same UUID: the VE may already have been migrated there"
    else:
        clash = "that collides with it"
    return FAILED, (
        f"{where} {clash}. Check which copy is the one to keep, then delete or rename the other on "
        f"{inp.spec.target.host} (prlctl delete / virsh undefine) before migrating"
    )


_LIVE_STATES = {VEKind.VM: (VEState.RUNNING, VEState.PAUSED), VEKind.CONTAINER: (VEState.RUNNING,)}
_OFFLINE_STATES = (VEState.STOPPED, VEState.SUSPENDED)


@_check(CheckName.VE_STATE)
def _ve_state(inp: CheckInput) -> Outcome:
    state, ve = inp.ve.state, _ve(inp)
    live_ok = _LIVE_STATES[inp.ve.type]
    if state == VEState.MIGRATING:
        return FAILED, f"{ve} is being migrated already; wait for that migration to finish"
    if state not in live_ok and state not in _OFFLINE_STATES:
        # No mode fits (e.g. a paused container or an unknown state), so even Auto cannot go on.
        return FAILED, (
            f"{ve} is {state.value}: live migration needs {' or '.join(s.value for s in live_ok)}, offline "
            "needs stopped or suspended; start, resume or stop it first"
        )
    if inp.live:
        if state in live_ok:
            return PASSED, f"{ve} is {state.value}: live migration"
        return FAILED, (
            f"mode Live was requested but {ve} is {state.value}; live migration needs it "
            f"{' or '.join(s.value for s in live_ok)}: start it first, or use mode Auto or Offline"
        )
    if state in _OFFLINE_STATES:
        return PASSED, f"{ve} is {state.value}: offline migration"
    return FAILED, (
        f"mode Offline was requested but {ve} is {state.value}; offline migration needs it stopped or "
        "suspended: stop or suspend it first, or use mode Auto"
    )


def _storage_for(path: str, storage: Sequence[StorageFacts]) -> StorageFacts | None:
    """The storage entry whose path is the longest prefix (by path components) of `path`."""
    target = PurePosixPath(path)
    best: StorageFacts | None = None
    for entry in storage:
        root = PurePosixPath(entry.path)
        if target.is_relative_to(root) and (best is None or len(root.parts) > len(PurePosixPath(best.path).parts)):
            best = entry
    return best


def _shared(inp: CheckInput) -> tuple[str, ...]:
    """The disks a live migration leaves in place: those the target sees as the same files."""
    return inp.ve.shared_disks or () if inp.live else ()


def _all_shared(inp: CheckInput) -> bool:
    shared = _shared(inp)
    return bool(shared) and set(inp.ve.disk_paths) <= set(shared)


def _landing(inp: CheckInput) -> str | None:
    """Where the copy lands on the target: spec.target.path (in <path>/<UUID>); a live VM's disks
    otherwise keep their paths; anything else goes to the target's default directory (the plan's)."""
    if not inp.spec.target.path and inp.live and not inp.container and inp.ve.storage_path:
        return inp.ve.storage_path
    return inp.plan.target_path


@_check(CheckName.TARGET_DISK)
def _target_disk(inp: CheckInput) -> Outcome:
    path = _landing(inp)
    if not path:
        return SKIPPED, f"{inp.dst} did not report its default VE directory and spec.target.path is unset; not checked"
    if _all_shared(inp):
        return PASSED, f"every disk of {_ve(inp)} is on storage both hosts share: no disk data is copied"
    if not inp.target.storage:
        return _unknown(inp.dst, "free disk space")
    entry = _storage_for(path, inp.target.storage)
    if entry is None:
        paths = _listed([s.path for s in inp.target.storage])
        return _unknown(inp.dst, f"free space for {path} (it reported {paths})")
    if inp.ve.shared_storage and entry.shared:
        return (
            PASSED,
            f"{_ve(inp)} and {entry.path} on {inp.spec.target.host} are on shared storage: no disk data is copied",
        )
    if inp.ve.disk_bytes is None:
        return _unknown(inp.src, f"the disk size of {_ve(inp)}")
    need = inp.ve.disk_bytes + int(inp.ve.disk_bytes * DISK_MARGIN)
    free, needed = _sizes(entry.free_bytes, need)
    where = entry.path if PurePosixPath(entry.path) == PurePosixPath(path) else f"{entry.path} (holding {path})"
    comparison = (
        f"{inp.dst} has {free} free at {where}; {_ve(inp)} needs {_size(inp.ve.disk_bytes)} + 5% margin = {needed}"
    )
    if entry.free_bytes >= need:
        return PASSED, comparison
    return FAILED, f"{comparison}: free space there, choose another spec.target.path, or another target"


@_check(CheckName.TARGET_MEMORY)
def _target_memory(inp: CheckInput) -> Outcome:
    if inp.target.memory_free_bytes is None:
        return _unknown(inp.dst, "free memory")
    if inp.ve.memory_bytes is None:
        return _unknown(inp.src, f"the memory size of {_ve(inp)}")
    free, need = _sizes(inp.target.memory_free_bytes, inp.ve.memory_bytes)
    comparison = f"{inp.dst} has {free} memory free; {_ve(inp)} needs {need} to run there"
    if inp.target.memory_free_bytes >= inp.ve.memory_bytes:
        return PASSED, comparison
    return FAILED, f"{comparison}: free memory on {inp.spec.target.host} or choose another target"


@_check(CheckName.TARGET_CPU)
def _target_cpu(inp: CheckInput) -> Outcome:
    count = inp.target.cpu.count if inp.target.cpu is not None else None
    if count is None:
        return _unknown(inp.dst, "its CPU count")
    comparison = f"{inp.dst} has {count} logical CPUs; {_ve(inp)} has {inp.ve.vcpus} vCPUs"
    if count >= inp.ve.vcpus:
        return PASSED, comparison
    return FAILED, f"{comparison}: reduce the VE's vCPUs or choose a larger target"


@_check(CheckName.SSH_PORT)
def _ssh_port(inp: CheckInput) -> Outcome:
    if inp.ssh_port_open is None:
        return SKIPPED, f"unknown whether {inp.src} reaches port 22 on {inp.dst}; not checked"
    if inp.ssh_port_open:
        return PASSED, f"{inp.src} reaches port 22 on {inp.dst}"
    return FAILED, (
        f"the source cannot reach port 22 on the target: allow direct SSH from {inp.spec.source.host} "
        f"to {inp.spec.target.host} port 22 (firewall, sshd)"
    )


@_check(CheckName.BRIDGES)
def _bridges(inp: CheckInput) -> Outcome:
    used = sorted(set(inp.ve.bridges))
    if not used:
        return PASSED, f"{_ve(inp)} uses no bridged network"
    if inp.target.network is None or not inp.target.network.bridges:
        return _unknown(inp.dst, "its bridges")
    have = inp.target.network.bridges
    missing = [b for b in used if b not in have]
    if not missing:
        return PASSED, f"{inp.dst} has every bridge {_ve(inp)} uses: {_listed(used)}"
    return FAILED, (
        f"{inp.dst} lacks bridge(s) {_listed(missing)} used by {_ve(inp)} (it has {_listed(sorted(have))}); "
        "bridge names must be exactly the same on both hosts: create them on the target"
    )


@_check(CheckName.SNAPSHOTS, only=VEKind.VM)
def _snapshots(inp: CheckInput) -> Outcome:
    n = inp.ve.snapshots
    if n is None:
        return _unknown(inp.src, f"the snapshots of {_ve(inp)}")
    if n <= 0:
        return PASSED, f"{_ve(inp)} has no snapshots"
    return FAILED, (
        f"{_ve(inp)} has {n} snapshot{'s' if n != 1 else ''}; VMs with snapshots cannot be migrated: "
        f"delete the {n} snapshot{'s' if n != 1 else ''} (prlctl snapshot-delete) or skip NoSnapshots"
    )


@_check(CheckName.LINKED_CLONES)
def _linked_clones(inp: CheckInput) -> Outcome:
    if inp.ve.linked_clone is None:
        return _unknown(inp.src, f"whether {_ve(inp)} is a linked clone")
    if not inp.ve.linked_clone:
        return PASSED, f"{_ve(inp)} is neither a linked clone nor the base of one"
    return FAILED, (
        f"{_ve(inp)} is a linked clone or has linked clones; these cannot be migrated: make it a full "
        "copy (prlctl clone without --linked) or delete the linked clones"
    )


@_check(CheckName.MOVABLE_STORAGE)
def _movable_storage(inp: CheckInput) -> Outcome:
    """The seed moves all of a VE's memory and disks; disks may be local or on storage both hosts share.
    What the copy would leave behind is lost when the source is removed, so it is refused here."""
    ve = inp.ve
    shared_live = inp.live and ve.shared_storage
    left = [*ve.unmovable, *(() if shared_live else ve.non_file_disks)]
    if not left:
        if ve.non_file_disks:
            return PASSED, (
                f"{_ve(inp)} is on shared storage: live migration leaves {_listed(ve.non_file_disks)} in place "
                f"for {inp.spec.target.host} to use"
            )
        return PASSED, f"the copy moves everything {_ve(inp)} keeps on {inp.spec.source.host}"
    todo = []
    if ve.unmovable:
        todo.append(
            "eject CD/DVD or floppy media (virsh change-media NAME DEV --eject --config); a VM with NVRAM "
            "(UEFI variables) or vTPM state cannot be moved by this operator: move it by hand with that state"
        )
    if ve.non_file_disks and not shared_live:
        shared = (
            "; the libvirt driver proves shared storage for disk files only: if both hosts see these disks at the same "
            "paths, they may stay where they are: skip this check (spec.checks.skip: [MovableStorage])"
            if not ve.unmovable
            else ""
        )
        todo.append(
            "block devices, storage pool volumes and network disks are not copied: detach them "
            f"(virsh detach-disk NAME DEV --persistent) or move them to a file disk{shared}"
        )
    remedy = "; ".join(todo)
    return FAILED, (
        f"{_ve(inp)} has storage the copy does not move: {_listed(left)}. Migrated as it is, it would arrive on "
        f"{inp.spec.target.host} without them (or with whatever is at the same path there), and what only "
        f"{inp.spec.source.host} keeps would be deleted with the source. {remedy[:1].upper()}{remedy[1:]}"
    )


@_check(CheckName.SHARED_STORAGE, live_only=True, only=VEKind.VM)
def _shared_storage(inp: CheckInput) -> Outcome:
    """A live migration copies local disks and leaves those on storage both hosts share where they are
    (the target runs from the same files); such disks cannot move into spec.target.path."""
    ve, path = inp.ve, inp.spec.target.path
    if not ve.disk_paths:
        return PASSED, f"{_ve(inp)} has no disk files"
    if ve.shared_disks is None:
        return SKIPPED, (
            f"could not tell which disks of {_ve(inp)} {inp.spec.target.host} sees as the same files (a probe "
            f"file next to each disk on {inp.spec.source.host}, looked for from the target); not checked. A disk "
            "the target does see stops the copy with TargetPathInUse, and stays as it is"
        )
    shared = [d for d in ve.disk_paths if d in ve.shared_disks]
    local = [d for d in ve.disk_paths if d not in ve.shared_disks]
    if not shared:
        where = f"into {path}/{ve.uuid}/" if path else "at the same paths"
        return PASSED, f"no disk of {_ve(inp)} is on storage both hosts share: {_listed(local)} copied {where}"
    if path:
        return FAILED, (
            f"spec.target.path {path} cannot be honoured: {_listed(shared)} of {_ve(inp)} "
            f"{'is' if len(shared) == 1 else 'are'} on storage both hosts share, and a live migration leaves "
            "such disks where they are (the target runs from the same files). Remove spec.target.path, or move "
            "the VM offline (it is then copied into the path)"
        )
    if not local:
        return PASSED, (
            f"{_listed(shared)} of {_ve(inp)} {'is' if len(shared) == 1 else 'are'} on storage both hosts share: "
            f"not copied, {inp.spec.target.host} runs from the same files, and nothing of them is removed"
        )
    return PASSED, (
        f"{_listed(shared)} of {_ve(inp)} on storage both hosts share: not copied, nothing of them removed; "
        f"{_listed(local)} local: copied at the same paths"
    )


@_check(CheckName.VE_TYPE)
def _ve_type(inp: CheckInput) -> Outcome:
    kinds = inp.target.ve_types
    if not kinds:
        return _unknown(inp.dst, "which kinds of VE it runs")
    runs = ", ".join(k.value for k in kinds)
    if inp.ve.type in kinds:
        return PASSED, f"{inp.dst} runs {runs}"
    if inp.container:
        return FAILED, (
            f"{inp.dst} runs only {runs}: a container cannot be migrated into a virtual machine; choose a "
            "target that runs containers"
        )
    return FAILED, f"{inp.dst} runs only {runs}: choose a target that runs virtual machines"


@_check(CheckName.TUNNEL)
def _tunnel(inp: CheckInput) -> Outcome:
    if inp.spec.tunnel:
        return PASSED, "migration traffic goes through the encrypted tunnel"
    if inp.container:
        return FAILED, "tunnelless container migration is not supported: set spec.tunnel to true"
    return PASSED, (
        "tunnel off (--no-tunnel): migration traffic is unencrypted and the target's firewall must allow "
        "incoming connections on any port of the migration interface"
    )


# What each capability is needed for, and what to do when the source's driver lacks it.
_REMEDIES: dict[Capability, str] = {
    Capability.LIVE_VM: "stop the VM and migrate offline",
    Capability.LIVE_CONTAINER: (
        "stop the container and migrate offline, or migrate it live between Virtuozzo nodes (driver: prlctl)"
    ),
    Capability.OFFLINE_VM: "start the VM and migrate live",
    Capability.OFFLINE_CONTAINER: "start the container and migrate live",
    Capability.CLONE: "migrate without clone",
    Capability.LIVE_CLONE: "stop the VE and migrate offline with clone, or migrate without clone",
    Capability.SUSPENDED_CLONE: "resume or stop the VM first",
    Capability.CHANGE_SID: "run Sysprep in the clone instead, and migrate without changeSid",
    Capability.BANDWIDTH: "remove spec.bandwidthMiBps",
    Capability.MAX_DOWNTIME: "remove spec.maxDowntimeMs",
    Capability.AUTO_CONVERGE: "remove spec.autoConverge",
    Capability.POST_COPY: "remove spec.postCopy",
}


def needed_capabilities(inp: CheckInput) -> list[tuple[Capability, str]]:
    """What the migration asks of its source host's driver: (capability, what asks for it)."""
    spec, ve = inp.spec, _ve(inp)
    if inp.live:
        kind = Capability.LIVE_CONTAINER if inp.container else Capability.LIVE_VM
        needs = [(kind, f"a live migration of {ve}")]
    else:
        kind = Capability.OFFLINE_CONTAINER if inp.container else Capability.OFFLINE_VM
        needs = [(kind, f"an offline migration of {ve}")]
    if spec.clone:
        needs.append((Capability.CLONE, "spec.clone"))
        if inp.live:
            needs.append((Capability.LIVE_CLONE, f"spec.clone of {ve}, {inp.ve.state.value} (live)"))
        if inp.ve.state == VEState.SUSPENDED:
            needs.append((Capability.SUSPENDED_CLONE, f"spec.clone of {ve}, suspended"))
    if spec.change_sid:
        needs.append((Capability.CHANGE_SID, "spec.changeSid"))
    tuning = (
        (Capability.BANDWIDTH, "spec.bandwidthMiBps", spec.bandwidth_mib_ps),
        (Capability.MAX_DOWNTIME, "spec.maxDowntimeMs", spec.max_downtime_ms),
        (Capability.AUTO_CONVERGE, "spec.autoConverge", spec.auto_converge),
        (Capability.POST_COPY, "spec.postCopy", spec.post_copy),
    )
    needs += [(capability, field) for capability, field, value in tuning if value]
    return needs


@_check(CheckName.DRIVER_CAPABILITIES)
def _driver_capabilities(inp: CheckInput) -> Outcome:
    """The source's driver runs the job: what it cannot do is refused here, not when the job starts."""
    have = inp.source.capabilities
    if not have:
        return _unknown(inp.src, "what its driver can do (capabilities)")
    needs = needed_capabilities(inp)
    missing = [(capability, why) for capability, why in needs if capability not in have]
    if not missing:
        return PASSED, f"{inp.src} can do all this migration asks: {_listed([c.value for c, _ in needs])}"
    lacking = "; ".join(f"{why} needs {capability.value}" for capability, why in missing)
    remedies = "; ".join(dict.fromkeys(_REMEDIES[capability] for capability, _ in missing))
    return FAILED, (
        f"{inp.src} cannot do what this migration asks: {lacking}, which its driver does not offer (it offers "
        f"{_listed([c.value for c in have])}). {remedies[:1].upper()}{remedies[1:]}, or choose hosts whose driver can"
    )


# -- live migration only ------------------------------------------------------------------------
@_check(CheckName.ENCRYPTED_DISK_COPY, live_only=True)
def _encrypted_disk_copy(inp: CheckInput) -> Outcome:
    if not inp.spec.tunnel:
        return PASSED, "tunnel off: nothing to keep encrypted"
    if inp.ve.shared_storage or inp.ve.disk_bytes == 0 or _all_shared(inp):
        return PASSED, f"{_ve(inp)} has no local disks to copy"
    missing = []
    for label, host in ((inp.src, inp.source), (inp.dst, inp.target)):
        if host.encrypted_disk_copy is None:
            return _unknown(label, "whether it can copy disks encrypted")
        if not host.encrypted_disk_copy:
            missing.append(label)
    if not missing:
        return PASSED, "both hosts copy local disks inside the encrypted migration"
    return FAILED, (
        f"{' and '.join(missing)} cannot copy local disks encrypted (libvirt: QEMU migration TLS certificates "
        "missing, see docs/libvirt.md); the operator never drops encryption silently: install the "
        "certificates, or set tunnel: false to accept an unencrypted copy"
    )


@_check(CheckName.TIME_SYNC, live_only=True)
def _time_sync(inp: CheckInput) -> Outcome:
    a, b = inp.source.time_offset_ms, inp.target.time_offset_ms
    if a is None:
        return _unknown(inp.src, "its clock offset")
    if b is None:
        return _unknown(inp.dst, "its clock offset")
    skew = abs(a - b)
    comparison = (
        f"clocks differ by {skew} ms ({inp.src} {a:+d} ms, {inp.dst} {b:+d} ms against the operator); "
        f"live migration allows at most {MAX_TIME_SKEW_MS} ms"
    )
    if skew <= MAX_TIME_SKEW_MS:
        return PASSED, comparison
    return FAILED, f"{comparison}: synchronise both hosts with NTP (chronyd: systemctl enable --now chronyd)"


@_check(CheckName.LINK_SPEED, live_only=True)
def _link_speed(inp: CheckInput) -> Outcome:
    speeds: list[tuple[str, int]] = []
    for label, host in ((inp.src, inp.source), (inp.dst, inp.target)):
        speed = host.network.link_speed_mbps if host.network is not None else None
        if speed is None:
            return _unknown(label, "its link speed")
        speeds.append((label, speed))
    slow = [f"{label} links at {mbps} Mbit/s" for label, mbps in speeds if mbps < MIN_LINK_MBPS]
    if not slow:
        both = ", ".join(f"{label} {mbps} Mbit/s" for label, mbps in speeds)
        return PASSED, f"{both}; live migration needs at least {MIN_LINK_MBPS} Mbit/s"
    return FAILED, (
        f"{'; '.join(slow)}; live migration needs at least {MIN_LINK_MBPS} Mbit/s (1 Gbit/s): use a faster "
        "link (HypervisorHost migrationAddress) or migrate offline"
    )


_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(cidrs: Sequence[str]) -> list[_Network]:
    nets: list[_Network] = []
    for cidr in cidrs:
        try:
            net = ipaddress.ip_network(cidr.strip(), strict=False)
        except ValueError:
            continue  # a garbled entry is no evidence either way
        # Every host has loopback and link-local networks; sharing those proves nothing.
        if not (net.is_loopback or net.is_link_local):
            nets.append(net)
    return nets


@_check(CheckName.SUBNET, live_only=True)
def _same_subnet(inp: CheckInput) -> Outcome:
    src = _networks(inp.source.network.subnets) if inp.source.network is not None else []
    dst = _networks(inp.target.network.subnets) if inp.target.network is not None else []
    for label, nets in ((inp.src, src), (inp.dst, dst)):
        if not nets:
            return _unknown(label, "any subnet other than loopback or link-local")
    shared = sorted({str(a) for a in src for b in dst if a.version == b.version and a.overlaps(b)})
    if shared:
        return PASSED, f"both hosts are on {_listed(shared)}"
    return FAILED, (
        f"{inp.src} is on {_listed([str(n) for n in src])}, {inp.dst} on {_listed([str(n) for n in dst])}: "
        "live migration needs both in the same subnet; choose a target there or migrate offline"
    )


_VENDORS = {"genuineintel": "Intel", "intel": "Intel", "authenticamd": "AMD", "amd": "AMD"}


def _vendor(host: HostStatus) -> str | None:
    raw = host.cpu.vendor if host.cpu is not None else None
    if not raw or not raw.strip():
        return None
    return _VENDORS.get(raw.strip().lower(), raw.strip())


@_check(CheckName.CPU_VENDOR, live_only=True)
def _cpu_vendor(inp: CheckInput) -> Outcome:
    a, b = _vendor(inp.source), _vendor(inp.target)
    if a is None:
        return _unknown(inp.src, "its CPU vendor")
    if b is None:
        return _unknown(inp.dst, "its CPU vendor")
    if a.lower() == b.lower():
        return PASSED, f"both hosts have {a} CPUs"
    return FAILED, (
        f"{inp.src} has {a} CPUs, {inp.dst} has {b}: live migration needs the same CPU vendor; choose a "
        f"target with {a} CPUs or stop the VE and migrate offline"
    )


@_check(CheckName.CPU_FEATURES, live_only=True)
def _cpu_features(inp: CheckInput) -> Outcome:
    src, dst = inp.source.cpu, inp.target.cpu
    pool_a = src.pool if src is not None else None
    pool_b = dst.pool if dst is not None else None
    if pool_a and pool_a == pool_b:
        return PASSED, f"both hosts are in CPU pool {pool_a!r}, which guarantees live migration between its members"
    if src is None or not src.features:
        return _unknown(inp.src, "its CPU features")
    if dst is None or not dst.features:
        return _unknown(inp.dst, "its CPU features")
    have = {f.lower() for f in dst.features}
    missing = sorted({f.lower() for f in src.features} - have)
    if not missing:
        return PASSED, f"{inp.dst} offers all {len(set(src.features))} CPU features of {inp.src}"
    amd = "AMD" in (_vendor(inp.source), _vendor(inp.target))
    remedy = (
        "CPU pools and feature masks do not work on AMD processors: choose a target with the same CPU features"
        if amd
        else "put both hosts in one CPU pool, or mask the features on the source with prlsrvctl set "
        "--cpu-features-mask (pools and masks work on Intel Ivy Bridge and newer, not on AMD)"
    )
    return FAILED, f"{inp.dst} lacks {len(missing)} CPU feature(s) of {inp.src}: {_listed(missing)}; {remedy}"


@_check(CheckName.CPUID_OVERRIDE, live_only=True, only=VEKind.CONTAINER)
def _cpuid_override(inp: CheckInput) -> Outcome:
    lacking: list[str] = []
    unknown: list[str] = []
    for label, host in ((inp.src, inp.source), (inp.dst, inp.target)):
        if host.cpuid_override or host.nested:  # nested installations are exempt
            continue
        (unknown if host.cpuid_override is None else lacking).append(label)
    if lacking:
        return FAILED, (
            f"{' and '.join(lacking)} lack{'s' if len(lacking) == 1 else ''} /proc/vz/cpuid_override: container "
            "live migration needs it on both physical hosts (check with ls /proc/vz | grep cpuid_override); "
            "if the host is itself a VM (nested), this rule does not apply: skip CpuidOverride"
        )
    if unknown:
        return _unknown(" and ".join(unknown), "whether /proc/vz/cpuid_override exists")
    return PASSED, "both hosts have /proc/vz/cpuid_override or are nested"


@_check(CheckName.ENTER_SESSIONS, live_only=True)
def _enter_sessions(inp: CheckInput) -> Outcome:
    n = inp.ve.enter_sessions
    if n is None:
        return _unknown(inp.src, f"open prlctl enter sessions of {_ve(inp)}")
    if n <= 0:
        return PASSED, f"{_ve(inp)} has no open prlctl enter sessions"
    return FAILED, (
        f"{_ve(inp)} has {n} open prlctl enter session{'s' if n != 1 else ''}: exit them, or stop the VE "
        "and migrate offline"
    )


@_check(CheckName.IPSEC, live_only=True, only=VEKind.CONTAINER)
def _ipsec(inp: CheckInput) -> Outcome:
    if inp.ve.ipsec is None:
        return _unknown(inp.src, f"IPSec use in {_ve(inp)}")
    if not inp.ve.ipsec:
        return PASSED, f"{_ve(inp)} has no IPSec connections"
    return FAILED, f"{_ve(inp)} has IPSec connections: close them, or stop the container and migrate offline"


@_check(CheckName.NFS_CLIENT, live_only=True, only=VEKind.CONTAINER)
def _nfs_client(inp: CheckInput) -> Outcome:
    nfs = inp.ve.nfs
    if nfs is None:
        return _unknown(inp.src, f"NFS client use in {_ve(inp)}")
    if not nfs.client:
        return PASSED, f"{_ve(inp)} has no NFS mounts"
    problems = []
    if nfs.open_device_files > 0:
        problems.append(
            f"{nfs.open_device_files} block or character device file(s) shared over NFS are open: close them"
        )
    if nfs.remote_locks and nfs.overmounted:
        problems.append("remote file locking and over-mounted NFS file systems are used together: stop one of them")
    if not problems:
        return PASSED, f"{_ve(inp)} mounts NFS within the live-migration rules (local locks migrate with NFSv3 only)"
    return FAILED, f"{_ve(inp)} has NFS mounts that block live migration: {'; '.join(problems)}; or migrate offline"


@_check(CheckName.NFS_SERVER, live_only=True, only=VEKind.CONTAINER)
def _nfs_server(inp: CheckInput) -> Outcome:
    if inp.ve.nfs_server is None:
        return _unknown(inp.src, f"whether the NFS server feature is on in {_ve(inp)}")
    if not inp.ve.nfs_server:
        return PASSED, f"{_ve(inp)} has the NFS server feature off"
    return FAILED, (
        f"{_ve(inp)} has the NFS server feature on: turn it off (prlctl set --features nfsd:off) or stop the "
        "container and migrate offline"
    )


# -- Virtuozzo 6 to Virtuozzo Hybrid Server 7 ---------------------------------------------------
@_check(CheckName.V6_SOURCE_VERSION, v6_only=True)
def _v6_source_version(inp: CheckInput) -> Outcome:
    parsed = _product(inp.source)
    assert parsed is not None  # in scope only for a parsed Virtuozzo 6
    version, build = parsed
    need = f"{_dotted(V6_MIN_SOURCE[:3])}-{V6_MIN_SOURCE[3]}"
    have = _version_text(inp.source)
    base = _pad(version)
    if base == V6_MIN_SOURCE[:3] and build is None:
        return (
            SKIPPED,
            f"{inp.src} runs {have}: its build number is unknown, so it may be older than {need}; not checked",
        )
    if (*base, build or 0) >= V6_MIN_SOURCE:
        return PASSED, f"{inp.src} runs {have} (at least {need})"
    return FAILED, f"{inp.src} runs {have}: migration to Virtuozzo Hybrid Server 7 needs at least {need}; update it"


@_check(CheckName.V6_TARGET_VERSION, v6_only=True)
def _v6_target_version(inp: CheckInput) -> Outcome:
    text = _version_text(inp.target)
    if text is None:
        return _unknown(inp.dst, "its product version")
    parsed = _product(inp.target)
    newest = "Virtuozzo Hybrid Server 7.5 Update 4 (7.5.4)"
    if parsed is None or parsed[0][0] != 7:
        return (
            FAILED,
            f"{inp.dst} runs {text}: Virtuozzo 6 VEs migrate only to Virtuozzo (Hybrid Server) 7, up to {newest}",
        )
    if _pad(parsed[0]) <= V6_MAX_TARGET:
        return PASSED, f"{inp.dst} runs {text} (at most {newest})"
    return FAILED, (
        f"{inp.dst} runs {text}, newer than {newest}, the highest supported target for Virtuozzo 6 "
        "migrations: choose a target at that version"
    )


@_check(CheckName.V6_VM_RUNNING, v6_only=True, only=VEKind.VM)
def _v6_vm_running(inp: CheckInput) -> Outcome:
    if inp.ve.state == VEState.RUNNING:
        return PASSED, f"{_ve(inp)} is running: hot migration (it restarts on the target after conversion)"
    return FAILED, (
        f"{_ve(inp)} is {inp.ve.state.value}: Virtuozzo 6 VMs migrate only running (hot migration); start it first"
    )


@_check(CheckName.V6_CONTAINER_STOPPED, v6_only=True, only=VEKind.CONTAINER)
def _v6_container_stopped(inp: CheckInput) -> Outcome:
    if inp.ve.state in _OFFLINE_STATES:
        return PASSED, f"{_ve(inp)} is {inp.ve.state.value}: offline migration"
    return FAILED, (
        f"{_ve(inp)} is {inp.ve.state.value}: Virtuozzo 6 containers migrate only offline; stop it first (prlctl stop)"
    )


@_check(CheckName.V6_GUEST_OS, v6_only=True, only=VEKind.VM)
def _v6_guest_os(inp: CheckInput) -> Outcome:
    installed = inp.ve.guest_os_installed
    if installed is None:
        return _unknown(inp.src, f"whether {_ve(inp)} has a guest OS installed")
    if installed:
        return PASSED, f"{_ve(inp)} has a guest OS installed"
    return (
        FAILED,
        f"{_ve(inp)} has no guest OS installed: Virtuozzo 6 VMs are converted by their guest OS; install one first",
    )
