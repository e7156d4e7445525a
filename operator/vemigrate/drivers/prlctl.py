"""The prlctl driver: Virtuozzo Hybrid Server nodes (and Virtuozzo 6 sources) driven with their own
`prlctl` and `prlsrvctl` over SSH.

How it reaches a node: one asyncssh connection with the host key verified (drivers/ssh.py); every
command is an argv, each word shell-quoted. Facts come from `prlsrvctl info --full -j`, `prlsrvctl
net list -j`, `prlctl list -a -i -j`, `prlctl snapshot-list`, `/proc/vz/cpuid_override`,
`/proc/meminfo`, `df`, `ip` and the clock (drivers/prlctl_output.py reads prlctl's and prlsrvctl's
output; drivers/hostfacts.py the addresses, link speeds and clock lines, as for libvirt hosts).

How it migrates: `prlctl migrate` itself is the engine, run on the source node as a detached job
(drivers/hostjob.py: `<jobs dir>/<migration UID>/<attempt>/` with `job.sh`, `pid`, `log`, `exit`), under a
pseudo-terminal so prlctl prints its progress, with its own PID in `migrate.pid`. A restarted
operator reads those files and re-attaches; it never starts a second job. Progress is prlctl's
percentage, scaled to the VE's size. Cancel sends SIGTERM to prlctl, which (PrlCleanup.cpp) asks the
dispatcher to cancel the migration and exits with an error; SIGKILL would leave the dispatcher
migrating, so it is never used. prlctl disposes of the source itself once the copy is complete (VMs
removed, containers' private area and config renamed `.migrated`, clones kept); the driver checks it.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Collection, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import PurePosixPath

from vemigrate.api.host import Capability, CPUFacts, HostStatus, StorageFacts, VEKind, VersionFacts
from vemigrate.api.migration import Mode, SourceDisposition
from vemigrate.api.reasons import Reason
from vemigrate.core.access import HostAccess
from vemigrate.core.checks import is_virtuozzo6
from vemigrate.core.observation import JobObservation, JobState, JobStats, VEFacts, VEState
from vemigrate.drivers import hostfacts, hostjob
from vemigrate.drivers import prlctl_output as out
from vemigrate.drivers.errors import PermanentError, RetryableError
from vemigrate.drivers.prlctl_command import PRLCTL, PRLSRVCTL, migrate_argv, request_for, under_pty
from vemigrate.drivers.protocol import MigrationPlan
from vemigrate.drivers.ssh import Completed, SSHHost

# What prlctl migrate does (HostStatus.capabilities): every kind and mode, clones and --changesid; none
# of the tuning options, which its dispatcher decides itself (prlctl_command.request_for refuses them).
CAPABILITIES = (
    Capability.LIVE_VM,
    Capability.LIVE_CONTAINER,
    Capability.OFFLINE_VM,
    Capability.OFFLINE_CONTAINER,
    Capability.CLONE,
    Capability.LIVE_CLONE,
    Capability.SUSPENDED_CLONE,
    Capability.CHANGE_SID,
)
CT_PRIVATE = "/vz/private"  # Virtuozzo's default container private areas (VE_PRIVATE in vz.conf)
LIST_TIMEOUT = 60.0
MIGRATE_PID = "migrate.pid"
VE_RECORD = "ve.json"  # the VE as it was when the job started: disposition is checked against it
BEFORE = "before"  # on the target: `prlctl list -a -i -j` as it was just before prlctl migrate ran

# On the target, $1 its job directory: what it holds before prlctl migrate creates anything there, kept
# from the job's first start (a second start never rewrites it).
_RECORD_BEFORE = (
    'umask 077; mkdir -p -- "$1" && { [ -e "$1/before" ] || '
    '{ prlctl list -a -i -j >"$1/before.tmp" && mv -- "$1/before.tmp" "$1/before"; }; }'
)
_FORGET_BEFORE = 'rm -rf -- "$1" && { rmdir -- "$2" 2>/dev/null; true; }'

# One round trip of facts that prlsrvctl does not give (with hostfacts.DF: free space of the storage
# paths in $@; hostfacts.SHELL: addresses, link speeds, clock, kernel).
_FACTS = (
    r"""
