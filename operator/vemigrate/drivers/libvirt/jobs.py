"""The libvirt driver's jobs, as text: the script each migration runs detached on the source host
(drivers/hostjob.py) and the shell scripts it runs on the target over the source node's own SSH.

- live: `virsh migrate` (`live_argv`, `live_script`), after the disks a live copy needs are created on
  the target (`_CREATE_DISKS`): at the source's paths, or with spec.target.path in `<path>/<UUID>/`
  under a destination XML naming them (`live_target_disk`); disks on storage both hosts share are
  found by a probe file (`_SHARED_PROBE`) and left where they are;
- offline: each disk streamed and checked by sha256 (`_copy_lines`, `_RECEIVE`), capped at
  spec.bandwidthMiBps (`THROTTLE`), then named and defined on the target (`_offline_script`,
  `_FINISH`, `_target_xml`); each command on the target is an SSH session of 0.1 s or more, so the
  steps there are as few as their order allows;
- containers: the private area streamed with tar, checked by a manifest (`_container_script`).

Whatever a job creates on the target is recorded as it is created (`_record`), so that a cleanup removes
exactly that and nothing else (`_OWNED`, `_REMOVE_OWNED`). And the figures read back from a job: its
log (`_offline_stats`) and libvirt's statistics (`completed_stats`, `_dirty_rate`). Pure functions: no
I/O here.
"""

from __future__ import annotations

import base64
import posixpath
import re
import shlex
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from vemigrate.api.reasons import Reason
from vemigrate.core.access import HostAccess
from vemigrate.core.observation import JobStats, VEState
from vemigrate.drivers import hostjob
from vemigrate.drivers.errors import PermanentError
from vemigrate.drivers.jobfailure import EXIT_CHECKSUM
from vemigrate.drivers.libvirt.facts import (
    METADATA_NS,
    _Disk,
    _disk_elements,
    _disk_of,
    _disks,
)
from vemigrate.drivers.protocol import MigrationPlan

_PROGRESS = re.compile(r"^(\d+) bytes")
_DOWNTIME = re.compile(r"Total downtime:\s+(\d+)\s*ms")
# `virsh event --timestamp` lines ("2026-01-01 10:00:00.123+0000: event 'lifecycle' for domain 'x':
# Suspended Migrated"), and the line the job adds in the same format when `virsh migrate` returned.
_EVENT_TIME_FORMAT = "+%Y-%m-%d %H:%M:%S.%3N+0000"
_JOB_ENDED = "virsh migrate returned"
# What a live job writes about itself in its directory, read with its exit record (hostjob.read): the
# completed job's statistics as the target's libvirtd gives them, and the source's lifecycle events.
STATS_REPORT = "stats"
EVENTS_REPORT = "events"
REPORTS = (STATS_REPORT, EVENTS_REPORT)
_EVENT = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})\+0000: (.*)$")
# The source paused for the last copy, or post-copy began (the VE runs on the target from then on).
_SWITCHOVER_EVENTS = ("Suspended Migrated", "Suspended Post-copy")


def _target_name(plan: MigrationPlan) -> str:
    return plan.ve.name if plan.ve is not None else plan.spec.source.name


def _target_dir(plan: MigrationPlan) -> str:
    """`<target path>/<copy UUID>`, both as the plan resolved them (core/plan.py)."""
    if plan.target_path is None or plan.copy_uuid is None:
        raise PermanentError(
            Reason.TARGET_PATH_UNKNOWN,
            f"{plan.target.name} reported no default VE directory and spec.target.path is unset: set spec.target.path",
        )
    return f"{plan.target_path.rstrip('/')}/{plan.copy_uuid}"


def _record(plan: MigrationPlan) -> str:
    """On the target: what this attempt's job created there, one `<kind> <identity> <path>` line each
    (kind: file, dir, or tree for a container's private area), appended the moment it is created."""
    return f"{hostjob.job_dir(plan.uid, plan.attempt)}/created"


# A file's identity: device, inode and birth time (a freed inode number is soon given to a new file).
_IDENT = 'ident() { stat -c %d:%i:%.9W -- "$1"; }\n'

# The sha256 of stdin, in hex: OpenSSL's where it runs, for it uses the CPU's SHA instructions (950 MiB/s
# on the lab hosts against 170 MiB/s for coreutils' sha256sum, which bounded an offline copy on a fast
# link: docs/performance.md); sha256sum otherwise. The digest is the same, so the hosts need not agree.
_SHA256 = (
    "sha256() { if openssl dgst -sha256 -r </dev/null >/dev/null 2>&1; then openssl dgst -sha256 -r; "
    "else sha256sum; fi | cut -d' ' -f1; }\n"
)


