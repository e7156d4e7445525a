"""The libvirt driver's commands, from spec to exact argv, and the parsers of what hosts print."""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.unit.builders import driver_plan, spec, ve
from vemigrate.api.checks import CheckName, CheckResult
from vemigrate.api.host import HostStatus
from vemigrate.api.migration import Mode
from vemigrate.core.access import HostAccess
from vemigrate.core.checks import REGISTRY, CheckInput
from vemigrate.core.observation import VEState
from vemigrate.core.plan import resolve
from vemigrate.drivers import hostjob
from vemigrate.drivers.errors import PermanentError
from vemigrate.drivers.libvirt.facts import QEMU_CAPABILITIES, _Disk, _host_status
from vemigrate.drivers.libvirt.jobs import (
    CIPHERS,
    PEER_SSH,
    REACH_TIMEOUT_SECONDS,
    THROTTLE,
    _offline_script,
    _offline_stats,
    _target_xml,
    completed_stats,
    live_argv,
    live_script,
    reach,
    ssh_command,
)
from vemigrate.drivers.protocol import MigrationPlan

UUID = "3f1c2a9e-8d7b-4c1e-9a55-0e6f6d1b2c3d"
SOURCE = HostAccess(name="node-a", namespace="ns", address="192.0.2.1")
TARGET = HostAccess(name="node-b", namespace="ns", address="192.0.2.2", port=2222)
BASE = ["virsh", "-c", "qemu:///system", "migrate", "--live", "--p2p", "--persistent", "--verbose", "--abort-on-error"]
DEST = "qemu+ssh://root@192.0.2.2:2222/system?no_tty=1"


def plan(mode: Mode = Mode.LIVE, target: HostAccess = TARGET, **overrides: Any) -> MigrationPlan:
    v = ve(disk_paths=("/var/lib/libvirt/images/web1.qcow2",))
    return driver_plan("0b7c9f6e-1111-4222-8333-444455556666", spec(**overrides), v, SOURCE, target, mode=mode)


@pytest.mark.parametrize(
    ("overrides", "copy_disks", "flags"),
    [
        ({}, False, ["--tunnelled", "--compressed"]),
        ({}, True, ["--tls", "--copy-storage-all", "--compressed"]),
        ({"tunnel": False}, True, ["--copy-storage-all", "--compressed"]),
        ({"tunnel": False, "compression": False}, False, []),
        ({"compression": False}, False, ["--tunnelled"]),
        ({"bandwidthMiBps": 100}, False, ["--tunnelled", "--compressed", "--bandwidth", "100"]),
        (
            {"autoConverge": True, "postCopy": True},
            False,
            ["--tunnelled", "--compressed", "--auto-converge", "--postcopy"],
        ),
    ],
)
def test_live_argv(overrides: dict[str, Any], copy_disks: bool, flags: list[str]) -> None:
    assert live_argv(plan(**overrides), copy_disks=copy_disks) == [*BASE, *flags, UUID, DEST]


def test_live_argv_uses_the_migration_address_for_a_direct_stream() -> None:
    target = HostAccess(name="node-b", namespace="ns", address="192.0.2.2", migration_address="198.51.100.2")
    argv = live_argv(plan(target=target, tunnel=False), copy_disks=False)
    assert argv[-4:] == [UUID, "qemu+ssh://root@198.51.100.2:22/system?no_tty=1", "--migrateuri", "tcp://198.51.100.2"]


def test_live_script_creates_target_disks_as_its_own_sets_downtime_and_records_stats() -> None:
    disk = _Disk("vda", "/var/lib/libvirt/images/web1.qcow2", "qcow2")
    text = live_script(plan(maxDowntimeMs=250), copy_disks=True, disks=[(disk, 1 << 30)])
    create = next(line for line in _commands(text) if "qemu-img create" in line)
    inner = _tokens(create)[_tokens(create).index("--") + 1]
    assert _tokens(inner)[-4:] == [f"{hostjob.job_dir(plan().uid, 1)}/created", disk.path, "qcow2", str(1 << 30)]
    assert shlex.join(["virsh", "-c", "qemu:///system", "migrate-setmaxdowntime", UUID, "250"]) in text
    assert "domjobinfo --completed" in text
    assert text.rstrip().endswith('echo "$rc" >exit.tmp && mv exit.tmp exit')


