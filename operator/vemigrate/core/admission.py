"""Admission to the concurrency slots: first come, first served per slot.

A migration in flight (Validating to RollingBack) holds one slot of each limit it counts against: its
source host's maxOutbound, its target host's maxInbound and the cluster-wide --max-parallel. Waiting
migrations (Pending, Queued) of a namespace take slots in the order they were created (creationTimestamp;
within one second, the order the operator saw them created in; then UID): the queue is played out oldest
first, and each waiter that is ready takes all of its slots if every one has room, else none. A migration
is admitted when its turn comes and its slots have room.

So a slot that frees goes to the oldest waiter that can use it now. A waiter that cannot holds nothing,
so it does not block younger ones (no head-of-line blocking):
- one whose other host (or the cluster) is full: a younger waiter whose slots all have room goes
  before it; the older one goes as soon as all of its own slots have room at once, ahead of every
  younger waiter of those slots (it can be overtaken for as long as that does not happen);
- one not ready: waiting for its maintenance window (spec.notBefore) or its retry backoff, for a
  HypervisorHost that does not exist, being cancelled or deleted, or about to fail as a duplicate.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from vemigrate.api.migration import MigrationSpec, Phase
from vemigrate.core.observation import HostObservation, Observation, OtherMigration

# Other migrations' phases arrive as plain strings (from the kopf index).
ACTIVE = frozenset(
    p.value for p in (Phase.VALIDATING, Phase.TRANSFERRING, Phase.SWITCHOVER, Phase.FINALIZING, Phase.ROLLING_BACK)
)
WAITING = frozenset({Phase.PENDING.value, Phase.QUEUED.value})
FINAL = frozenset(p.value for p in Phase if p.final)


class SlotKind(StrEnum):
    CLUSTER = "cluster"
    OUTBOUND = "outbound"
    INBOUND = "inbound"


@dataclass(frozen=True)
class Slot:
    """One limit a migration counts against."""

    kind: SlotKind
    host: str = ""  # "" for the cluster-wide limit

    def describe(self) -> str:
        return "a cluster-wide slot" if self.kind == SlotKind.CLUSTER else f"the {self.kind} slot of host {self.host!r}"


@dataclass(frozen=True)
class Limits:
    """The limits known this pass. A host not in `hosts` has no known limit (it counts as room) and
    exists, unless `complete` says `hosts` is every HypervisorHost of the namespace."""

    cluster: int = 0  # 0: no cluster-wide limit
    hosts: Mapping[str, HostObservation] = field(default_factory=dict)
    complete: bool = False

    def of(self, slot: Slot) -> int:
        """The slot's limit; 0: none known."""
        if slot.kind == SlotKind.CLUSTER:
            return self.cluster
        host = self.hosts.get(slot.host)
        if host is None or not host.exists:
            return 0
        return host.max_outbound if slot.kind == SlotKind.OUTBOUND else host.max_inbound

    def exists(self, name: str) -> bool:
        host = self.hosts.get(name)
        return host.exists if host is not None else not self.complete


@dataclass(frozen=True)
class Blocked:
    """Why a waiter does not take its slots now: the first of them without room."""

    slot: Slot
    in_flight: int  # migrations holding the slot now
    limit: int
    behind: tuple[OtherMigration, ...]  # older waiters that take its remaining room first, oldest first

    @property
    def message(self) -> str:
        what = "migrations" if self.slot.kind == SlotKind.CLUSTER else f"{self.slot.kind} migrations"
        counts = f"{self.in_flight} of {self.limit} {what} in flight"
        if self.behind:
            first = self.behind[0]
            more = f" and {len(self.behind) - 1} more" if len(self.behind) > 1 else ""
            return f"Behind {first.name or first.uid}{more}, queued earlier, for {self.slot.describe()} ({counts})"
        if self.slot.kind == SlotKind.CLUSTER:
            return f"Cluster limit: {counts}"
        return f"Host {self.slot.host!r} limit: {counts}"


@dataclass(frozen=True)
class Queue:
    """The queue played out: who takes their slots now, and why each other ready waiter does not."""

    admitted: tuple[OtherMigration, ...]
    blocked: Mapping[str, Blocked]


def slots(m: OtherMigration, cluster_limit: int) -> tuple[Slot, ...]:
    own = (Slot(SlotKind.OUTBOUND, m.source_host), Slot(SlotKind.INBOUND, m.target_host))
    return (Slot(SlotKind.CLUSTER), *own) if cluster_limit else own


def _order(m: OtherMigration) -> tuple[datetime, int, str]:
    """Oldest first; within one second of creationTimestamp in the order the operator saw them created."""
    return (m.created, m.arrival, m.uid)