# On the target, $1 the record, then (path, format, virtual size) per disk: each disk file is created
# for the live copy (libvirt copies into a file that exists, as OpenStack Nova pre-creates them) under a
# name of its own (mktemp), then linked to its path, which fails when anything is already there: that
# file is not this migration's, and stays as it is. Both names go into the record as they appear.
_CREATE_DISKS = (
    _IDENT
    + r"""
umask 077
rec=$1; shift
mkdir -p -- "$(dirname -- "$rec")" || exit 1
while [ $# -ge 3 ]; do
    path=$1 fmt=$2 size=$3; shift 3
    dir=$(dirname -- "$path")
    mkdir -p -- "$dir" && tmp=$(mktemp "$dir/.vemigrate-XXXXXXXX") || exit 1
    printf 'file %s %s\n' "$(ident "$tmp")" "$tmp" >>"$rec"
    chmod 600 -- "$tmp" && qemu-img create -q -f "$fmt" "$tmp" "$size" || exit 1
    if ! ln -T -- "$tmp" "$path" 2>/dev/null; then
        rm -f -- "$tmp"
        echo "error: $path already exists on the target (someone else's file, or storage both hosts" \
            "share that the pre-flight probe did not see); it is not this migration's and stays as it is" >&2
        exit 3
    fi
    printf 'file %s %s\n' "$(ident "$path")" "$path" >>"$rec"
    rm -f -- "$tmp"
done
"""
)

# On the target, `make_dir` $1 the record, $2 the directory, $3 its kind: the directory is made, failing
# when anything is already there, and recorded.
_MAKE_DIR = (
    _IDENT
    + r"""
make_dir() (
umask 077
mkdir -p -- "$(dirname -- "$1")" "$(dirname -- "$2")" || exit 1
if ! mkdir -- "$2" 2>/dev/null; then
    echo "error: $2 already exists on the target; it is not this migration's and stays as it is" >&2
    exit 3
fi
printf '%s %s %s\n' "$3" "$(ident "$2")" "$2" >>"$1"
)
"""
)
_CREATE_DIR = _MAKE_DIR + 'make_dir "$@"\n'

# On the target, $1 the record, $2 the file, $3 zstd or cat, and for the first file $4 the directory to
# make (`make_dir`, in the same SSH session): receives one file as `<file>.part` (both names recorded: it
# takes its final name by a link), printing its sha256 and size as written. The copy's progress is counted
# here, as bytes arrive (dd, on stderr: the job's log): counted where the source reads, a compressed run of
# zeros would put the target gigabytes behind it, hashing with no progress.
_RECEIVE = (
    _MAKE_DIR
    + _SHA256
    + r"""
[ -z "${4-}" ] || make_dir "$1" "$4" dir || exit
part=$2.part
if ! (set -C; : >"$part") 2>/dev/null; then
    echo "error: $part already exists on the target; it is not this migration's and stays as it is" >&2
    exit 3
fi
id=$(ident "$part")
printf 'file %s %s\nfile %s %s\n' "$id" "$part" "$id" "$2" >>"$1"
if [ "$3" = zstd ]; then zstd -q -d -c; else cat; fi | dd bs=4M status=progress |
    tee -- "$part" | sha256
stat -c %s -- "$part"
"""
)

# On the target, $1 the job's directory and $2 its parent: the record goes, and the parent with it when
# nothing else is left there.
_FORGET = 'forget() { rm -rf -- "$1" || return 1; rmdir -- "$2" 2>/dev/null; return 0; }\n'

# The line a job prints for each of its copies it found on the target at its end (`on_target`): the
# verification of the copy does not look for those again.
ON_TARGET = "vemigrate-on-target"

# On the target, once the source has verified every copy: $1 the libvirt URI, $2 the job's directory to
# forget and $3 its parent (`_FORGET`; both empty: steps follow that still need the record), then each
# copied file's path. Each `<path>.part` takes its final name by a link, which fails when anything is
# already there (not this migration's: it stays), then the domain is defined from stdin, then the record
# is forgotten: the copy is complete, so nothing on the target is a leftover any more. One SSH session.
_FINISH = (
    _FORGET
    + r"""
uri=$1 job=$2 parent=$3; shift 3
for path; do
    if [ -e "$path" ] || [ -L "$path" ]; then
        echo "error: $path already exists on the target; it is not this migration's and stays as it is" >&2
        exit 3
    fi
    ln -T -- "$path.part" "$path" && rm -f -- "$path.part" || exit 1
    printf '%s %s\n' """
    + ON_TARGET
    + r""" "$path"
done
virsh -c "$uri" define /dev/stdin || exit 1
[ -z "$job" ] || forget "$job" "$parent"
"""
)

# On the target after a live job, $1 the domain's UUID, then `_FORGET`'s two, then the paths of the disks
# the job copied: the completed job's statistics (the downtime; libvirt keeps them on the target) on stdout,
# whatever they say, then `ON_TARGET <path>` for each copy that is there, then the record forgotten, in one
# SSH session.
_STATS_AND_FORGET = (
    _FORGET
    + f"""
virsh -c qemu:///system domjobinfo --completed "$1" 2>&1
job=$2 parent=$3; shift 3
for path; do [ -e "$path" ] && printf '{ON_TARGET} %s\\n' "$path"; done
forget "$job" "$parent"
"""
)

_SAME = _IDENT + 'same() { [ -e "$2" ] && [ "$(ident "$2")" = "$1" ]; }\n'

# On the target, $1 the record: prints `record <path>` when it exists (even one whose entries are all
# gone is a leftover: the cleanup removes it), then `<kind> <path>` for every entry still there as
# recorded.
_OWNED = (
    _SAME
    + r"""
[ -e "$1" ] || exit 0
printf 'record %s\n' "$1"
while read -r kind id path; do same "$id" "$path" && printf '%s %s\n' "$kind" "$path"; done <"$1"
exit 0
"""
)