@pytest.mark.parametrize("copy_disks", [False, True])
def test_libvirtds_peer_connection_rides_on_the_jobs_strictly_checked_one(copy_disks: bool) -> None:
    """libvirtd's own ssh takes its host key policy from ssh_config (the URI cannot ask for strict
    checking): the peer URI names the job's PEER_SSH as its ssh command, a session on the job's shared
    connection; before `virsh migrate` the job makes sure that connection is up, made with the key
    checked strictly: by the disks' creation on the target, or else by a `true` of its own."""
    disk = _Disk("vda", "/var/lib/libvirt/images/web1.qcow2", "qcow2")
    job = plan()
    text = live_script(job, copy_disks=copy_disks, disks=[(disk, 1 << 20)] if copy_disks else [])
    commands = _commands(text)
    directory = hostjob.job_dir(job.uid, job.attempt)
    migrate = next(i for i, line in enumerate(commands) if " migrate --live " in line)
    assert _tokens(commands[migrate])[-1] == f"{DEST}&command={directory}/{PEER_SSH}"
    remote = [i for i, line in enumerate(commands[:migrate]) if _tokens(line)[:1] == ["ssh"]]
    assert len(remote) == 1, "one command on the target before `virsh migrate`"
    check = _tokens(commands[remote[0]])
    if copy_disks:
        assert _tokens(check[check.index("--") + 1])[:2] == ["sh", "-c"] and "qemu-img create" in check[-4]
        assert remote[0] < migrate - 1
    else:
        assert remote[0] == migrate - 1 and check[check.index("--") + 1 :] == ["true", "9", ">&", "-"]
    assert "root@192.0.2.2" in check
    assert "StrictHostKeyChecking=yes" in check and "BatchMode=yes" in check
    assert f"ControlPath={hostjob.control_path(job.uid)}" in check and "ControlMaster=auto" in check
    written = next(i for i, line in enumerate(commands) if line.endswith(f"chmod 700 {PEER_SSH}"))
    assert written < migrate


def test_node_to_node_ssh_prefers_aes_gcm_from_openssh_s_own_default_set() -> None:
    """The cipher list is OpenSSH's default set reordered, checked against this machine's ssh (OpenSSH 9):
    no name an OpenSSH would refuse, none dropped that a server might insist on."""
    default = subprocess.run(["ssh", "-G", "node-b"], capture_output=True, text=True, check=True, timeout=10)
    defaults = next(line.split()[1] for line in default.stdout.splitlines() if line.startswith("ciphers "))
    assert sorted(CIPHERS.split(",")) == sorted(defaults.split(","))
    assert CIPHERS.split(",")[0] == "aes128-gcm@openssh.com" != defaults.split(",")[0]
    line = ssh_command(TARGET, "/run/x/ssh")
    assert f"Ciphers={CIPHERS}" in _tokens(line)
    given = subprocess.run(["sh", "-c", line.replace("ssh ", "ssh -G ", 1) + " true"], capture_output=True, text=True)
    assert given.returncode == 0 and f"ciphers {CIPHERS}" in given.stdout.splitlines(), given.stderr