[ -e /proc/vz/cpuid_override ] && echo "cpuid_override yes" || echo "cpuid_override no"
grep -qw hypervisor /proc/cpuinfo && echo "nested yes" || echo "nested no"
awk -F': *' '/^vendor_id/ {print "vendor", $2; exit}' /proc/cpuinfo
echo "cpus $(nproc)"
awk '/^MemTotal:/ {printf "memtotal %.0f\n", $2 * 1024}
     /^MemAvailable:/ {printf "memfree %.0f\n", $2 * 1024}' /proc/meminfo
"""
    + hostfacts.DF
    + hostfacts.SHELL
    + r"""[ -r /etc/virtuozzo-release ] && echo "release $(head -n 1 /etc/virtuozzo-release)"
true
"""
)

# Per VE: its snapshots, the bytes its disks (or private area) hold, its file system type, and the
# process list (open `prlctl enter` / `vzctl enter` sessions). $1: UUID, $2: home, $3...: what to measure.
_VE_FACTS = r"""
ve=$1; home=$2; shift 2
echo "--- snapshots"; prlctl snapshot-list "$ve" -H 2>/dev/null; echo "--- snapshots-rc $?"
echo "--- du"; [ "$#" -gt 0 ] && du -sbc -- "$@" 2>/dev/null | tail -n 1 | cut -f1
echo "--- fstype"; [ -n "$home" ] && df --output=fstype "$home" 2>/dev/null | tail -n 1
echo "--- ps"; ps -eo args=
"""

# Inside a running container (`prlctl exec <CT> --without-shell /bin/sh`, this on stdin: no shell
# quoting to survive): what the IPSec and NFS live-migration rules ask, read from /proc so a minimal
# container answers too. IPSec: an IKE daemon runs, or (where `ip` has xfrm) the kernel holds SAs.
# NFS: mounts, mounts without local-only locking, NFS mount points stacked with another mount, and
# open block or character device files under an NFS mount.
CT_INSIDE = r"""
ike=0
for c in /proc/[0-9]*/comm; do
  case "$(cat "$c" 2>/dev/null)" in charon|pluto|racoon|iked|starter) ike=$((ike + 1));; esac