# On the target, $1 the record: removes exactly what it lists, files first, then directories newest
# first (a directory that still holds something else is kept and named), then the record itself.
_REMOVE_OWNED = (
    _SAME
    + r"""
[ -r "$1" ] || exit 0
while read -r kind id path; do
    [ "$kind" = file ] && same "$id" "$path" && rm -f -- "$path" && printf 'removed %s\n' "$path"
done <"$1"
tac -- "$1" | while read -r kind id path; do
    case $kind in
    dir) same "$id" "$path" && { rmdir -- "$path" 2>/dev/null || printf 'kept %s\n' "$path"; } ;;
    tree) same "$id" "$path" && rm -rf -- "$path" ;;
    esac
done
rm -f -- "$1"
rmdir -- "$(dirname -- "$1")" "$(dirname -- "$(dirname -- "$1")")" 2>/dev/null
exit 0
"""
)


def _create_dir(plan: MigrationPlan, directory: str, kind: str) -> str:
    return _on_target(plan, ["sh", "-c", _CREATE_DIR, "sh", _record(plan), directory, kind])


def _forget(plan: MigrationPlan) -> list[str]:
    """`_FORGET`'s arguments: this attempt's job directory on the target and the migration's."""
    return [hostjob.job_dir(plan.uid, plan.attempt), hostjob.migration_dir(plan.uid)]


def _forget_record(plan: MigrationPlan) -> str:
    """The job's last line: the copy is complete, so nothing on the target is a leftover any more."""
    return _on_target(plan, ["sh", "-c", _FORGET + 'forget "$1" "$2"', "sh", *_forget(plan)])


def _finish(plan: MigrationPlan, xml: str, uri: str, copied: Sequence[str] = (), *, forget: bool = True) -> list[str]:
    """The copied files take their names, the domain is defined and (with `forget`) the record forgotten,
    in one SSH session (`_FINISH`)."""
    where = _forget(plan) if forget else ["", ""]
    return [
        _write_file("domain.xml", xml),
        _on_target(plan, ["sh", "-c", _FINISH, "sh", uri, *where, *copied]) + " <domain.xml",
    ]


def live_argv(
    plan: MigrationPlan,
    *,
    copy_disks: bool,
    migrate_disks: Sequence[str] = (),
    shared: bool = False,
    xml: bool = False,
    peer_ssh: str | None = None,
) -> list[str]:
    """The `virsh migrate` command for a live migration, one spec option at a time. `migrate_disks`: the
    devices copied when not all are (the rest are on storage both hosts share); `shared`: some disk is
    left in place on shared storage; `xml`: the job wrote the target's definitions (dest.xml,
    persistent.xml) with the disks' new paths; `peer_ssh`: the ssh command libvirtd runs for its
    connection to the target (the job's `PEER_SSH`), instead of plain `ssh`."""
    spec, ve = plan.spec, plan.ve
    assert ve is not None
    argv = ["virsh", "-c", "qemu:///system", "migrate", "--live", "--p2p", "--persistent", "--verbose"]
    argv.append("--abort-on-error")
    if spec.tunnel and copy_disks:
        # libvirt cannot tunnel a disk copy; QEMU's migration TLS encrypts memory and disks alike. The
        # EncryptedDiskCopy pre-flight check made sure both hosts have it.
        argv.append("--tls")
    elif spec.tunnel:
        argv.append("--tunnelled")
    if copy_disks:
        argv.append("--copy-storage-all")
        if migrate_disks:
            argv += ["--migrate-disks", ",".join(migrate_disks)]
    if shared:
        # libvirt takes only NFS, GlusterFS and the like for shared; a disk the probe file proved both
        # hosts see (the same file at the same path) is as safe, whatever the file system says.
        argv.append("--unsafe")
    if xml:
        argv += ["--xml", "dest.xml", "--persistent-xml", "persistent.xml"]
    if spec.compression:
        argv.append("--compressed")
    if spec.bandwidth_mib_ps:
        argv += ["--bandwidth", str(spec.bandwidth_mib_ps)]
    if spec.auto_converge:
        argv.append("--auto-converge")
    if spec.post_copy:
        argv.append("--postcopy")
    argv += [ve.uuid, _destination(plan, ssh=peer_ssh)]
    if not spec.tunnel and plan.target.migration_address:
        argv += ["--migrateuri", f"tcp://{plan.target.migration_address}"]
    return argv


def _destination(plan: MigrationPlan, ssh: str | None = None) -> str:
    """The peer URI. libvirt runs ssh for it (virNetSocketNewConnectSSH: `-T -e none`, and with no_tty=1
    `-o BatchMode=yes`, so an unknown key fails instead of prompting): the system's, whose host key
    policy comes from ssh_config, or the command `ssh` names (the URI's `command` parameter)."""
    t = plan.target
    uri = f"qemu+ssh://{t.user}@{t.data_address}:{t.port}/system?no_tty=1"
    if ssh is not None:
        if not re.fullmatch(r"[A-Za-z0-9/._-]+", ssh):
            raise ValueError(f"{ssh!r} cannot go into a libvirt URI as it is")
        uri += f"&command={ssh}"
    return uri