def test_the_reach_check_makes_the_migrations_shared_connection(tmp_path: Path) -> None:
    """The SSHPort check, run by sh with a stand-in `ssh` first in PATH: it makes the connection's 0700
    directory, then runs `true` on the target with the key checked strictly, a bounded connect, and the
    migration's control socket (a new master when none is up, as the storage probe and the job use)."""
    control = str(tmp_path / "jobs" / "uid" / "ssh")
    fake = tmp_path / "bin" / "ssh"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >{tmp_path}/args\n')
    fake.chmod(0o700)
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"}
    subprocess.run(reach(TARGET, control), env=env, check=True, timeout=10)
    args = (tmp_path / "args").read_text().splitlines()
    assert (tmp_path / "jobs" / "uid").stat().st_mode & 0o777 == 0o700
    for option in ("BatchMode=yes", "StrictHostKeyChecking=yes", f"ControlPath={control}", "ControlMaster=auto"):
        assert option in args, args
    assert f"ConnectTimeout={REACH_TIMEOUT_SECONDS}" in args and args[-3:] == ["root@192.0.2.2", "--", "true"]
    assert "ConnectTimeout" not in ssh_command(TARGET, control), "the job's own commands are not bounded by it"


def test_the_peer_ssh_passes_libvirts_arguments_through_on_the_shared_connection(tmp_path: Path) -> None:
    """The script the job writes as PEER_SSH, run with a stand-in `ssh` first in PATH that prints what it
    was given: libvirt's own arguments come through word for word after the job's options."""
    job = plan()
    encoded = next(line for line in _commands(live_script(job, copy_disks=False)) if f">{PEER_SSH}" in line)
    subprocess.run(["sh", "-c", encoded.partition(" && ")[0]], cwd=tmp_path, check=True, timeout=10)
    fake = tmp_path / "bin" / "ssh"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    fake.chmod(0o700)
    given = ["-p", "22", "-l", "root", "-T", "-e", "none", "-o", "BatchMode=yes", "--", "192.0.2.2", "sh -c 'x; y'"]
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"}
    out = subprocess.run(["sh", str(tmp_path / PEER_SSH), *given], env=env, capture_output=True, text=True, check=True)
    control = hostjob.control_path(job.uid)
    options = ["-o", "ControlMaster=no", "-o", f"ControlPath={control}", "-o", "StrictHostKeyChecking=yes"]
    assert out.stdout.splitlines() == [*options, *given]


def test_a_peer_ssh_path_that_a_uri_would_change_is_refused() -> None:
    with pytest.raises(ValueError):
        live_argv(plan(), copy_disks=False, peer_ssh="/tmp/a b&c=d")


HOSTILE = "web1; rm -rf / #"


