"""The `prlctl migrate` command line, built from the spec one option at a time.

The synopsis (Virtuozzo's migration guide, and `man prlctl`, "Migration management"):

    prlctl migrate <VE> [<user>@]<server>[:<port>][/<VE_UUID>] [--dst=<path>] [--clone]
                   [--changesid] [--no-tunnel] [--no-compression] [--ssh <options>]

What prlctl itself refuses (CmdParam.cpp get_migrate_param) is refused here first, with a reason of
its own, so a bad spec fails before anything runs on a node: `--changesid` without `--clone`, and a
`--dst` that is not an absolute path (prlctl rejects relative ones). Tunnelless container migration,
which the guide says is not supported, is refused too.

Credentials never appear here: the `[<user>[:<passwd>]@]` form would put a password on a command line
that `ps` shows. Nodes authenticate to each other with SSH keys (docs/virtuozzo.md). `:<port>` is
the target dispatcher's port, not SSH's, so the HypervisorHost's SSH port travels as `--ssh=-p N`.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import PurePosixPath

from vemigrate.api.host import VEKind
from vemigrate.api.reasons import Reason
from vemigrate.drivers.errors import PermanentError
from vemigrate.drivers.protocol import MigrationPlan

PRLCTL = "prlctl"
PRLSRVCTL = "prlsrvctl"
SSH_PORT = 22


@dataclass(frozen=True)
class MigrateRequest:
    """Everything the command line depends on, and nothing else."""

    ve: str  # the VE's UUID (or the name the spec gave, when the UUID is not known)
    kind: VEKind
    target_user: str
    target_address: str  # where the target's migration traffic goes (migrationAddress or address)
    target_ssh_port: int = SSH_PORT
    target_ve_id: str | None = None  # the /<VE_UUID> form: a Virtuozzo 6 container to a storage cluster
    path: str | None = None
    clone: bool = False
    change_sid: bool = False
    tunnel: bool = True
    compression: bool = True


def request_for(plan: MigrationPlan, *, target_ve_id: str | None = None) -> MigrateRequest:
    spec = plan.spec
    tuning = [
        field
        for field, value in (
            ("bandwidthMiBps", spec.bandwidth_mib_ps),
            ("maxDowntimeMs", spec.max_downtime_ms),
            ("autoConverge", spec.auto_converge),
            ("postCopy", spec.post_copy),
        )
        if value
    ]
    if tuning:
        # prlctl migrate has no such options: its dispatcher tunes the transfer itself. Said, not ignored.
        raise PermanentError(
            Reason.UNSUPPORTED_BY_PRLCTL,
            f"prlctl migrate has no options for {', '.join(tuning)}: remove them for hosts with driver prlctl",
        )
    return MigrateRequest(
        ve=plan.ve.uuid if plan.ve is not None else spec.source.name,
        kind=plan.ve.type if plan.ve is not None else VEKind.VM,
        target_user=plan.target.user,
        target_address=plan.target.data_address,
        target_ssh_port=plan.target.port,
        target_ve_id=target_ve_id,
        path=spec.target.path,
        clone=spec.clone,
        change_sid=spec.change_sid,
        tunnel=spec.tunnel,
        compression=spec.compression,
    )


def refuse(request: MigrateRequest) -> None:
    """Raise for the combinations prlctl (or the migration guide) does not allow."""
    if request.change_sid and not request.clone:
        raise PermanentError(
            Reason.CHANGE_SID_NEEDS_CLONE, "--changesid can only be used with --clone (spec.changeSid needs clone)"
        )
    if request.path is not None:
        path = PurePosixPath(request.path)
        if not path.is_absolute():
            raise PermanentError(
                Reason.RELATIVE_TARGET_PATH,
                f"--dst={request.path}: prlctl does not allow relative paths; give a full path",
            )
        if ".." in path.parts:
            raise PermanentError(Reason.INVALID_TARGET_PATH, f"--dst={request.path}: '..' components are not allowed")
    if not request.tunnel and request.kind == VEKind.CONTAINER:
        raise PermanentError(
            Reason.TUNNELLESS_CONTAINER, "tunnelless container migration is not supported: set spec.tunnel to true"
        )
    if not request.ve.strip():
        raise PermanentError(Reason.INVALID_VE, "the VE to migrate has no name")


def destination(request: MigrateRequest) -> str:
    """`<user>@<server>[/<VE_UUID>]`: the user always written out, never a password."""
    server = request.target_address
    if ":" in server:  # an IPv6 literal: brackets keep its colons apart from a port
        server = f"[{server}]"
    text = f"{request.target_user}@{server}"
    if request.target_ve_id:
        text += f"/{request.target_ve_id}"
    return text


def migrate_argv(request: MigrateRequest) -> list[str]:
    """The exact argv of `prlctl migrate` for this request (refused combinations raise)."""
    refuse(request)
    argv = [PRLCTL, "migrate", request.ve, destination(request)]
    if request.path is not None:
        argv.append(f"--dst={request.path}")
    if request.clone:
        argv.append("--clone")
    if request.change_sid:
        argv.append("--changesid")
    if not request.tunnel:
        argv.append("--no-tunnel")
    if not request.compression:
        argv.append("--no-compression")
    if request.target_ssh_port != SSH_PORT:
        argv.append(f"--ssh=-p {request.target_ssh_port}")
    return argv


def under_pty(argv: list[str], pid_file: str) -> list[str]:
    """Run argv on a pseudo-terminal with util-linux `script`, recording argv's PID first.

    prlctl prints its progress only when its standard output is a terminal (Utils.cpp
    print_procent checks isatty), and a detached job's output goes to a file; `script` gives it a
    terminal and copies everything to the job's log. The PID file lets a cancel reach prlctl itself
    (it runs in the pty's own session, out of reach of a signal to the job's process group).
    `-e` makes `script` exit with prlctl's exit status."""
    inner = f"echo $$ >{shlex.quote(pid_file)} && exec {shlex.join(argv)}"
    return ["script", "-q", "-e", "-c", inner, "/dev/null"]