done
echo "ike_daemons $ike"
xfrm=$(ip xfrm state 2>/dev/null) && echo "xfrm_states $(printf '%s\n' "$xfrm" | grep -c '^src ')"
nfs=$(awk '$3 ~ /^nfs4?$/ {print $2}' /proc/mounts)
echo "nfs_mounts $(printf '%s\n' "$nfs" | grep -c .)"
echo "nfs_remote_locks $(awk '$3 ~ /^nfs4?$/ && $4 !~ /(^|,)(nolock|local_lock=all)(,|$)/' /proc/mounts | grep -c .)"
stacked='{n[$2]++; if ($3 ~ /^nfs4?$/) f[$2] = 1} END {c = 0; for (m in f) if (n[m] > 1) c++; print c}'
echo "nfs_overmounted $(awk "$stacked" /proc/mounts)"
dev=0
for fd in /proc/[0-9]*/fd/*; do
  [ -b "$fd" ] || [ -c "$fd" ] || continue
  t=$(readlink "$fd")
  for m in $nfs; do case "$t" in "$m"/*) dev=$((dev + 1)); break;; esac; done
done
echo "nfs_open_devices $dev"
"""

_SHARED_FS = ("fuse.vstorage", "fuse.pstorage", "nfs", "nfs4", "gfs2")


class PrlctlDriver:
    """One Virtuozzo node reached over SSH. See the module docstring for how."""

    def __init__(self, access: HostAccess) -> None:
        self.access = access
        self.ssh = SSHHost(access)

    async def close(self) -> None:
        await self.ssh.close()

    # -- plumbing ---------------------------------------------------------------------------
    async def _tool(self, argv: list[str], *, timeout: float = LIST_TIMEOUT) -> Completed:
        """prlctl or prlsrvctl, with its exit status turned into a classified error."""
        done = await self.ssh.run(argv, timeout=timeout, check=False)
        if done.ok:
            return done
        said = (done.stderr.strip() or done.stdout.strip())[-500:]
        where = f"{' '.join(argv[:2])} on {self.access.name}"
        if done.exit_status == 127:
            raise PermanentError(Reason.PRLCTL_MISSING, f"{argv[0]} is not installed on {self.access.name}: {said}")
        if done.exit_status == out.EXIT_NO_DISPATCHER:
            raise RetryableError(Reason.DISPATCHER_UNAVAILABLE, f"{where}: the dispatcher does not answer: {said}")
        raise PermanentError(Reason.PRLCTL_ERROR, f"{where} exited {done.exit_status}: {said}")

    async def _list(self) -> list[out.ListedVE]:
        listed = await self._tool([PRLCTL, "list", "-a", "-i", "-j"])
        try:
            return out.parse_list(listed.stdout)
        except ValueError as exc:
            raise PermanentError(Reason.PRLCTL_OUTPUT, f"{self.access.name}: {exc}") from exc

    async def _lookup(self, name: str) -> out.ListedVE | None:
        return next((entry for entry in await self._list() if entry.matches(name)), None)

    # -- facts ------------------------------------------------------------------------------
    async def probe(self, paths: Sequence[str] = ()) -> HostStatus:
        info_text = (await self._tool([PRLSRVCTL, "info", "--full", "-j"])).stdout
        nets_text = (await self._tool([PRLSRVCTL, "net", "list", "-j"])).stdout
        try:
            info = out.parse_server_info(info_text)
            networks = out.parse_networks(nets_text)
        except ValueError as exc:
            raise PermanentError(Reason.PRLCTL_OUTPUT, f"{self.access.name}: {exc}") from exc
        measured = list(dict.fromkeys(p for p in (info.vm_home, CT_PRIVATE, *paths, "/") if p))
        shell, sent_ns = await hostfacts.run(self.ssh, _FACTS, measured)
        return host_status(info, networks, shell, sent_ns, self.access, measured)

    async def find_ve(self, name: str, *, for_checks: bool = False) -> VEFacts | None:
        entry = await self._lookup(name)
        if entry is None:
            return None
        facts = entry.facts
        measure = list(entry.images) if facts.type == VEKind.VM and entry.images else [entry.home or ""]
        measure = [m for m in measure if m]
        done = await self.ssh.run(["sh", "-c", _VE_FACTS, "sh", facts.uuid, entry.home or "", *measure])
        sections = _sections(done.stdout)
        snapshots_ok = sections.get("snapshots-rc", "").strip() == "0"
        du = sections.get("du", "").strip()
        fstype = sections.get("fstype", "").strip()
        ipsec, nfs = facts.ipsec, facts.nfs
        if facts.type == VEKind.CONTAINER and facts.state == VEState.RUNNING:
            inside = await self.ssh.run(
                [PRLCTL, "exec", facts.uuid, "--without-shell", "/bin/sh"], input=CT_INSIDE, check=False
            )
            # Unreadable (no /bin/sh in the container, say): the checks say Skipped, with why.
            ipsec, nfs = out.inside_container(inside.stdout) if inside.ok else (None, None)
        return replace(
            facts,
            ipsec=ipsec,
            nfs=nfs,
            snapshots=out.count_snapshots(sections.get("snapshots", "")) if snapshots_ok else None,
            disk_bytes=int(du) if du.isdigit() else None,
            shared_storage=fstype.startswith(_SHARED_FS),
            enter_sessions=enter_sessions(sections.get("ps", ""), entry),
        )

    async def reaches(self, other: HostAccess, uid: str | None = None) -> bool:
        return await self.ssh.reaches(other)

    async def shared_disks(self, ve: VEFacts, target: HostAccess, uid: str | None = None) -> tuple[str, ...] | None:
        # Virtuozzo Storage and NFS are known by their file system type (find_ve): all or nothing.
        return ve.disk_paths if ve.shared_storage else ()

    # -- the job on the source --------------------------------------------------------------
    async def start_job(self, plan: MigrationPlan) -> None:
        ve = plan.ve
        if ve is None:
            raise PermanentError(Reason.VE_NOT_FOUND, f"VE {plan.spec.source.name!r} is not on {self.access.name}")
        argv = migrate_argv(request_for(plan, target_ve_id=await self._target_ve_id(plan, ve)))
        where = hostjob.job_dir(plan.uid, plan.attempt)
        entry = await self._lookup(ve.uuid)
        record = {
            "uuid": ve.uuid,
            "name": ve.name,
            "type": ve.type.value,
            "home": entry.home if entry else ve.storage_path,
            "argv": argv,
        }
        await self.ssh.run(["mkdir", "-p", where])
        await self.ssh.run(
            ["sh", "-c", '[ -e "$1/pid" ] || cat >"$1/$2"', "sh", where, VE_RECORD], input=json.dumps(record) + "\n"
        )
        await hostjob.start(self.ssh, plan.uid, plan.attempt, job_script(argv, plan))

    async def _target_ve_id(self, plan: MigrationPlan, ve: VEFacts) -> str | None:
        """The seed: a Virtuozzo 6 container going to a Virtuozzo Storage cluster is named by its UUID
        on the target (`<server>/<CT_UUID>`). Asked only for containers on Virtuozzo 6 sources."""
        if ve.type != VEKind.CONTAINER or not is_virtuozzo6(await self.probe()):
            return None
        path = plan.target_path
        if path is None:
            return None
        fstype = await self.ssh.run(_on_target(plan, ["findmnt", "-n", "-o", "FSTYPE", "-T", path]), check=False)
        return ve.uuid if fstype.stdout.strip().startswith(("fuse.vstorage", "fuse.pstorage")) else None

    async def job(self, plan: MigrationPlan) -> JobObservation:
        return self._observe(plan, await hostjob.read(self.ssh, plan.uid, plan.attempt))

    def _observe(self, plan: MigrationPlan, record: hostjob.JobRecord) -> JobObservation:
        observed = hostjob.observe(record, f"prlctl migrate on {self.access.name}", out.classify_exit)
        if observed is not None:
            return observed
        if record.state == "running":
            return JobObservation(state=JobState.RUNNING, stats=progress_stats(plan, record.log_tail))
        return JobObservation(state=JobState.COMPLETED, stats=progress_stats(plan, record.log_tail, done=True))

    async def wait_job_end(self, plan: MigrationPlan, seconds: float) -> JobObservation | bool | None:
        ended = await hostjob.wait_end(self.ssh, plan.uid, plan.attempt, seconds)
        return self._observe(plan, ended) if isinstance(ended, hostjob.JobRecord) else ended

    async def abort_job(self, plan: MigrationPlan) -> None:
        """SIGTERM to prlctl: it asks the dispatcher to cancel, then exits with an error. Before prlctl
        started (no migrate.pid yet) the job's process group gets the SIGTERM instead."""
        started = await self.ssh.run(
            ["test", "-s", f"{hostjob.job_dir(plan.uid, plan.attempt)}/{MIGRATE_PID}"], check=False
        )
        await hostjob.kill(self.ssh, plan.uid, plan.attempt, MIGRATE_PID if started.ok else "")

    async def force_complete(self, plan: MigrationPlan) -> None:
        """prlctl has no such control: its dispatcher decides when to switch over. Nothing to do."""
        return None

    async def _recorded(self, plan: MigrationPlan) -> dict[str, str]:
        done = await self.ssh.run(["cat", f"{hostjob.job_dir(plan.uid, plan.attempt)}/{VE_RECORD}"], check=False)
        try:
            data = json.loads(done.stdout) if done.ok else {}
        except json.JSONDecodeError:
            data = {}
        return {k: str(v) for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}

    async def source_disposed(self, plan: MigrationPlan, disposition: SourceDisposition) -> bool:
        if disposition == SourceDisposition.KEPT:
            return True
        recorded = await self._recorded(plan)
        uuid = recorded.get("uuid") or (plan.ve.uuid if plan.ve else plan.spec.source.name)
        if await self._lookup(uuid) is not None:
            return False
        # Judged by what the VE was when the job started: a container's kind is not visible any more
        # once prlctl has renamed it, whatever disposition the caller inferred.
        container = recorded.get("type") == VEKind.CONTAINER.value or disposition == SourceDisposition.RENAMED_MIGRATED
        if not container:
            return True
        home = recorded.get("home")
        if not home:
            return True  # the record is gone (a final pass already forgot the job): unregistered is all we know
        renamed = await self.ssh.run(["test", "-e", f"{home}.migrated"], check=False)
        return renamed.ok

    async def dispose_source(self, plan: MigrationPlan, disposition: SourceDisposition) -> None:
        """prlctl migrate disposes of the source itself; this runs only when it did not. A stopped VM is
        deleted; anything else is left for a person, with the reason."""
        recorded = await self._recorded(plan)
        uuid = recorded.get("uuid") or (plan.ve.uuid if plan.ve else plan.spec.source.name)
        entry = await self._lookup(uuid)
        if entry is None:
            return
        if disposition == SourceDisposition.REMOVED and entry.facts.type == VEKind.VM:
            if entry.facts.state != VEState.STOPPED:
                raise PermanentError(
                    Reason.SOURCE_STILL_RUNNING,
                    f"{entry.facts.name} is {entry.facts.state.value} on {self.access.name}",
                )
            await self._tool([PRLCTL, "delete", entry.facts.uuid], timeout=300)
            return
        raise PermanentError(
            Reason.SOURCE_NOT_RENAMED,
            f"prlctl migrate completed but {entry.facts.name} is still registered on {self.access.name}; "
            "rename its private area and config with .migrated (or delete it) by hand",
        )

    async def forget_job(self, plan: MigrationPlan) -> None:
        await hostjob.forget(self.ssh, plan.uid)

    # -- the target -------------------------------------------------------------------------
    async def _copy_here(self, plan: MigrationPlan) -> out.ListedVE | None:
        """The copy this migration makes here: the VE's UUID for a move, its name with another UUID
        for a clone (prlctl gives clones a new UUID and keeps the name)."""
        source_uuid = plan.ve.uuid if plan.ve is not None else None
        name = plan.ve.name if plan.ve is not None else plan.spec.source.name
        for entry in await self._list():
            if plan.spec.clone:
                # prlctl gives the clone a UUID of its own (not plan.copy_uuid, which it cannot be told).
                if entry.facts.name == name and entry.facts.uuid != source_uuid:
                    return entry
            elif (plan.copy_uuid is not None and entry.facts.uuid == plan.copy_uuid) or (
                plan.copy_uuid is None and entry.matches(name)
            ):
                return entry
        return None

    async def verify_target(self, plan: MigrationPlan, seen: Collection[str] = ()) -> bool:
        entry = await self._copy_here(plan)
        if entry is None:
            return False
        if plan.mode == Mode.LIVE and entry.facts.state not in (VEState.RUNNING, VEState.PAUSED):
            return False
        if plan.spec.target.path and plan.target_path:
            base = plan.target_path.rstrip("/") or "/"
            home = entry.home or ""
            if not PurePosixPath(home).is_relative_to(base):
                return False
        return True

    async def target_leftovers(self, plan: MigrationPlan) -> bool:
        """The job's directory on this host, with its record of what the host held before the job
        (cleanup removes them too)."""
        done = await self.ssh.run(["test", "-e", hostjob.job_dir(plan.uid, plan.attempt)], check=False)
        return done.ok

    async def cleanup_target(self, plan: MigrationPlan) -> None:
        """Remove this migration's half-built copy, then the job's record on this host. The copy is the VE
        `_copy_here` finds, and only when its UUID is not in the record the job made here before prlctl
        migrate ran: a VE that was here then (of the same name, or the same UUID) is never touched, and
        without a record nothing is."""
        job, record = hostjob.job_dir(plan.uid, plan.attempt), _before_record(plan)
        done = await self.ssh.run(["sh", "-c", '[ -e "$1" ] || exit 3; cat -- "$1"', "sh", record], check=False)
        if done.exit_status == 3:  # the job stopped before its record was complete: nothing here is provably its
            await self.ssh.run(["sh", "-c", _FORGET_BEFORE, "sh", job, hostjob.migration_dir(plan.uid)])
            return
        try:
            before = {entry.facts.uuid for entry in out.parse_list(done.stdout)} if done.ok else None
        except ValueError:
            before = None
        if before is not None and "" in before:
            before = None  # an entry without a UUID: not the listing it should be, so it proves nothing
        entry = await self._copy_here(plan)
        if entry is not None and before is None:
            raise PermanentError(
                Reason.TARGET_OWNERSHIP_UNKNOWN,
                f"{entry.facts.name} (UUID {entry.facts.uuid}) on {self.access.name} may be this migration's "
                f"half-built copy, but the record of what was there before ({record}) is unreadable: check "
                "the VE and delete it by hand if it is the copy",
            )
        if entry is not None and before is not None and entry.facts.uuid not in before:
            if entry.facts.state in (VEState.RUNNING, VEState.PAUSED, VEState.MIGRATING):
                await self._tool([PRLCTL, "stop", entry.facts.uuid, "--kill"], timeout=120)
            await self._tool([PRLCTL, "delete", entry.facts.uuid], timeout=300)
        await self.ssh.run(["sh", "-c", _FORGET_BEFORE, "sh", job, hostjob.migration_dir(plan.uid)])


# -- pure helpers -----------------------------------------------------------------------------
def _before_record(plan: MigrationPlan) -> str:
    return f"{hostjob.job_dir(plan.uid, plan.attempt)}/{BEFORE}"


def _on_target(plan: MigrationPlan, argv: list[str]) -> list[str]:
    """argv run on the target over the source node's own SSH (host key checked, nothing prompts)."""
    t = plan.target
    return [
        "ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-p", str(t.port),
        f"{t.user}@{t.data_address}", "--", shlex.join(argv),
    ]  # fmt: skip


def job_script(argv: list[str], plan: MigrationPlan) -> str:
    """The detached job: records on the target what it holds (`BEFORE`: what cleanup may never remove),
    then prlctl migrate on a pty (for its progress lines), its exit status recorded. Once the copy is
    complete the target's record goes: nothing there is a leftover any more."""
    job, parent = hostjob.job_dir(plan.uid, plan.attempt), hostjob.migration_dir(plan.uid)
    record = shlex.join(_on_target(plan, ["sh", "-c", _RECORD_BEFORE, "sh", job]))
    forget = shlex.join(_on_target(plan, ["sh", "-c", _FORGET_BEFORE, "sh", job, parent]))
    return (
        "#!/bin/sh\n"
        "# Written by the vemigrate operator (prlctl driver); its outcome is read back from ./exit.\n"
        'cd "$(dirname "$0")" || exit 1\n'
        "SHELL=/bin/sh; export SHELL\n"
        f"{record} && {shlex.join(under_pty(argv, MIGRATE_PID))}; rc=$?\n"
        f'[ "$rc" -ne 0 ] || {forget} || true\n'
        'echo "$rc" >exit.tmp && mv exit.tmp exit\n'
    )


def progress_stats(plan: MigrationPlan, log: str, *, done: bool = False) -> JobStats:
    """prlctl reports a percentage; bytes are that share of what moves (disks, plus memory when live)."""
    ve = plan.ve
    total = None
    if ve is not None:
        total = (ve.disk_bytes or 0) + ((ve.memory_bytes or 0) if plan.mode == Mode.LIVE else 0) or None
    percent = 100 if done else out.last_percent(log)
    if total is None or percent is None:
        return JobStats(bytes_total=total)
    processed = total * percent // 100
    return JobStats(bytes_processed=processed, bytes_remaining=total - processed, bytes_total=total)


def enter_sessions(ps: str, entry: out.ListedVE) -> int:
    """Open `prlctl enter <VE>` (or, on containers, `vzctl enter <CTID>`) processes naming this VE."""
    names = {entry.facts.name, entry.facts.uuid, f"{{{entry.facts.uuid}}}", entry.env_id or entry.facts.uuid}
    count = 0
    for line in ps.splitlines():
        words = line.split()
        entering = len(words) >= 3 and PurePosixPath(words[0]).name in ("prlctl", "vzctl") and words[1] == "enter"
        if entering and (words[2] in names or " ".join(words[2:]) in names):
            count += 1
    return count


def _sections(text: str) -> dict[str, str]:
    sections: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith("--- "):
            name, _, rest = line[4:].partition(" ")
            current = name
            sections[current] = [rest] if rest else []
            continue
        sections.setdefault(current, []).append(line)
    return {k: "\n".join(v) for k, v in sections.items()}


_RELEASE = re.compile(r"(virtuozzo|parallels)", re.IGNORECASE)


def host_status(
    info: out.ServerInfo, networks: list[str], shell: str, sent_ns: int, access: HostAccess, paths: Sequence[str]
) -> HostStatus:
    """`paths`: the storage paths the facts script was given, in that order."""
    facts: dict[str, str] = {}
    storage: list[StorageFacts] = []
    links = hostfacts.Links()
    for word, rest, parts in links.read(shell):
        if word == "df":
            if df := hostfacts.storage(parts, paths):
                shared = df.fstype.startswith(_SHARED_FS)
                storage.append(
                    StorageFacts(path=df.path, free_bytes=df.free_bytes, total_bytes=df.total_bytes, shared=shared)
                )
        elif parts:
            facts[word] = rest.strip()
    release = facts.get("release")
    product = (
        release if release and _RELEASE.search(release) else (f"prlsrvctl {info.version}" if info.version else None)
    )
    offset = (int(facts["clock"]) - sent_ns) // 1_000_000 if facts.get("clock", "").isdigit() else None
    return HostStatus(
        cpu=CPUFacts(
            vendor=facts.get("vendor"),
            model=info.cpu_model,
            count=int(facts["cpus"]) if facts.get("cpus", "").isdigit() else None,
            features=sorted(set(info.cpu_features)),
        ),
        memory_total_bytes=int(facts["memtotal"]) if facts.get("memtotal", "").isdigit() else None,
        memory_free_bytes=int(facts["memfree"]) if facts.get("memfree", "").isdigit() else None,
        storage=storage,
        network=links.network(networks, access.data_address),
        time_offset_ms=offset,
        cpuid_override=facts.get("cpuid_override") == "yes",
        nested=facts.get("nested") == "yes",
        version=VersionFacts(product=product, hypervisor=info.version, kernel=facts.get("kernel")),
        # prlctl's tunnel carries local disks along with memory: nothing more is needed to encrypt them.
        encrypted_disk_copy=True,
        ve_types=[VEKind.VM, VEKind.CONTAINER],
        capabilities=list(CAPABILITIES),
        default_path=info.vm_home,
        default_container_path=CT_PRIVATE,
        last_probe_time=datetime.now(UTC),
    )