# The ssh libvirtd runs for its connection to the target (written into the job's directory): a session on
# the migration's shared connection to the target, whose host key was checked strictly when it was made, so
# libvirtd's peer connection costs no handshake of its own; when that connection is gone, a connection
# of its own, the host key checked strictly all the same (ssh_config may say otherwise for plain ssh).
PEER_SSH = "peer-ssh"


def _peer_ssh(plan: MigrationPlan) -> str:
    control = shlex.quote(_control(plan))
    return f'#!/bin/sh\nexec ssh -o ControlMaster=no -o ControlPath={control} -o StrictHostKeyChecking=yes "$@"\n'


def _recordable(path: str) -> str:
    """A path the target's record can hold: one line, absolute (the record is read line by line)."""
    if not path.startswith("/") or any(c in path for c in "\n\r"):
        raise PermanentError(
            Reason.UNSUPPORTED_DISK, f"disk path {path!r} cannot be recorded: not absolute, or a line break"
        )
    return path


def live_target_disk(plan: MigrationPlan, disk: _Disk) -> _Disk:
    """Where a live copy puts a disk on the target: with spec.target.path in `<path>/<UUID>/<dev>.<format>`
    as an offline copy does, else at the source's own path."""
    assert plan.ve is not None
    if not plan.spec.target.path:
        return disk
    return replace(disk, path=f"{_target_dir(plan)}/{_disk_file(disk)}")


def _write_file(name: str, text: str) -> str:
    # base64: no text of the domain (names, descriptions) is ever read by the shell.
    return f"printf %s {base64.b64encode(text.encode()).decode()} | base64 -d >{shlex.quote(name)}"


def live_script(
    plan: MigrationPlan,
    *,
    copy_disks: bool,
    disks: Sequence[tuple[_Disk, int]] = (),
    shared: Sequence[str] = (),
    xml: tuple[str, str] | None = None,
) -> str:
    """`disks`: (disk, virtual size) of each disk the live copy creates on the target, as on the source;
    `shared`: the devices left in place on storage both hosts share; `xml`: the domain's live and
    persistent definitions, which the target gets with the disks' new paths when spec.target.path is set."""
    ve = plan.ve
    assert ve is not None
    lines = []
    directory = _target_dir(plan) if plan.spec.target.path else None
    if directory is not None and shared:
        raise PermanentError(
            Reason.TARGET_PATH_ON_SHARED_STORAGE,
            f"spec.target.path cannot be honoured: {', '.join(shared)} on storage both hosts share stay where "
            "they are; remove spec.target.path, or move those disks to local storage first",
        )
    if directory is not None and copy_disks and disks:
        if xml is None:
            raise ValueError("a live copy into spec.target.path needs the domain's definitions")
        _recordable(directory)
        lines.append(_create_dir(plan, directory, "dir"))
        lines.append(_write_file("dest.xml", _target_xml(plan, xml[0], directory)))
        lines.append(_write_file("persistent.xml", _target_xml(plan, xml[1], directory)))
    placed = [(live_target_disk(plan, disk), size) for disk, size in disks]
    if copy_disks and disks:
        for disk, _ in placed:
            _recordable(disk.path)
        created = [word for disk, size in placed for word in (disk.path, disk.format, str(size))]
        lines.append(_on_target(plan, ["sh", "-c", _CREATE_DISKS, "sh", _record(plan), *created]))
    if plan.spec.max_downtime_ms:
        setting = ["virsh", "-c", "qemu:///system", "migrate-setmaxdowntime", ve.uuid, str(plan.spec.max_downtime_ms)]
        lines.append(hostjob.command(setting))
    argv = live_argv(
        plan,
        copy_disks=copy_disks and bool(disks),
        migrate_disks=[disk.target for disk, _ in disks] if shared else (),
        shared=bool(shared),
        xml=directory is not None and copy_disks and bool(disks),
        peer_ssh=f"{hostjob.job_dir(plan.uid, plan.attempt)}/{PEER_SSH}",
    )
    # The switchover's evidence: libvirt's lifecycle events on the source, with their times (the
    # operator's passes come too seldom to see a pause of 100 ms). Not holding the job's lock (fd 9).
    events = ["virsh", "-c", "qemu:///system", "event", "--domain", ve.uuid, "--event", "lifecycle", "--loop"]
    lines.append(hostjob.command([*events, "--timestamp"]) + f" >{EVENTS_REPORT} 2>&1 9>&- </dev/null &")
    lines.append("listener=$!; trap 'kill \"$listener\" 2>/dev/null' EXIT")
    # libvirtd's connection to the target rides on the migration's shared one (PEER_SSH). When no disk was
    # created first, `true` makes sure that connection is up (its host key checked strictly), and fails
    # the job on a wrong key with ssh's own message before `virsh migrate` starts.
    lines.append(_write_file(PEER_SSH, _peer_ssh(plan)) + f" && chmod 700 {PEER_SSH}")
    if not (copy_disks and disks):
        lines.append(_on_target(plan, ["true"]))
    lines.append(hostjob.command(argv))
    lines.append(f"echo \"$(date -u '{_EVENT_TIME_FORMAT}'): {_JOB_ENDED}\" >>{EVENTS_REPORT}")
    # The completed job's statistics (downtime) are kept by the target's libvirtd: read there, on the
    # shared SSH connection (a libvirt connection to it would be another handshake).
    copies = [disk.path for disk, _ in placed] if copy_disks and disks else []
    stats_and_forget = ["sh", "-c", _STATS_AND_FORGET, "sh", ve.uuid, *_forget(plan), *copies]
    lines.append(_on_target(plan, stats_and_forget) + f" >{STATS_REPORT}")
    return hostjob.script(lines, finally_=[_close_control(plan, unless_done=True)])


