"""The `vemigrate` command: `run` (the operator) and `crds`; with the dev environment installed, also
its verbs `controlplane`, `lab` and `demo`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TypeAlias

# What a command module provides: `register(subparsers)`.
Register: TypeAlias = "Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]"

# Modules that add their own sub-commands: each has `register(subparsers)`, which adds a parser whose
# defaults carry `func(args) -> int`. Imported lazily so `vemigrate crds` needs none of them.
_COMMAND_MODULES = ("vemigrate.api.crd",)

# The local environment's verbs. They live in `vemigrate_dev`, a package outside the operator's
# distribution and image, which the operator never imports (import-linter's "The operator never imports
# the local environment"). This module names it only here: it is imported by name when one of these
# verbs is typed, or for `vemigrate --help` (listed where it is installed), never for `run` or `crds`.
DEV_COMMANDS = ("controlplane", "lab", "demo", "argocd")
_DEV_MODULE = "vemigrate_dev.commands"
_DEV_INSTALL = "in a checkout of ve-migrate: tools/setup.sh, or pip install -e '.[dev]'"


class DevEnvironmentMissing(RuntimeError):
    pass


def dev_commands() -> Register:
    """`register` of the dev environment's verbs; DevEnvironmentMissing says in one line what is missing."""
    try:
        module = importlib.import_module(_DEV_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name == "vemigrate_dev" or (exc.name or "").startswith("vemigrate_dev."):
            raise DevEnvironmentMissing(
                f"the dev environment is not installed (it is not part of the operator's image): {_DEV_INSTALL}"
            ) from None
        raise DevEnvironmentMissing(
            f"the dev environment needs the Python module {exc.name!r}, which is not installed: {_DEV_INSTALL}"
        ) from None
    register: Register = module.register
    return register


# seniority(): milliseconds from a start until this point in time (year 2248), times the tie-break range.
_NEWEST_START_MS = 2**43
_TIE_BREAK = 1024


def seniority(started: float, tie_break: int) -> int:
    """A replica's kopf peering priority (`--priority` unset): the earlier it started, the higher, so the
    replica that works keeps working and a newcomer (a rollout's or a replacement's Pod) stands by
    instead of pausing it mid-pass; the working one gone, the oldest one left takes over. kopf pauses
    every replica of equal priority, so `tie_break` (random, below _TIE_BREAK) separates replicas started
    in the same millisecond. At most 2**53: exact as a JSON number in the peering object."""
    ms = int(started * 1000)
    if not 0 < ms < _NEWEST_START_MS or not 0 <= tie_break < _TIE_BREAK:
        raise ValueError(f"start {started!r} or tie-break {tie_break!r} out of range")
    return (_NEWEST_START_MS - ms) * _TIE_BREAK + tie_break + 1


def _run(args: argparse.Namespace) -> int:
    """The operator: kopf with our handlers, metrics on their own port."""
    import os
    import secrets
    import time

    import kopf

    import vemigrate.handlers  # noqa: F401 (importing it registers kopf's handlers)
    from vemigrate import metrics, reconcile
    from vemigrate.drivers.registry import driver_for
    from vemigrate.kube.client import Kube, NoCredentials
    from vemigrate.memo import Memo

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_level != "DEBUG":
        # kopf says "succeeded" for every timer tick and pass; problems are still logged as warnings.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        logging.getLogger("asyncssh").setLevel(logging.WARNING)  # it logs every channel at INFO
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig  # kopf's login reads it
    settings = reconcile.Settings(
        cluster_limit=args.max_parallel,
        host_probe_seconds=args.host_probe_seconds,
        progress_seconds=args.progress_seconds,
        stalled_pass_seconds=args.stalled_pass_seconds,
    )
    try:
        kube = Kube.from_environment(args.kubeconfig)
    except NoCredentials as error:
        print(f"vemigrate run: no Kubernetes credentials: {error}", file=sys.stderr)
        return 2
    # What the operator keeps between passes: kopf hands it to every handler.
    memo = Memo(reconcile.World(kube=kube, make_driver=driver_for, settings=settings))
    if args.metrics_port:
        metrics.serve(args.metrics_port, args.metrics_address)
    priority = args.priority if args.priority is not None else seniority(time.time(), secrets.randbelow(_TIE_BREAK))
    kopf.run(
        standalone=args.peering is None,
        peering_name=args.peering,
        priority=priority if args.peering else None,
        namespaces=args.namespace or [],
        clusterwide=not args.namespace,
        liveness_endpoint=args.liveness or None,
        memo=memo,
    )
    return 0


def _register_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser("run", help="run the operator")
    run.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then KUBECONFIG)")
    run.add_argument("--namespace", action="append", help="watch only this namespace (repeatable; default: all)")
    run.add_argument(
        "--max-parallel", type=int, default=0, help="migrations in flight at once, cluster-wide (0: no limit)"
    )
    run.add_argument("--host-probe-seconds", type=float, default=60.0, help="how often hosts are probed")
    run.add_argument(
        "--progress-seconds",
        type=float,
        default=2.0,
        help="how often a running job's progress is sampled (its end is seen at once, whatever this is)",
    )
    run.add_argument("--metrics-port", type=int, default=9090, help="port for /metrics (0: off)")
    run.add_argument("--metrics-address", default="0.0.0.0", help="address for /metrics")  # noqa: S104
    run.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="kopf liveness endpoint URL ('' off)")
    run.add_argument(
        "--stalled-pass-seconds",
        type=float,
        default=600.0,
        help="the liveness endpoint fails once a migration pass has run this long and none has ended for as long",
    )
    run.add_argument("--peering", help="kopf peering name, for several replicas (one active); default: standalone")
    run.add_argument(
        "--priority",
        type=int,
        help="with --peering: this replica's priority (the highest runs); default: the earlier started, the higher",
    )
    run.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING")
    run.set_defaults(func=_run)


def build_parser(extra: Sequence[Register] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vemigrate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _register_run(sub)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    for register in extra:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The top level has no options but -h: the first word that is not one is the command.
    command = next((word for word in argv if not word.startswith("-")), None)
    extra: list[Register] = []
    if command in DEV_COMMANDS or command is None:
        try:
            extra.append(dev_commands())
        except DevEnvironmentMissing as exc:
            if command is not None:
                print(f"vemigrate {command}: {exc}", file=sys.stderr)
                return 2
            # `vemigrate --help` where the dev environment is missing: the operator's commands only.
    args = build_parser(extra).parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except RuntimeError as exc:
        # Commands raise RuntimeError with a sentence meant for the user; no traceback for those.
        print(f"vemigrate {args.command}: {exc}", file=sys.stderr)
        return 1