def _duplicate_losers(migrations: Iterable[OtherMigration]) -> set[str]:
    """Waiters that will fail as duplicates (machine._duplicate): of the unfinished migrations of one VE,
    the one in flight goes, else the oldest; the others never start."""
    by_ve: dict[tuple[str, str], list[OtherMigration]] = {}
    for m in migrations:
        if m.phase not in FINAL:
            by_ve.setdefault((m.source_host, m.ve_name), []).append(m)
    losers: set[str] = set()
    for same in by_ve.values():
        if len(same) > 1:
            oldest = min(same, key=lambda m: (m.created, m.uid))  # as machine._duplicate decides
            winner = next((m for m in same if m.phase in ACTIVE), None) or oldest
            losers.update(m.uid for m in same if m is not winner)
    return losers


def ready(m: OtherMigration, limits: Limits, now: datetime) -> bool:
    """Whether a waiter would ask for its slots now, i.e. nothing but the slots holds it back (its
    duplicate check aside, done once for all in `play`)."""
    return (
        m.phase in WAITING
        and not m.cancelling
        and (m.not_before is None or m.not_before <= now)
        and (m.next_attempt is None or m.next_attempt <= now)
        and limits.exists(m.source_host)
        and limits.exists(m.target_host)
    )


def _in_flight(migrations: Iterable[OtherMigration], cluster_limit: int) -> Counter[Slot]:
    used: Counter[Slot] = Counter()
    for m in migrations:
        if m.phase in ACTIVE:
            used.update(slots(m, cluster_limit))
    return used


def _ready_waiters(
    others: Sequence[OtherMigration], limits: Limits, now: datetime, me: OtherMigration | None
) -> list[OtherMigration]:
    """Ready waiters oldest first, up to and including `me` (treated as ready: its caller checked)."""
    everyone = [*others, me] if me is not None else list(others)
    losers = _duplicate_losers(everyone)
    waiters = [m for m in others if m.uid not in losers and ready(m, limits, now)]
    if me is not None:
        waiters = [m for m in waiters if _order(m) < _order(me)] + [me]
    return sorted(waiters, key=_order)


def play(others: Sequence[OtherMigration], limits: Limits, now: datetime, me: OtherMigration | None = None) -> Queue:
    """The queue played out oldest first over `others` (and `me`, a waiter whose own pass asks; only
    those older than it matter to it)."""
    used = _in_flight(others, limits.cluster)
    taken_by: dict[Slot, list[OtherMigration]] = {}
    admitted: list[OtherMigration] = []
    blocked: dict[str, Blocked] = {}
    for waiter in _ready_waiters(others, limits, now, me):
        wanted = slots(waiter, limits.cluster)
        full = next((s for s in wanted if limits.of(s) and used[s] >= limits.of(s)), None)
        if full is None:
            used.update(wanted)
            for s in wanted:
                taken_by.setdefault(s, []).append(waiter)
            admitted.append(waiter)
        else:
            behind = tuple(taken_by.get(full, ()))
            blocked[waiter.uid] = Blocked(full, used[full] - len(behind), limits.of(full), behind)
    return Queue(tuple(admitted), blocked)


def candidate(spec: MigrationSpec, obs: Observation, now: datetime) -> OtherMigration:
    """The migration whose pass this is, as a waiter in the queue."""
    return OtherMigration(
        uid=obs.uid,
        created=obs.created or now,
        arrival=obs.arrival,
        phase=Phase.PENDING.value,
        source_host=spec.source.host,
        target_host=spec.target.host,
        ve_name=spec.source.name,
    )


def limits_of(obs: Observation) -> Limits:
    """What this pass knows of the limits: its own two hosts, and every host when it read them."""
    known = {h.name: h for h in obs.hosts or ()}
    known.update({h.name: h for h in (obs.source, obs.target) if h is not None})
    return Limits(cluster=obs.cluster_limit, hosts=known, complete=obs.hosts is not None)


def needs_every_host(others: Sequence[OtherMigration], limits: Limits, now: datetime, me: OtherMigration) -> bool:
    """Whether `me`'s turn depends on hosts it did not read: a slot of its own that the migrations in
    flight and the older ready waiters could fill, wanted by an older waiter that also wants a slot of
    another host (whether that waiter can go depends on that host's limit). Otherwise its own two hosts
    decide, and nothing more is read."""
    mine = set(slots(me, limits.cluster))
    used = _in_flight(others, limits.cluster)
    older = _ready_waiters(others, limits, now, me)[:-1]
    for waiter in older:
        used.update(s for s in slots(waiter, limits.cluster) if s in mine)
    contested = {s for s in mine if limits.of(s) and used[s] >= limits.of(s)}
    return any(contested & set(slots(w, limits.cluster)) and not set(slots(w, limits.cluster)) <= mine for w in older)