def _tokens(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


def _commands(text: str) -> list[str]:
    """The script's commands: its lines, with a quoted word that spans lines kept whole."""
    commands, pending = [], ""
    for line in text.splitlines():
        pending = f"{pending}\n{line}" if pending else line
        try:
            _tokens(pending)
        except ValueError:
            continue  # a quote is still open
        commands.append(pending)
        pending = ""
    assert not pending, f"unclosed quote: {pending}"
    return commands


def test_every_value_reaching_the_shell_is_quoted() -> None:
    """A hostile file name stays one word for the local shell and again for the remote one."""
    v = ve(state=VEState.STOPPED, disk_paths=(f"/images/{HOSTILE}.qcow2",))
    hostile = driver_plan("0b7c9f6e-1111-4222-8333-444455556666", spec(), v, SOURCE, TARGET, mode=Mode.OFFLINE)
    disk = f"<disk type='file' device='disk'><source file='/images/{HOSTILE}.qcow2'/><target dev='vda'/></disk>"
    text = _offline_script(hostile, f"<domain><name>web1</name><uuid>{UUID}</uuid><devices>{disk}</devices></domain>")
    checked = 0
    for line in _commands(text):
        if HOSTILE not in line:
            continue
        checked += 1
        tokens = _tokens(line)
        assert any(HOSTILE in t for t in tokens), f"split by the local shell: {line}"
        if "--" in tokens:
            # The remote command is one word that the remote shell splits again: still one word there.
            inner = tokens[tokens.index("--") + 1]
            if HOSTILE in inner:
                assert any(HOSTILE in w for w in _tokens(inner)), f"split by the remote shell: {inner}"
    assert checked >= 3, "the hostile name reached the size, copy and checksum lines"


def test_offline_script_copies_verifies_and_defines() -> None:
    xml = (
        f"<domain type='qemu'><name>web1</name><uuid>{UUID}</uuid><devices>"
        "<disk type='file' device='disk'><driver type='qcow2'/><source file='/var/lib/libvirt/images/web1.qcow2'/>"
        "<target dev='vda'/></disk><interface type='bridge'><mac address='52:54:00:00:00:01'/>"
        "<source bridge='vmbr0'/></interface></devices></domain>"
    )
    v = ve(state=VEState.STOPPED, disk_paths=("/var/lib/libvirt/images/web1.qcow2",))
    wanted = spec(target={"host": "node-b", "path": "/srv/ves"})
    p = driver_plan("0b7c9f6e-1111-4222-8333-444455556666", wanted, v, SOURCE, TARGET, mode=Mode.OFFLINE)
    text = _offline_script(p, xml)
    assert f"/srv/ves/{UUID}/vda.qcow2" in text
    assert "zstd -q -c" in text and "sha256sum" in text
    assert "checksum mismatch" in text
    assert "define /dev/stdin" in text
    no_compression = _offline_script(MigrationPlan(**{**p.__dict__, "spec": spec(compression=False)}), xml)
    assert "zstd -q -c" not in no_compression and "vda.qcow2 cat" in no_compression


def test_offline_copies_are_capped_at_the_specs_bandwidth() -> None:
    disk = "<disk type='file' device='disk'><source file='/a/web1.qcow2'/><target dev='vda'/></disk>"
    xml = f"<domain><name>web1</name><uuid>{UUID}</uuid><devices>{disk}</devices></domain>"
    capped = _offline_script(plan(Mode.OFFLINE, bandwidthMiBps=3), xml)
    assert capped.count("throttle() {") == 1
    # On the wire: after compression (the cap is on what the network carries), before ssh.
    assert "| zstd -q -c -T0 | throttle 3 | ssh " in capped
    assert "throttle" not in _offline_script(plan(Mode.OFFLINE), xml)


def _throttled(data: bytes, mib_per_s: int) -> tuple[bytes, float]:
    """The job's throttle, run by sh as a job runs it (set -eu); (what came out, seconds taken)."""
    script = f"set -eu\n{THROTTLE}\nthrottle {mib_per_s}"
    start = time.monotonic()
    done = subprocess.run(["sh", "-c", script], input=data, capture_output=True, timeout=60, check=True)
    return done.stdout, time.monotonic() - start


def test_the_throttle_passes_every_byte_and_holds_the_rate() -> None:
    data = os.urandom(3 * 1024**2 + 12345)  # 3 MiB and a partial block
    out, seconds = _throttled(data, 1)
    assert out == data
    assert seconds >= 3.0, f"3 MiB at 1 MiB/s took {seconds:.2f} s"
    assert _throttled(b"", 1)[0] == b"", "an empty stream ends the throttle at once"


def test_target_xml_moves_disks_tags_and_clones() -> None:
    xml = (
        f"<domain><name>web1</name><uuid>{UUID}</uuid><devices>"
        "<disk type='file' device='disk'><source file='/a/web1.qcow2'/><target dev='vda'/></disk>"
        "<interface type='bridge'><mac address='52:54:00:00:00:01'/><source bridge='vmbr0'/></interface>"
        "</devices></domain>"
    )
    moved = _target_xml(plan(Mode.OFFLINE), xml, "/srv/x")
    assert "/srv/x/vda.raw" in moved, "named by device and format (raw: no driver type)"
    assert UUID in moved and "52:54:00:00:00:01" in moved
    assert "vemigrate:migration" in moved and 'uid="0b7c9f6e' in moved
    cloned = _target_xml(plan(Mode.OFFLINE, clone=True), xml, "/srv/x")
    assert UUID not in cloned and "52:54:00" not in cloned
    assert _target_xml(plan(Mode.OFFLINE, clone=True), xml, "/srv/x") == cloned, "the clone's UUID is stable"


def test_two_disks_of_one_base_name_land_in_two_files() -> None:
    disks = "".join(
        f"<disk type='file' device='disk'><driver type='qcow2'/><source file='/{d}/disk.qcow2'/>"
        f"<target dev='{dev}'/></disk>"
        for d, dev in (("a", "vda"), ("b", "vdb"))
    )
    xml = f"<domain><name>web1</name><uuid>{UUID}</uuid><devices>{disks}</devices></domain>"
    moved = _target_xml(plan(Mode.OFFLINE), xml, "/srv/x")
    assert "/srv/x/vda.qcow2" in moved and "/srv/x/vdb.qcow2" in moved
    text = _offline_script(plan(Mode.OFFLINE), xml)
    assert text.count("dd if=/a/disk.qcow2") == 1 and text.count("dd if=/b/disk.qcow2") == 1
    assert f"/{UUID}/vda.qcow2" in text and f"/{UUID}/vdb.qcow2" in text


def test_offline_total_is_an_integer_for_disks_of_several_gib(tmp_path: Path) -> None:
    """The job's `total` line, run by sh on real (sparse) files of 3 GiB each: awk's `print` wrote such a
    sum as 6.44245e+09, which the progress reader could not take (a large offline copy crashed its pass)."""
    files = [tmp_path / "a.raw", tmp_path / "b.raw"]
    for f in files:
        with f.open("wb") as handle:
            handle.truncate(3 * 1024**3)
    disks = "".join(
        f"<disk type='file' device='disk'><driver type='raw'/><source file='{f}'/><target dev='vd{c}'/></disk>"
        for f, c in zip(files, "ab", strict=True)
    )
    text = _offline_script(
        plan(Mode.OFFLINE), f"<domain><name>web1</name><uuid>{UUID}</uuid><devices>{disks}</devices></domain>"
    )
    line = next(command for command in _commands(text) if command.startswith("echo total "))
    printed = subprocess.run(["sh", "-c", line], capture_output=True, text=True, timeout=30, check=True).stdout
    assert printed == f"total {6 * 1024**3}\n"
    assert _offline_stats(printed).bytes_total == 6 * 1024**3


def test_offline_refusals_are_specific() -> None:
    with pytest.raises(PermanentError) as sid:
        _offline_script(plan(Mode.OFFLINE, clone=True, changeSid=True), "<domain/>")
    assert sid.value.reason == "ChangeSidUnsupported"


@pytest.mark.parametrize(
    ("state", "options"),
    [
        (VEState.STOPPED, {}),
        (VEState.STOPPED, {"clone": True}),
        (VEState.STOPPED, {"clone": True, "changeSid": True}),
        (VEState.SUSPENDED, {}),
        (VEState.SUSPENDED, {"clone": True}),
        (VEState.STOPPED, {"bandwidthMiBps": 5, "compression": False}),
    ],
)
def test_the_capability_check_fails_on_exactly_what_an_offline_job_is_refused(
    state: VEState, options: dict[str, Any]
) -> None:
    """A QEMU host's reported capabilities make the DriverCapabilities check fail on what building the
    offline job refuses (which stays, the last guard), and only on that."""
    disk = "<disk type='file' device='disk'><source file='/a/web1.qcow2'/><target dev='vda'/></disk>"
    xml = f"<domain><name>web1</name><uuid>{UUID}</uuid><devices>{disk}</devices></domain>"
    p = driver_plan(
        "0b7c9f6e-1111-4222-8333-444455556666", spec(**options), ve(state=state), SOURCE, TARGET, mode=Mode.OFFLINE
    )
    assert p.ve is not None
    inp = CheckInput(
        spec=p.spec,
        plan=resolve(p.uid, p.spec, p.ve, None, None),
        ve=p.ve,
        source=HostStatus(capabilities=list(QEMU_CAPABILITIES)),
        target=HostStatus(),
        target_ve=None,
        ssh_port_open=True,
    )
    result, message = REGISTRY[CheckName.DRIVER_CAPABILITIES](inp)
    try:
        _offline_script(p, xml)
    except PermanentError as refused:
        assert result == CheckResult.FAILED, f"the job is refused ({refused.message}) but the check says {message}"
    else:
        assert result == CheckResult.PASSED, message


def test_offline_progress_from_the_log() -> None:
    log = "total 3000\n1000 bytes (1 kB) copied, 1 s, 1 kB/s\rdone 1500\n\r800 bytes (800 B) copied\n"
    stats = _offline_stats(log)
    assert (stats.bytes_processed, stats.bytes_total) == (2300, 3000)


def test_host_facts_from_the_shell() -> None:
    facts = {
        "cpus": 4,
        "free": 2 * 1024**3,
        "total": 8 * 1024**3,
        "vendor": "Intel",
        "model": "Skylake",
        "features": ["avx", "sse4_2"],
        "hypervisor": "QEMU",
        "hv_version": 7002000,
        "lib_version": 9000000,
    }
    shell = (
        "df 1     1000 5000 ext4\n"
        "bridge vmbr0\naddr eth0 192.0.2.1/24\nspeed eth0 10000\nclock 1000000500000000\nkernel 6.1.0\ntls no\n"
    )
    status = _host_status(facts, shell, ["/var/lib/libvirt/images"], 1000000000000000, SOURCE)
    assert status.storage[0].free_bytes == 1000
    assert status.network is not None
    assert status.network.bridges == ["vmbr0"] and status.network.subnets == ["192.0.2.0/24"]
    assert status.network.link_speed_mbps == 10000
    assert status.time_offset_ms == 500
    assert status.encrypted_disk_copy is False
    assert status.version is not None and status.version.product == "libvirt 9.0.0"
    assert "LiveVM" in status.capabilities and "LiveClone" not in status.capabilities
    lxc = _host_status({**facts, "hypervisor": "LXC"}, shell, ["/var/lib/libvirt/images"], 1000000000000000, SOURCE)
    assert lxc.capabilities == ["OfflineContainer", "Clone", "Bandwidth"], "no live container, no live tuning"


def test_job_script_records_exit_status_and_job_dirs_refuse_odd_uids() -> None:
    text = hostjob.script(["false"])
    assert "( run ); rc=$?" in text
    with pytest.raises(PermanentError):
        hostjob.job_dir("../../etc", 1)


def test_completed_job_figures() -> None:
    domjobinfo = (
        "Job type:         Completed\nOperation:        Outgoing migration\nTime elapsed:     2103         ms\n"
        "Data processed:   74.527 MiB\nData remaining:   0.000 B\nData total:       320.188 MiB\n"
        "Total downtime:   68           ms\n"
    )
    stats = completed_stats(domjobinfo, "")
    assert stats.downtime_ms == 68
    assert stats.bytes_processed == int(74.527 * 1024**2)
    assert stats.bytes_total == int(320.188 * 1024**2)
    offline = completed_stats("", "total 3000\ndone 3000\n")
    assert (offline.bytes_processed, offline.bytes_total, offline.downtime_ms) == (3000, 3000, None)


def test_switchover_time_from_the_jobs_events() -> None:
    """libvirt's lifecycle event when the listener caught it; else the job's end less the downtime."""
    domjobinfo = "Total downtime:   68           ms\n"
    events = (
        "2026-11-30 08:10:00.100+0000: event 'lifecycle' for domain 'vm1': Resumed Unpaused\n"
        "2026-11-30 08:10:03.250+0000: event 'lifecycle' for domain 'vm1': Suspended Migrated\n"
        "2026-11-30 08:10:03.400+0000: event 'lifecycle' for domain 'vm1': Stopped Migrated\n"
        "2026-11-30 08:10:03.500+0000: virsh migrate returned\n"
    )
    paused = datetime(2026, 11, 30, 8, 10, 3, 250000, tzinfo=UTC)
    caught = completed_stats(domjobinfo, "", events)
    assert caught.switchover_time == paused
    assert caught.switchover_evidence == "libvirt's lifecycle event 'Suspended Migrated' on the source"
    post_copy = events.replace("Suspended Migrated", "Suspended Post-copy")
    assert completed_stats(domjobinfo, "", post_copy).switchover_time == paused
    missed = "2026-11-30 08:10:03.500+0000: virsh migrate returned\n"
    ended = datetime(2026, 11, 30, 8, 10, 3, 500000, tzinfo=UTC)
    fallback = completed_stats(domjobinfo, "", missed)
    assert fallback.switchover_time == ended - timedelta(milliseconds=68)
    assert fallback.switchover_evidence == "the job's end on the source less the downtime"
    assert completed_stats("", "total 3000\ndone 3000\n").switchover_time is None


def test_live_job_listens_for_lifecycle_events_without_holding_the_lock() -> None:
    text = live_script(plan(), copy_disks=False)
    listener = next(line for line in text.splitlines() if " event " in line)
    assert "--timestamp" in listener and ">events" in listener and "9>&-" in listener and listener.endswith("&")
    assert text.index(" event ") < text.index(" migrate --live") < text.index("virsh migrate returned")


def test_a_disk_path_the_targets_record_cannot_hold_is_refused() -> None:
    """The record is read line by line: a path with a line break could forge an entry."""
    disk = _Disk("vda", "/images/a\nfile 1:2:3 /etc/passwd", "qcow2")
    with pytest.raises(PermanentError) as refused:
        live_script(plan(), copy_disks=True, disks=[(disk, 1 << 20)])
    assert refused.value.reason == "UnsupportedDisk"


@pytest.mark.parametrize("kind", ["offline", "live"])
def test_a_jobs_commands_on_the_target_share_one_ssh_connection_which_it_closes(kind: str, tmp_path: Path) -> None:
    """One SSH handshake to the target per migration: every `ssh` the job runs names the migration's
    control socket (in its own 0700 directory, short enough for a socket path), none holds the job's lock
    (the master outlives its command), and the job closes the connection as it ends: an offline job
    whatever its outcome, a live job only when it failed (its disposal proves the storage sharing again
    over it)."""
    disk = _Disk("vda", "/var/lib/libvirt/images/web1.qcow2", "qcow2")
    if kind == "live":
        job = plan()
        text = live_script(job, copy_disks=True, disks=[(disk, 1 << 20)])
    else:
        job = plan(Mode.OFFLINE, ve=ve(state=VEState.STOPPED, disk_paths=(disk.path,)))
        xml = (
            f"<domain><name>web1</name><uuid>{UUID}</uuid><devices><disk type='file' device='disk'>"
            f"<driver type='qcow2'/><source file='{disk.path}'/><target dev='vda'/></disk></devices></domain>"
        )
        text = _offline_script(job, xml)
    socket = hostjob.control_path(job.uid)
    assert len(socket) + len(".0123456789abcdef") < 108
    run, _, after = text.partition("( run ); rc=$?")
    remote = [line for line in _commands(run) if _tokens(line)[:1] == ["ssh"] or "| ssh " in line]
    # Each is a session of 0.1 s or more: offline, the disk's stream (which makes the directory) and the
    # last step (name, define, forget); live, the disks' creation and the statistics with the forgetting.
    assert len(remote) == 2, remote
    for line in remote:
        assert f"ControlPath={socket}" in line and "ControlMaster=auto" in line, line
        assert " 9>&-" in line, line
    finally_ = after.splitlines()[1]
    fake = tmp_path / "ssh"
    fake.write_text(f'#!/bin/sh\necho "$*" >>{tmp_path}/calls\n')
    fake.chmod(0o700)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    for rc in (0, 1):
        subprocess.run(["sh", "-c", f"rc={rc}; {finally_}"], env=env, check=True, timeout=10)
    calls = (tmp_path / "calls").read_text().splitlines()
    closing = f"-o ControlPath={socket} -O exit _"
    assert calls == ([closing] if kind == "live" else [closing, closing])
