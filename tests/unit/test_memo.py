"""What the operator keeps between passes (vemigrate/memo.py, queue.py, wakeups.py), without kopf: the
first cause to wake a migration is the one its next pass is told, a spec.action change (and only a change)
wakes it, the queue's order of arrival, the bookkeeping of migrations seen to end, and the waiters woken
when a slot frees (the SIMULATED driver's world behind reconcile; the hosts from a stand-in index)."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, cast

from tests.unit.builders import T0
from vemigrate import reconcile
from vemigrate.api.migration import Phase
from vemigrate.core.observation import OtherMigration
from vemigrate.drivers.simulated import SimulatedWorld
from vemigrate.memo import Memo, left_queue_or_slot
from vemigrate.queue import Admission
from vemigrate.wakeups import Cause, Wakeups


def _other(uid: str, phase: Phase, source: str = "node-a", seconds: int = 0, arrival: int = 0) -> OtherMigration:
    return OtherMigration(
        uid=uid,
        created=T0 + timedelta(seconds=seconds),
        phase=phase.value,
        source_host=source,
        target_host="node-b",
        ve_name=f"ve-{uid}",
        name=uid,
        arrival=arrival,
    )


class Hosts:
    """HypervisorHosts as a watch's index would hold them (reconcile.HostLookup)."""

    def __init__(self, **max_outbound: int) -> None:
        self.bodies = {
            name: {
                "apiVersion": "vemigrate.io/v1alpha1",
                "kind": "HypervisorHost",
                "metadata": {"name": name, "namespace": "ns"},
                "spec": {
                    "address": "192.0.2.10",
                    "credentialsSecretRef": {"name": "ssh"},
                    "hostKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
                    "maxOutbound": limit,
                    "maxInbound": 10,
                },
            }
            for name, limit in {"node-a": 1, "node-b": 1, **max_outbound}.items()
        }

    def get(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return self.bodies.get(name)

    def in_namespace(self, namespace: str) -> list[Mapping[str, Any]]:
        return list(self.bodies.values())


def _memo() -> Memo:
    return Memo(reconcile.World(kube=cast(Any, None), make_driver=SimulatedWorld().driver))


async def test_the_first_cause_since_the_last_pass_is_the_one_told() -> None:
    wakeups = Wakeups()
    never = asyncio.Event()
    wakeups.wake("m1", Cause.JOB_ENDED)  # during the pass: counts for the sleep after it
    wakeups.wake("m1", Cause.SLOT_FREED)
    assert await wakeups.sleep("m1", 30, never.wait()) == Cause.JOB_ENDED
    # Told once: the next sleep is the poll's, unless something wakes it again.
    assert await wakeups.sleep("m1", 0.01, never.wait()) == Cause.TIMER
    sleeping = asyncio.ensure_future(wakeups.sleep("m1", 30, never.wait()))
    await asyncio.sleep(0)
    wakeups.wake("m1", Cause.SPEC_CHANGE)
    assert await asyncio.wait_for(sleeping, 5) == Cause.SPEC_CHANGE
    wakeups.wake("m2", Cause.SLOT_FREED)
    assert await wakeups.sleep("m1", 0.01, never.wait()) == Cause.TIMER, "another migration's wake-up"


async def test_a_stopped_daemon_stops_sleeping_at_once() -> None:
    stopped = asyncio.Event()
    stopped.set()
    assert await asyncio.wait_for(Wakeups().sleep("m1", 30, stopped.wait()), 5) == Cause.TIMER


async def test_only_a_change_of_spec_action_wakes_the_migration() -> None:
    wakeups = Wakeups()
    never = asyncio.Event()
    wakeups.action_seen("m1", None)  # first sight (a new object, or the operator starting): no change
    wakeups.action_seen("m1", None)  # a status event: no change
    assert await wakeups.sleep("m1", 0.01, never.wait()) == Cause.TIMER
    wakeups.action_seen("m1", "Cancel")
    assert await wakeups.sleep("m1", 0.01, never.wait()) == Cause.SPEC_CHANGE
    wakeups.deleted("m1")
    wakeups.action_seen("m1", "ForceComplete")  # seen first again: the object was made anew
    assert await wakeups.sleep("m1", 0.01, never.wait()) == Cause.TIMER


async def test_a_job_end_reported_by_the_world_wakes_the_migration() -> None:
    memo = _memo()
    memo.world.job_ended("m1")
    assert await memo.wakeups.sleep("m1", 0.01, asyncio.Event().wait()) == Cause.JOB_ENDED


def test_arrivals_are_numbered_in_the_order_first_seen_and_forgotten_once_final() -> None:
    admission = Admission()
    assert [admission.arrival(uid, final=False) for uid in ("a", "b", "a", "c")] == [1, 2, 1, 3]
    assert admission.arrival("b", final=True) == 0
    assert admission.arrival("d", final=False) == 4, "numbers are never reused"


def test_a_migration_seen_to_end_is_left_out_until_the_index_has_its_final_phase() -> None:
    admission = Admission()
    indexed = [_other("a", Phase.VALIDATING), _other("b", Phase.QUEUED)]
    admission.decided(_other("b", Phase.VALIDATING))  # admitted; the index still shows it Queued
    assert [(o.uid, o.phase) for o in admission.view(indexed)] == [("a", "Validating"), ("b", "Validating")]
    admission.ended("a")  # its final status written; the index still shows it in flight
    assert [o.uid for o in admission.view(indexed)] == ["b"]
    admission.arrival("a", final=True)  # the watch delivered its final phase
    final = [_other("a", Phase.SUCCEEDED), _other("b", Phase.QUEUED)]
    assert [(o.uid, o.phase) for o in admission.view(final)] == [("a", "Succeeded"), ("b", "Validating")]
    admission.ended("b")
    assert [o.uid for o in admission.view(final)] == ["a"], "nothing decided is kept of an ended one"


def test_making_room_is_ending_or_leaving_a_slot() -> None:
    assert left_queue_or_slot(Phase.QUEUED, Phase.CANCELLED)
    assert left_queue_or_slot(Phase.TRANSFERRING, Phase.SUCCEEDED)
    assert left_queue_or_slot(Phase.ROLLING_BACK, Phase.QUEUED)
    assert not left_queue_or_slot(Phase.QUEUED, Phase.VALIDATING)
    assert not left_queue_or_slot(Phase.TRANSFERRING, Phase.FINALIZING)
    assert not left_queue_or_slot(Phase.QUEUED, Phase.QUEUED)


async def test_a_freed_slot_wakes_the_oldest_waiter_of_its_host_only() -> None:
    memo = _memo()
    hosts = Hosts(**{"node-c": 1})
    indexed = [
        _other("holder", Phase.VALIDATING, seconds=0),
        _other("young", Phase.QUEUED, seconds=2, arrival=3),
        _other("old", Phase.QUEUED, seconds=1, arrival=2),
        _other("elsewhere", Phase.QUEUED, source="node-c", seconds=3, arrival=4),
    ]
    # The holder still holds node-a's one outbound slot: only the waiter from node-c may go.
    assert await memo.next_up("ns", indexed, hosts) == ["elsewhere"]
    memo.admission.ended("holder")  # its pass wrote its final phase: the slot is free
    assert await memo.next_up("ns", indexed, hosts) == ["old", "elsewhere"]
    never = asyncio.Event()
    assert await memo.wakeups.sleep("old", 0.01, never.wait()) == Cause.SLOT_FREED
    assert await memo.wakeups.sleep("young", 0.01, never.wait()) == Cause.TIMER, "not its turn: it sleeps on"


async def test_no_waiter_no_hosts_read() -> None:
    class Unreadable(Hosts):
        def in_namespace(self, namespace: str) -> list[Mapping[str, Any]]:
            raise AssertionError("read although none waits")

    memo = _memo()
    assert await memo.next_up("ns", [_other("a", Phase.VALIDATING)], Unreadable()) == []


def test_every_object_of_kopf_gets_the_one_memo() -> None:
    """kopf hands each object's handlers a shallow copy of the operator's memo: it must be this one."""
    memo = _memo()
    assert copy.copy(memo) is memo
    memo.lock("m1")
    memo.wakeups.wake("m1", Cause.JOB_ENDED)
    memo.ended("m1")
    assert memo.locks == {}


async def test_a_deleted_dry_run_stops_its_daemon_and_frees_its_slot() -> None:
    """A dry run has no finalizer, so no deletion pass: its DELETED event wakes its daemon to stop, and
    gives its slot to the oldest waiter, as a deletion pass would."""
    memo = _memo()
    hosts = Hosts()
    memo.daemons.add("dry")
    memo.admission.decided(_other("dry", Phase.VALIDATING))
    waiter = _other("waiter", Phase.QUEUED, seconds=1, arrival=2)
    # The index has dropped the deleted object already; this process's decision about it must go too.
    await memo.dry_run_deleted("dry", "ns", [waiter], hosts)
    assert "dry" in memo.gone
    never = asyncio.Event()
    assert await memo.wakeups.sleep("dry", 0.01, never.wait()) == Cause.DELETION
    assert await memo.wakeups.sleep("waiter", 0.01, never.wait()) == Cause.SLOT_FREED
    assert memo.admission.view([]) == [], "nothing kept of the deleted dry run"
    await memo.dry_run_deleted("no-daemon", "ns", [], hosts)
    assert "no-daemon" not in memo.gone, "no daemon runs for it here: nothing to stop"
