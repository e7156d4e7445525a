"""Admission, first come first served per slot (core/admission.py): through `decide` for what a migration's
own pass decides and says, and the queue played out over a whole fleet. Pure: no mocks."""

from __future__ import annotations

import dataclasses
import random
from datetime import timedelta
from typing import Any

from tests.unit.builders import T0, host_facts, later, observation, spec, status_in
from vemigrate.api.migration import ConditionType, Phase, QueueCause
from vemigrate.core import admission
from vemigrate.core.admission import Limits
from vemigrate.core.conditions import find
from vemigrate.core.machine import decide
from vemigrate.core.observation import HostObservation, OtherMigration

# The migration deciding is created at T0 and moves web1 from node-a to node-b.
SOURCE_1 = HostObservation(name="node-a", reachable=None, facts=host_facts(), max_outbound=1)
TARGET_1 = HostObservation(name="node-b", reachable=None, facts=host_facts(), max_inbound=1)


def waiter(
    name: str,
    source: str = "node-a",
    target: str = "node-b",
    *,
    age: float = 60,
    phase: Phase = Phase.QUEUED,
    **kw: Any,
) -> OtherMigration:
    """Another migration, created `age` seconds before T0 (negative: after)."""
    data: dict[str, Any] = {"uid": f"uid-{name}", "name": name, "created": T0 - timedelta(seconds=age)}
    data |= {"phase": phase.value, "source_host": source, "target_host": target, "ve_name": f"ve-{name}"}
    return OtherMigration(**(data | kw))


def moved(m: OtherMigration, phase: Phase) -> OtherMigration:
    return dataclasses.replace(m, phase=phase.value)


def host(name: str, *, inbound: int = 2, outbound: int = 2) -> HostObservation:
    return HostObservation(name=name, reachable=None, max_inbound=inbound, max_outbound=outbound)


def my_turn(*others: OtherMigration, now: float = 1, stored: Any = None, **obs: Any) -> tuple[Phase, str, str]:
    """The phase this migration's pass decides, the Progressing reason and message."""
    base: dict[str, Any] = {"source": SOURCE_1, "target": TARGET_1, "others": others}
    decision = decide(spec(), stored, observation(**{**base, **obs}), later(now))
    progressing = find(decision.status.conditions, ConditionType.PROGRESSING)
    assert progressing is not None
    return decision.status.phase, progressing.reason, progressing.message


def test_a_younger_waiter_waits_while_an_older_one_fits_the_same_host() -> None:
    phase, reason, message = my_turn(waiter("early", target="node-c"))
    assert (phase, reason) == (Phase.QUEUED, QueueCause.CONCURRENCY_LIMIT)
    assert message == (
        "Behind early, queued earlier, for the outbound slot of host 'node-a' (0 of 1 outbound migrations in flight)"
    )


def test_a_younger_waiter_waits_for_the_target_slot_an_older_one_takes() -> None:
    phase, _, message = my_turn(waiter("early", source="node-c"), waiter("earlier", source="node-d", age=90))
    assert phase == Phase.QUEUED
    assert message == (
        "Behind earlier, queued earlier, for the inbound slot of host 'node-b' (0 of 1 inbound migrations in flight)"
    )


def test_a_slot_left_for_both_admits_the_younger_one_too() -> None:
    target = host("node-b", inbound=2)
    assert my_turn(waiter("early", source="node-c"), target=target)[0] == Phase.VALIDATING
    assert my_turn(waiter("early", source="node-c"), waiter("other", source="node-d"), target=target)[0] == Phase.QUEUED


def test_an_older_migration_from_the_same_second_goes_by_uid() -> None:
    # creationTimestamp has one-second resolution: ties go to the lower UID, as for duplicates.
    assert my_turn(waiter("tie", age=0))[0] == Phase.VALIDATING  # "uid-1" < "uid-tie"
    assert my_turn(waiter("tie", age=0), uid="uid-z")[0] == Phase.QUEUED