# On the target: each probe path read from stdin that is a file here, printed with its first bytes.
_LOOK = 'while read -r p; do [ -f "$p" ] && printf "%s %s\\n" "$(head -c 64 -- "$p")" "$p"; done; exit 0'

# On the source, $1 the command line that runs `_LOOK` on the target over SSH, then the disk paths: a
# probe file next to each disk, made by mktemp (so it is no one else's) and holding a random token; the
# target is asked which of them it sees with that token, and each probe is removed only while it is
# still the very file made here. Prints `shared <disk>`, `local <disk>`, or `unknown <disk>` (no probe
# could be made there, say a read-only directory, or the target did not answer).
_SHARED_PROBE = (
    _SAME
    + r"""
umask 077
look=$1; shift
tab=$(printf '\t')
probes=$(mktemp) || exit 1
for disk in "$@"; do
    probe=$(mktemp "$(dirname -- "$disk")/.vemigrate-probe-XXXXXXXX" 2>/dev/null) || { echo "unknown $disk"; continue; }
    token=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
    printf %s "$token" >"$probe"
    printf '%s\t%s\t%s\t%s\n' "$(ident "$probe")" "$token" "$probe" "$disk" >>"$probes"
done
seen=$(cut -f3 "$probes" | eval "$look")
rc=$?
while IFS=$tab read -r id token probe disk; do
    if [ "$rc" -ne 0 ]; then
        echo "unknown $disk"
    elif printf '%s\n' "$seen" | grep -qxF -- "$token $probe"; then
        echo "shared $disk"
    else
        echo "local $disk"
    fi
    same "$id" "$probe" && rm -f -- "$probe"
done <"$probes"
rm -f -- "$probes"
exit 0
"""
)


def shared_probe(target: HostAccess, disks: Sequence[str], control: str | None = None) -> list[str]:
    """The argv that finds which of `disks` (on the source) the target sees as the same files; with
    `control`, on that shared connection (hostjob.control_path), made here when it is not up."""
    if any(c in disk for disk in disks for c in "\t\n\r"):
        raise ValueError("disk paths with tabs or line breaks cannot be probed")
    return ["sh", "-c", _SHARED_PROBE, "sh", _from_source(target, control, ["sh", "-c", _LOOK]), *disks]


def _from_source(target: HostAccess, control: str | None, argv: list[str], connect_timeout: int | None = None) -> str:
    """A shell line for the source that runs argv on the target; with `control`, on that shared
    connection, whose directory it makes first (the connection itself too, when it is not up)."""
    line = f"{ssh_command(target, control, connect_timeout)} {shlex.quote(shlex.join(argv))}"
    if control is None:
        return line
    return f"(umask 077 && mkdir -p -- {shlex.quote(posixpath.dirname(control))}) && {line}"


def reach(target: HostAccess, control: str) -> list[str]:
    """The argv of the `SSHPort` check on the source: `true` run on the target over the migration's shared
    connection, which this makes (a new login, the key checked strictly) when it is not up, so that the
    storage probe and the job after it pay for no handshake of their own."""
    return ["sh", "-c", _from_source(target, control, ["true"], connect_timeout=REACH_TIMEOUT_SECONDS)]


# On the source, $1 `_SHARED_PROBE`, then its arguments (the look, the disks): the probe, then, only when
# it gave every disk a verdict and none is unknown, the disks it found local are removed (the source's
# disposal after a live copy: a disk the target sees is the one it runs from). Prints the verdicts, then
# `removed <disk>` for each; fails when a removal failed.
_REMOVE_LOCAL = r"""
probe=$1; shift
disks=$(($# - 1))
verdicts=$(sh -c "$probe" sh "$@") || exit 1
printf '%s\n' "$verdicts"
known=$(printf '%s\n' "$verdicts" | grep -c -e '^shared ' -e '^local ')
[ "$known" -eq "$disks" ] || exit 0
printf '%s\n' "$verdicts" | sed -n 's/^local //p' | {
    rc=0
    while IFS= read -r disk; do
        if rm -f -- "$disk"; then echo "removed $disk"; else rc=1; fi
    done
    exit "$rc"
}
"""


def remove_local(target: HostAccess, disks: Sequence[str], control: str | None = None) -> list[str]:
    """The argv that probes `disks` as `shared_probe` does and, when every verdict is known, removes the
    local ones in the same round trip; `read_shared_probe` and `read_removed` read its answer."""
    _, _, probe, _, look, *probed = shared_probe(target, disks, control)
    return ["sh", "-c", _REMOVE_LOCAL, "sh", probe, look, *probed]


