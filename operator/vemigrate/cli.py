"""The `vemigrate` command: `crds`, and the local-environment verbs (`controlplane`, `lab`)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules that add their own sub-commands: each has `register(subparsers)`, which adds a parser whose
# defaults carry `func(args) -> int`. Imported lazily so `vemigrate crds` needs none of them.
_COMMAND_MODULES = (
    "vemigrate.api.crd",
    "vemigrate.devenv.controlplane",
    "vemigrate.devenv.lab",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vemigrate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except RuntimeError as exc:
        # Commands raise RuntimeError with a sentence meant for the user; no traceback for those.
        print(f"vemigrate {args.command}: {exc}", file=sys.stderr)
        return 1