def test_within_one_second_the_order_the_operator_saw_them_created_in_decides() -> None:
    # The watch delivers creations in order; creationTimestamp alone cannot tell them apart.
    assert my_turn(waiter("tie", age=0, arrival=7), arrival=8)[0] == Phase.QUEUED  # "uid-1" < "uid-tie"
    assert my_turn(waiter("tie", age=0, arrival=9), uid="uid-z", arrival=8)[0] == Phase.VALIDATING
    assert my_turn(waiter("older", age=1, arrival=9), arrival=8)[0] == Phase.QUEUED  # the second decides first


def test_younger_waiters_do_not_hold_anything() -> None:
    assert my_turn(waiter("late", age=-5), waiter("later", age=-10, phase=Phase.PENDING))[0] == Phase.VALIDATING


def test_the_slot_in_flight_is_named_when_no_waiter_is_ahead() -> None:
    busy = waiter("busy", target="node-c", phase=Phase.TRANSFERRING, age=300)
    phase, _, message = my_turn(busy, waiter("early", target="node-c"))
    assert phase == Phase.QUEUED
    # The older waiter is blocked on the same slot: it takes nothing, the slot is full by itself.
    assert message == "Host 'node-a' limit: 1 of 1 outbound migrations in flight"


def test_an_older_waiter_in_its_maintenance_window_or_backoff_does_not_hold_the_slot() -> None:
    for held in (
        waiter("window", not_before=later(3600)),
        waiter("backoff", next_attempt=later(30)),
        waiter("cancelling", cancelling=True),
    ):
        assert my_turn(held)[0] == Phase.VALIDATING, held.name
    # Once its window opens, it is first again.
    assert my_turn(waiter("window", not_before=later(-1)))[0] == Phase.QUEUED


def test_an_older_waiter_for_a_missing_host_does_not_hold_the_slot() -> None:
    everyone = (host("node-a", outbound=1), host("node-b", inbound=1))  # node-c does not exist
    assert my_turn(waiter("lost", target="node-c"), hosts=everyone)[0] == Phase.VALIDATING
    assert my_turn(waiter("found", target="node-c"), hosts=(*everyone, host("node-c")))[0] == Phase.QUEUED


def test_an_older_waiter_that_will_fail_as_a_duplicate_does_not_hold_the_slot() -> None:
    running = waiter("running", target="node-c", phase=Phase.TRANSFERRING, age=300, ve_name="ve-x")
    loser = waiter("loser", target="node-d", ve_name="ve-x")  # the same VE: it fails at its next pass
    roomy = host("node-a", outbound=2)  # one slot for `running`, one left
    assert my_turn(running, loser, source=roomy)[0] == Phase.VALIDATING
    assert my_turn(running, waiter("other", target="node-d"), source=roomy)[0] == Phase.QUEUED


def test_an_older_waiter_blocked_on_its_other_host_does_not_block_a_younger_one() -> None:
    """No head-of-line blocking: `early` wants node-a too, but node-c, its target, is full."""
    full = waiter("busy", source="node-x", target="node-c", phase=Phase.TRANSFERRING, age=300)
    early = waiter("early", target="node-c")
    everyone = (host("node-a", outbound=1), host("node-b", inbound=1), host("node-c", inbound=1), host("node-x"))
    assert my_turn(full, early, hosts=everyone)[0] == Phase.VALIDATING
    # Until node-c's limit is read, `early` is assumed able to go: it keeps its place.
    assert my_turn(full, early)[0] == Phase.QUEUED


def test_a_retry_waits_its_turn_too() -> None:
    stored = status_in(Phase.QUEUED, next_attempt_time=later(10))
    assert my_turn(waiter("early"), now=11, stored=stored)[:2] == (Phase.QUEUED, QueueCause.CONCURRENCY_LIMIT)