def read_removed(out: str) -> set[str]:
    """`_REMOVE_LOCAL`'s removed files."""
    return {line.removeprefix("removed ") for line in out.splitlines() if line.startswith("removed ")}


# How long the migration's shared SSH connection to the target outlives its last use when nothing ended
# it: an operator gone, a job killed (it is ended by the job that failed, and by hostjob.forget).
CONTROL_PERSIST_SECONDS = 30


# The ciphers of OpenSSH's default set (since 6.5, so a host of any supported release knows every name),
# AES-GCM first: with the AES instructions every current server CPU has, it encrypts an offline copy's
# stream at a fraction of ChaCha20-Poly1305's CPU (OpenSSH's first choice, made for CPUs without them),
# and both ends of that stream share their cores with its hashing (docs/performance.md). A server that
# allows fewer ciphers still agrees on one of these, as it would on the default set.
CIPHERS = "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,aes128-ctr,aes192-ctr,aes256-ctr"


# How long the `SSHPort` check waits for the target's SSH port to answer (as drivers/ssh.py's check).
REACH_TIMEOUT_SECONDS = 5


def ssh_command(target: HostAccess, control: str | None = None, connect_timeout: int | None = None) -> str:
    """The source's own SSH to the target (host key checked), as one shell command line ending in `--`.
    With `control` (a socket path), the commands share one connection: the first one made becomes its
    master, so a job pays for one SSH handshake to the target instead of one per step."""
    shared = (
        ["-o", "ControlMaster=auto", "-o", f"ControlPath={control}", "-o", f"ControlPersist={CONTROL_PERSIST_SECONDS}"]
        if control
        else []
    )
    if connect_timeout is not None:
        shared += ["-o", f"ConnectTimeout={connect_timeout}"]
    return shlex.join(
        [
            "ssh",
            "-p",
            str(target.port),
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"Ciphers={CIPHERS}",
            *shared,
            f"{target.user}@{target.data_address}",
            "--",
        ]
    )


def read_shared_probe(out: str) -> dict[str, str]:
    """`SHARED_PROBE`'s answer: disk path -> shared, local or unknown."""
    found: dict[str, str] = {}
    for line in out.splitlines():
        verdict, _, disk = line.partition(" ")
        if verdict in ("shared", "local", "unknown") and disk:
            found[disk] = verdict
    return found


_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}
_DATA = re.compile(r"Data (processed|total):\s+([\d.]+)\s+(\w+)")


def completed_stats(domjobinfo: str, log: str, events: str = "") -> JobStats:
    """A finished job's figures: `virsh domjobinfo --completed` for live jobs, the job log for offline,
    and for live jobs when the switchover began (`switchover_time`)."""
    downtime = _DOWNTIME.search(domjobinfo)
    data = {kind: int(float(value) * _UNITS.get(unit, 1)) for kind, value, unit in _DATA.findall(domjobinfo)}
    offline = _offline_stats(log)
    downtime_ms = int(downtime.group(1)) if downtime else None
    switchover, evidence = _switchover(events, downtime_ms)
    return JobStats(
        bytes_processed=data.get("processed", offline.bytes_processed or None),
        bytes_total=data.get("total", offline.bytes_total),
        downtime_ms=downtime_ms,
        switchover_time=switchover,
        switchover_evidence=evidence,
    )


def on_target(*reports: str) -> frozenset[str]:
    """The copies a job found on the target at its end: a live job's statistics (`_STATS_AND_FORGET`), an
    offline job's log (`_FINISH`)."""
    marker = f"{ON_TARGET} "
    lines = (line for report in reports for line in report.splitlines())
    return frozenset(line[len(marker) :] for line in lines if line.startswith(marker))


def _switchover(events: str, downtime_ms: int | None) -> tuple[datetime | None, str | None]:
    """When the source paused for the switchover, from the job's `events` file: libvirt's lifecycle event
    when the listener caught it; else the moment `virsh migrate` returned less the downtime libvirt
    measured (the latest the pause can have begun)."""
    ended = None
    for line in events.splitlines():
        match = _EVENT.match(line.strip())
        if match is None:
            continue
        when = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
        detail = match.group(2)
        if detail.endswith(_SWITCHOVER_EVENTS):
            return when, f"libvirt's lifecycle event '{detail.rpartition(': ')[2]}' on the source"
        if detail == _JOB_ENDED:
            ended = when
    if ended is None or downtime_ms is None:
        return None, None
    return ended - timedelta(milliseconds=downtime_ms), "the job's end on the source less the downtime"


def _dirty_rate(stats: dict[str, int]) -> int | None:
    rate = stats.get("memory_dirty_rate")  # pages per second
    page = stats.get("memory_page_size", 4096)
    return rate * page if rate is not None else None


def _offline_stats(log: str) -> JobStats:
    """Bytes copied so far: finished disks (`done N`) plus the receiving dd's last progress line on the
    current one."""
    total = finished = current = 0
    for raw in log.splitlines():
        line = raw.split("\r")[-1].strip()
        if line.startswith("total "):
            total = int(line.split()[1])
        elif line.startswith("done "):
            finished += int(line.split()[1])
            current = 0
        elif match := _PROGRESS.match(line):
            current = int(match.group(1))
    return JobStats(bytes_processed=finished + current, bytes_total=total or None)


