"""The prlctl driver's commands: every spec combination to the exact `prlctl migrate` argv, the option
conflicts prlctl itself refuses, and the detached job script around it."""

from __future__ import annotations

import itertools
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.unit.builders import driver_plan, spec, ve
from vemigrate.api.checks import CheckName, CheckResult
from vemigrate.api.host import HostStatus, VEKind
from vemigrate.api.migration import Mode
from vemigrate.core.access import HostAccess
from vemigrate.core.checks import REGISTRY, CheckInput
from vemigrate.core.plan import resolve
from vemigrate.drivers.errors import PermanentError
from vemigrate.drivers.prlctl import CAPABILITIES, MIGRATE_PID, job_script
from vemigrate.drivers.prlctl_command import MigrateRequest, migrate_argv, request_for, under_pty
from vemigrate.drivers.protocol import MigrationPlan

UUID = "3f1c2a9e-8d7b-4c1e-9a55-0e6f6d1b2c3d"
SOURCE = HostAccess(name="node-a", namespace="ns", address="192.0.2.1", driver="prlctl")
TARGET = HostAccess(name="node-b", namespace="ns", address="192.0.2.2", driver="prlctl")


def plan(to: HostAccess = TARGET, kind: VEKind = VEKind.VM, **overrides: Any) -> MigrationPlan:
    return driver_plan(
        "0b7c9f6e-1111-4222-8333-444455556666", spec(**overrides), ve(type=kind), SOURCE, to, mode=Mode.LIVE
    )


def expected(path: str | None, clone: bool, change_sid: bool, tunnel: bool, compression: bool) -> list[str]:
    """The synopsis, one option at a time, in its order."""
    argv = ["prlctl", "migrate", UUID, "root@192.0.2.2"]
    argv += [f"--dst={path}"] if path else []
    argv += ["--clone"] if clone else []
    argv += ["--changesid"] if change_sid else []
    argv += [] if tunnel else ["--no-tunnel"]
    argv += [] if compression else ["--no-compression"]
    return argv


COMBINATIONS = [
    combo
    for combo in itertools.product([None, "/vz/vmprivate2"], [False, True], [False, True], [True, False], [True, False])
    if not (combo[2] and not combo[1])  # changeSid without clone: refused, tested below
]


@pytest.mark.parametrize(("path", "clone", "change_sid", "tunnel", "compression"), COMBINATIONS)
def test_every_spec_combination_gives_the_exact_argv(
    path: str | None, clone: bool, change_sid: bool, tunnel: bool, compression: bool
) -> None:
    target = {"host": "node-b", **({"path": path} if path else {})}
    p = plan(target=target, clone=clone, changeSid=change_sid, tunnel=tunnel, compression=compression)
    assert migrate_argv(request_for(p)) == expected(path, clone, change_sid, tunnel, compression)


def test_table_covers_every_option() -> None:
    assert len(COMBINATIONS) == 24
    flags = {word for combo in COMBINATIONS for word in expected(*combo)[4:]}
    assert flags == {"--dst=/vz/vmprivate2", "--clone", "--changesid", "--no-tunnel", "--no-compression"}


def test_destination_uses_migration_address_user_and_never_a_password() -> None:
    target = HostAccess(
        name="node-b", namespace="ns", address="node-b.example.test", user="migrator", password="s3cret",
        migration_address="10.1.0.2",
    )  # fmt: skip
    argv = migrate_argv(request_for(plan(to=target)))
    assert argv[:4] == ["prlctl", "migrate", UUID, "migrator@10.1.0.2"]
    assert not any("s3cret" in word for word in argv)


def test_ssh_port_other_than_22_goes_through_the_ssh_option() -> None:
    target = HostAccess(name="node-b", namespace="ns", address="192.0.2.2", port=2222)
    assert migrate_argv(request_for(plan(to=target)))[-1] == "--ssh=-p 2222"


def test_ipv6_target_is_bracketed_and_storage_cluster_form_names_the_ct_uuid() -> None:
    request = MigrateRequest(
        ve=UUID, kind=VEKind.CONTAINER, target_user="root", target_address="2001:db8::2", target_ve_id=UUID
    )
    assert migrate_argv(request)[3] == f"root@[2001:db8::2]/{UUID}"


def test_name_used_when_the_uuid_is_unknown() -> None:
    p = plan()
    p = MigrationPlan(p.uid, spec(source={"host": "node-a", "name": "my vm"}), p.mode, None, p.source, p.target)
    assert migrate_argv(request_for(p))[2] == "my vm"