def test_every_host_is_read_only_when_another_hosts_limit_decides_the_turn() -> None:
    me = waiter("me", age=0)
    own = Limits(hosts={"node-a": SOURCE_1, "node-b": TARGET_1})
    now = later(1)
    # Older waiters wanting only this migration's own hosts: its own hosts decide.
    assert not admission.needs_every_host([waiter("same")], own, now, me)
    # One that also wants node-c, on a contested slot: node-c's limit decides whether it goes first.
    assert admission.needs_every_host([waiter("early", target="node-c")], own, now, me)
    # The same, with room for both on node-a: nothing to read.
    roomy = Limits(hosts={"node-a": host("node-a", outbound=2), "node-b": TARGET_1})
    assert not admission.needs_every_host([waiter("early", target="node-c")], roomy, now, me)
    # Younger waiters and ones not ready never matter.
    assert not admission.needs_every_host([waiter("late", target="node-c", age=-5)], own, now, me)
    assert not admission.needs_every_host([waiter("w", target="node-c", not_before=later(60))], own, now, me)


def test_the_queue_played_out_admits_each_waiter_in_turn() -> None:
    everyone = Limits(hosts={"node-a": SOURCE_1, "node-b": host("node-b", inbound=2), "node-c": host("node-c")})
    first, second, third = waiter("first", age=30), waiter("second", target="node-c", age=20), waiter("third", age=10)
    queue = admission.play([third, first, second], everyone, later(1))
    assert [m.name for m in queue.admitted] == ["first"]
    assert set(queue.blocked) == {second.uid, third.uid}
    assert queue.blocked[second.uid].behind == (first,)


def _fleet_run(seed: int, pairs: bool) -> tuple[list[OtherMigration], list[OtherMigration]]:
    """A fleet in the pure core: 24 migrations from 4 sources (maxOutbound 1) to 2 targets (maxInbound 1, so
    both limits bind), admitted by `play` and finishing in a random order. `pairs`: each source sends to
    one target, as in the benchmark (benchmarks/fleet.py); else any source to any target. Returns the
    migrations in creation order and in the order they started."""
    rng = random.Random(seed)
    hosts = {f"src-{i}": host(f"src-{i}", outbound=1) for i in range(4)}
    hosts |= {f"dst-{i}": host(f"dst-{i}", inbound=1) for i in range(2)}
    limits = Limits(hosts=hosts, complete=True)
    fleet: dict[str, OtherMigration] = {}
    for i in range(24):
        source = i % 4 if pairs else rng.randrange(4)
        target = source % 2 if pairs else rng.randrange(2)
        m = waiter(f"m{i:02d}", f"src-{source}", f"dst-{target}", age=-i, phase=Phase.PENDING)
        fleet[m.uid] = m
    created = list(fleet.values())
    started: list[OtherMigration] = []
    while len(started) < len(fleet):
        for m in admission.play(list(fleet.values()), limits, later(1)).admitted:
            fleet[m.uid] = moved(m, Phase.TRANSFERRING)  # its own pass admits it
            started.append(m)
        done = rng.choice([m for m in fleet.values() if m.phase == Phase.TRANSFERRING.value])
        fleet[done.uid] = moved(done, Phase.SUCCEEDED)
    return created, started


def test_each_source_starts_its_migrations_in_creation_order() -> None:
    for seed in range(20):
        created, started = _fleet_run(seed, pairs=True)
        for source in {m.source_host for m in created}:
            assert [m for m in started if m.source_host == source] == [m for m in created if m.source_host == source]


def test_migrations_between_the_same_two_hosts_start_in_creation_order() -> None:
    """With any source to any target, an older waiter may be overtaken on one host while its other host is
    full (no head-of-line blocking), never by a younger one that wants the very same slots."""
    for seed in range(20):
        created, started = _fleet_run(seed, pairs=False)
        for a, b in {(m.source_host, m.target_host) for m in created}:
            between = [m for m in created if (m.source_host, m.target_host) == (a, b)]
            assert [m for m in started if (m.source_host, m.target_host) == (a, b)] == between