def _control(plan: MigrationPlan) -> str:
    """The migration's shared SSH connection to the target: made by Validating's storage probe (or, past
    its 30 s of idleness, by the live job's start or the job itself), and used by the source's disposal
    after a live copy too."""
    return hostjob.control_path(plan.uid)


def _on_target(plan: MigrationPlan, argv: list[str]) -> str:
    """A script line that runs argv on the target over the source node's own SSH (host key checked), on
    the migration's shared connection. Not holding the job's lock (fd 9): the connection's master outlives the
    command that made it, and a lock it held would keep the job "running" after its end."""
    return f"{ssh_command(plan.target, _control(plan))} {shlex.quote(shlex.join(argv))} 9>&-"


def _close_control(plan: MigrationPlan, *, unless_done: bool = False) -> str:
    """Ends the shared connection as the job ends; nothing when there is none. `unless_done`: only when
    the job failed (a live copy's disposal next proves the storage sharing again over it; a retry's
    job starts on a connection of its own)."""
    close = f"{{ {hostjob.end_connection(plan.uid)}; }} 9>&-"
    return f'[ "$rc" -eq 0 ] || {close}' if unless_done else close


# spec.bandwidthMiBps for the offline copies, which no libvirt or QEMU setting governs: stdin to stdout
# at most $1 MiB/s, one second's worth per round and the rest of that second asleep. Coreutils only (a
# hypervisor host need not have pv). dd's "N+M records in" says when the input ended ("0+0").
THROTTLE = r"""throttle() {
    while :; do
        t0=$(date +%s%N)
        n=$(LC_ALL=C dd bs=64K count=$(($1 * 16)) iflag=fullblock 2>&1 >&3 |
            sed -n 's/^\([0-9]*\)+\([0-9]*\) records in$/\1\2/p')
        [ -n "$n" ] || return 1
        [ "$n" != 00 ] || return 0
        left=$((1000 - ($(date +%s%N) - t0) / 1000000))
        [ "$left" -le 0 ] || sleep "$(printf '0.%03d' "$left")"
    done 3>&1
}"""


def _wire(plan: MigrationPlan) -> str:
    """What a copy stream passes through on the source before the network: compression, then the cap."""
    pack = " | zstd -q -c -T0" if plan.spec.compression else ""
    return pack + (f" | throttle {plan.spec.bandwidth_mib_ps}" if plan.spec.bandwidth_mib_ps else "")


def _copy_lines(plan: MigrationPlan, src: str, dst: str, make: str | None = None) -> list[str]:
    """Stream one file to the target as `<dst>.part` (the first one making the directory `make`, in the
    same session), compressed unless told not to; its sha256 is taken from the stream on both ends as it
    passes (no second read of either file), and compared with its size. `_FINISH` names it."""
    q = shlex.quote
    receive = ["sh", "-c", _RECEIVE, "sh", _record(plan), dst, "zstd" if plan.spec.compression else "cat"]
    return [
        "rm -f hash.fifo hash.local && mkfifo hash.fifo",
        "sha256 <hash.fifo >hash.local &",
        f"got=$(dd if={q(src)} bs=4M status=none | tee hash.fifo{_wire(plan)} | "
        f"{_on_target(plan, [*receive, *([make] if make else [])])})",
        "wait $!",
        f'want=$(printf "%s\\n%s" "$(cat hash.local)" "$(stat -c %s {q(src)})")',
        f'[ "$got" = "$want" ] || {{ echo "error: checksum mismatch for" {q(src)} >&2; exit {EXIT_CHECKSUM}; }}',
        f"echo done $(stat -c %s {q(src)})",
    ]