@pytest.mark.parametrize(
    ("request_overrides", "reason"),
    [
        ({"change_sid": True}, "ChangeSidNeedsClone"),
        ({"path": "vz/private"}, "RelativeTargetPath"),
        ({"path": "./vz"}, "RelativeTargetPath"),
        ({"path": "/vz/../etc"}, "InvalidTargetPath"),
        ({"tunnel": False, "kind": VEKind.CONTAINER}, "TunnellessContainer"),
    ],
)
def test_conflicts_prlctl_refuses_are_refused_first(request_overrides: dict[str, Any], reason: str) -> None:
    base: dict[str, Any] = {"ve": UUID, "kind": VEKind.VM, "target_user": "root", "target_address": "192.0.2.2"}
    with pytest.raises(PermanentError) as info:
        migrate_argv(MigrateRequest(**{**base, **request_overrides}))
    assert info.value.reason == reason


@pytest.mark.parametrize(
    "tuning", [{"bandwidthMiBps": 10}, {"maxDowntimeMs": 300}, {"autoConverge": True}, {"postCopy": True}]
)
def test_libvirt_tuning_is_refused_rather_than_ignored(tuning: dict[str, Any]) -> None:
    with pytest.raises(PermanentError) as info:
        request_for(plan(**tuning))
    assert info.value.reason == "UnsupportedByPrlctl"
    assert next(iter(tuning)) in info.value.message


def test_tunnelless_vm_is_allowed() -> None:
    assert "--no-tunnel" in migrate_argv(request_for(plan(tunnel=False)))


@pytest.mark.parametrize("status", [7, 0])
def test_job_script_runs_prlctl_on_a_pty_and_records_its_pid_and_exit(tmp_path: Path, status: int) -> None:
    """The real script, run by sh with a program that prints the way prlctl does (on a terminal only),
    and an `ssh` that notes what the job asked of the target: the record of what the target holds
    first, and (only once prlctl succeeded) forgetting it."""
    calls = tmp_path / "calls"
    program = tmp_path / "fake-prlctl.sh"
    program.write_text(
        f'echo prlctl >>{calls}; [ -t 1 ] && printf "\\rOperation progress ...%2d%%" 42; echo "args: $*"; '
        f'echo "Failed to migrate the VM: boom" >&2; exit {status}\n'
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(f'#!/bin/sh\nfor a; do last=$a; done\necho "ssh $last" >>{calls}\n')
    (bin_dir / "ssh").chmod(0o755)
    argv = ["sh", str(program), "migrate", "a b", "root@192.0.2.2", "--dst=/x y"]
    (tmp_path / "job.sh").write_text(job_script(argv, plan()))
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    with (tmp_path / "log").open("w") as log_file:
        subprocess.run(["sh", str(tmp_path / "job.sh")], stdout=log_file, check=True, timeout=30, env=env)
    assert (tmp_path / "exit").read_text().strip() == str(status)
    assert (tmp_path / MIGRATE_PID).read_text().strip().isdigit()
    log = (tmp_path / "log").read_text()
    assert "Operation progress ...42%" in log  # a terminal: the progress line is there
    assert "args: migrate a b root@192.0.2.2 --dst=/x y" in log  # every word arrived intact
    assert "Failed to migrate the VM: boom" in log
    steps = calls.read_text().splitlines()
    assert steps[0].startswith("ssh sh -c ") and "prlctl list -a -i -j" in steps[0], "the target's record comes first"
    assert steps[1] == "prlctl"
    assert len(steps) == (3 if status == 0 else 2), "the record is forgotten only after a complete copy"
    if status == 0:
        assert steps[2].startswith("ssh sh -c ") and "rm -rf" in steps[2]


def test_under_pty_quotes_every_word() -> None:
    argv = under_pty(["prlctl", "migrate", "x; rm -rf /", "root@h"], "migrate.pid")
    assert argv[:4] == ["script", "-q", "-e", "-c"]
    assert shlex.split(argv[4])[-4:] == ["prlctl", "migrate", "x; rm -rf /", "root@h"]


@pytest.mark.parametrize("kind", list(VEKind))
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"bandwidthMiBps": 10},
        {"maxDowntimeMs": 300},
        {"autoConverge": True},
        {"postCopy": True},
        {"clone": True},
        {"clone": True, "changeSid": True},
    ],
)
def test_the_capability_check_fails_on_exactly_what_prlctl_migrate_is_refused(
    kind: VEKind, options: dict[str, Any]
) -> None:
    """The capabilities a prlctl host reports make the DriverCapabilities check fail on what start_job would
    refuse (its own refusal stays, the last guard), and only on that."""
    p = plan(kind=kind, **options)
    assert p.ve is not None
    inp = CheckInput(
        spec=p.spec,
        plan=resolve(p.uid, p.spec, p.ve, None, None),
        ve=p.ve,
        source=HostStatus(capabilities=list(CAPABILITIES)),
        target=HostStatus(),
        target_ve=None,
        ssh_port_open=True,
    )
    result, message = REGISTRY[CheckName.DRIVER_CAPABILITIES](inp)
    try:
        request_for(p)
    except PermanentError as refused:
        assert result == CheckResult.FAILED, f"start_job refuses ({refused.message}) but the check says {message}"
        assert next(iter(options)) in message and "source node-a" in message
    else:
        assert result == CheckResult.PASSED, message
