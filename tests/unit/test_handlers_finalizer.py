"""Which migrations kopf gives a finalizer: a real one (its daemon, and its deletion handler that rolls
back), never a dry run (nothing of it is on a host). Read from the registry of the kopf installed, so
that an upgrade which changes how vemigrate.handlers strips the dry run's requirement fails here."""

from __future__ import annotations

from typing import Any, cast

import kopf

from vemigrate import handlers, reconcile
from vemigrate.drivers.simulated import SimulatedWorld
from vemigrate.memo import Memo


def _handler(fn: Any) -> Any:
    registry = kopf.get_default_registry()
    found = [h for h in [*registry._spawning.get_all_handlers(), *registry._changing.get_all_handlers()] if h.fn is fn]
    assert len(found) == 1, found
    return found[0]


def _kwargs(phase: str | None, dry_run: bool, uid: str = "u1") -> dict[str, Any]:
    spec: dict[str, Any] = {"source": {"host": "a", "name": "v"}, "target": {"host": "b"}}
    if dry_run:
        spec["dryRun"] = True
    body = {"metadata": {"uid": uid}, "spec": spec, "status": {"phase": phase} if phase else {}}
    memo = Memo(reconcile.World(kube=cast(Any, None), make_driver=SimulatedWorld().driver))
    return {"body": body, "spec": spec, "uid": uid, "memo": memo}


def test_a_dry_runs_daemon_needs_no_finalizer_and_a_real_ones_does() -> None:
    assert _handler(handlers.run_migration).requires_finalizer
    assert not _handler(handlers.run_dry_run).requires_finalizer
    assert _handler(handlers.delete_migration).requires_finalizer


def test_each_migration_has_one_daemon_and_only_a_real_one_a_deletion_handler() -> None:
    real, dry = _handler(handlers.run_migration), _handler(handlers.run_dry_run)
    deletion = _handler(handlers.delete_migration)
    assert real.when(**_kwargs(None, dry_run=False)) and not dry.when(**_kwargs(None, dry_run=False))
    assert dry.when(**_kwargs("Validating", dry_run=True)) and not real.when(**_kwargs("Validating", dry_run=True))
    assert deletion.when(**_kwargs("Transferring", dry_run=False))
    assert not deletion.when(**_kwargs("Validating", dry_run=True))


def test_a_final_migrations_daemon_runs_on_only_while_its_last_pass_does() -> None:
    """The final status must not stop the daemon from outside mid-pass (kopf would poll it with a PATCH)."""
    dry = _handler(handlers.run_dry_run)
    finished = _kwargs("Succeeded", dry_run=True)
    assert not dry.when(**finished), "no daemon for a migration found final"
    finished["memo"].daemons.add("u1")
    assert dry.when(**finished), "its daemon is still in the pass that finished it"