def _disk_file(disk: _Disk) -> str:
    """A disk's file name in <path>/<UUID>/: by its device, so two disks of one base name cannot meet."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", disk.target) or not re.fullmatch(r"[a-z0-9]{1,16}", disk.format):
        raise PermanentError(Reason.UNSUPPORTED_DISK, f"disk {disk.target!r} ({disk.format}) cannot name a file")
    return f"{disk.target}.{disk.format}"


def _target_xml(plan: MigrationPlan, xml: str, directory: str) -> str:
    """The domain as the target defines it: disks in <path>/<UUID>/, this migration's tag, and for a
    clone a new UUID and no MAC addresses (libvirt assigns new ones)."""
    root = ET.fromstring(xml)
    for disk in _disk_elements(root):
        source = disk.find("source")
        assert source is not None
        source.set("file", f"{directory}/{_disk_file(_disk_of(disk))}")
    for fs in root.findall("./devices/filesystem[@type='mount']"):
        source, target = fs.find("source"), fs.find("target")
        if source is not None and target is not None and target.get("dir") == "/":
            source.set("dir", directory)  # a container's private area is the directory itself
    if plan.spec.clone:
        uuid_el = root.find("uuid")
        if uuid_el is not None:
            uuid_el.text = plan.copy_uuid
        for interface in root.findall("./devices/interface"):
            mac = interface.find("mac")
            if mac is not None:
                interface.remove(mac)
    metadata = root.find("metadata")
    if metadata is None:
        metadata = ET.SubElement(root, "metadata")
    for old in metadata.findall(f"{{{METADATA_NS}}}migration"):
        metadata.remove(old)
    ET.SubElement(metadata, f"{{{METADATA_NS}}}migration", {"uid": plan.uid})
    return ET.tostring(root, encoding="unicode")


def _offline_script(plan: MigrationPlan, xml: str) -> str:
    """Copy every disk (and a suspended VM's saved memory) into <path>/<UUID>/ on the target, verify
    each by sha256, then define the VM there (and restore its saved state as a managed save)."""
    ve = plan.ve
    assert ve is not None
    _refuse_change_sid(plan)
    suspended = ve.state == VEState.SUSPENDED
    if suspended and plan.spec.clone:
        raise PermanentError(
            Reason.CLONE_OF_SUSPENDED_VM,
            "a suspended VM's saved memory cannot take a new UUID: resume or stop it first",
        )
    directory = _target_dir(plan)
    saved = f"{directory}/memory.save"
    copies = [(d.path, f"{directory}/{_disk_file(d)}") for d in _disks(ET.fromstring(xml))]
    if suspended:
        copies.append((_save_image(ve.name), saved))
    q = shlex.quote
    lines = [
        _SHA256,
        *([THROTTLE] if plan.spec.bandwidth_mib_ps else []),
        "echo total $(stat -c %s "
        + " ".join(q(src) for src, _ in copies)
        + " | awk '{s+=$1} END {printf \"%.0f\\n\", s}')",
        *([] if copies else [_create_dir(plan, directory, "dir")]),  # a VM without disks still gets its directory
    ]
    for i, (src, dst) in enumerate(copies):
        lines += _copy_lines(plan, src, dst, directory if i == 0 else None)
    lines += _finish(
        plan, _target_xml(plan, xml, directory), "qemu:///system", [dst for _, dst in copies], forget=not suspended
    )
    if suspended:
        lines.append(_on_target(plan, ["sh", "-c", 'cat >"$1"', "sh", f"{directory}/domain.xml"]) + " <domain.xml")
        # Restore paused into the defined domain, then save it the managed way: suspended, as it was.
        lines.append(
            _on_target(
                plan,
                ["virsh", "-c", "qemu:///system", "restore", saved, "--xml", f"{directory}/domain.xml", "--paused"],
            )
        )
        lines.append(_on_target(plan, ["virsh", "-c", "qemu:///system", "managedsave", "--running", "--", ve.name]))
        lines.append(_on_target(plan, ["rm", "-f", "--", saved, f"{directory}/domain.xml"]))
        lines.append(_forget_record(plan))
    return hostjob.script(lines, finally_=[_close_control(plan)])


# Names and sha256 of every file, and every symlink's target (never followed: a container's links
# point into its own root), sorted the same way on both hosts.
_MANIFEST = (
    "export LC_ALL=C; { find . -type f -print0 | sort -z | xargs -0 -r sha256sum --; "
    "find . -type l -printf '%p -> %l\\n' | sort; } | sha256sum | cut -d' ' -f1"
)


def _container_script(plan: MigrationPlan, xml: str) -> str:
    """Stream a stopped container's private area with tar into <path>/<UUID> on the target, compare
    manifests of both trees, then define the container there."""
    ve = plan.ve
    assert ve is not None
    _refuse_change_sid(plan)
    if ve.private_area is None:
        raise PermanentError(Reason.NO_PRIVATE_AREA, f"container {ve.name} has no root file system directory to copy")
    q = shlex.quote
    private, directory = ve.private_area, _target_dir(plan)
    # The directory is made (and recorded) in the session that unpacks into it.
    unpack_tar = ("zstd -q -d -c | " if plan.spec.compression else "") + 'tar -C "$2" --numeric-owner -xpf -'
    unpack = ["sh", "-c", _MAKE_DIR + 'make_dir "$1" "$2" tree || exit\n' + unpack_tar, "sh", _record(plan), directory]
    manifest = ["sh", "-c", 'cd "$1" && ' + _MANIFEST, "sh", directory]
    lines = [
        *([THROTTLE] if plan.spec.bandwidth_mib_ps else []),
        f"echo total $(du -sb -- {q(private)} | cut -f1)",
        f"sum=$(cd {q(private)} && {_MANIFEST})",
        f"tar -C {q(private)} --numeric-owner -cpf - . | dd bs=4M status=progress{_wire(plan)} | "
        + _on_target(plan, unpack),
        f"remote=$({_on_target(plan, manifest)})",
        f'[ "$sum" = "$remote" ] || {{ echo "error: the private area of" {q(ve.name)} "differs on the target" >&2; '
        "exit 4; }",
        f"echo done $(du -sb -- {q(private)} | cut -f1)",
        *_finish(plan, _target_xml(plan, xml, directory), "lxc:///system"),
    ]
    return hostjob.script(lines, finally_=[_close_control(plan)])


def _refuse_change_sid(plan: MigrationPlan) -> None:
    if plan.spec.change_sid:
        raise PermanentError(
            Reason.CHANGE_SID_UNSUPPORTED,
            "libvirt has no --changesid: run Sysprep in the clone instead, and migrate without changeSid",
        )


def _save_image(name: str) -> str:
    return f"/var/lib/libvirt/qemu/save/{name}.save"
