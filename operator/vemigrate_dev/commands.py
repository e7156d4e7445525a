"""The local environment's verbs on the `vemigrate` command: `controlplane`, `lab`, `demo`, `argocd`.

`vemigrate.cli` imports this module by name only when one of `NAMES` is typed (or for `vemigrate
--help`), so the operator's own commands never load the local environment, and an installation
without it (the image) says in one line that it is missing."""

from __future__ import annotations

import argparse

from vemigrate_dev import argocd, controlplane, demo, lab

# Kept equal to vemigrate.cli.DEV_COMMANDS (tests/unit/test_cli_dev.py).
NAMES = ("controlplane", "lab", "demo", "argocd")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    controlplane.register(subparsers)
    lab.register(subparsers)
    demo.register(subparsers)
    argocd.register(subparsers)
