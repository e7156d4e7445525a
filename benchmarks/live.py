"""Live migration: through the operator against `virsh migrate` run by hand with the very same flags
(the operator's own `live_argv()`), on the same lab guest, in alternating order; and downtime against
the guest's dirty rate with the tuning options (maxDowntimeMs, autoConverge, postCopy).

Each measured migration moves the guest to the other host, so the next one moves it back: no
untimed migration sits between two measured ones, and both directions are measured alike.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from benchmarks import report, stats
from benchmarks.harness import Migrations, Operator, say
from vemigrate.api.host import VEKind
from vemigrate.api.migration import MigrationSpec, Mode
from vemigrate.core.access import HostAccess
from vemigrate.core.observation import VEFacts, VEState
from vemigrate.core.plan import resolve
from vemigrate.drivers.hostjob import JOBS_DIR
from vemigrate.drivers.libvirt import completed_stats, live_argv
from vemigrate.drivers.protocol import MigrationPlan
from vemigrate_dev.lab import Lab, LabInfo, VMState

# Phases after the job: what a client sees once the operator noticed its end.
PAST_JOB = ("Finalizing", "Succeeded", "Failed", "Cancelled", "RollingBack")
_ELAPSED = re.compile(r"Time elapsed:\s+(\d+)\s*ms")
_NS = re.compile(r"^elapsed_ns=(\d+)$", re.MULTILINE)
# bench-long's migration speed: its 256 MiB of memory and its disk take libvirt some 30 s at this rate.
LONG_BANDWIDTH_MIB_PS = 8


@dataclass(frozen=True)
class Guest:
    name: str
    uuid: str
    disk: str  # path inside the hosts (the same on both: --copy-storage-all keeps it)
    dirty_mib: int
    spec: dict[str, Any] = field(default_factory=dict)  # what both paths are given (e.g. bandwidthMiBps)

    @property
    def label(self) -> str:
        held = f", held to {self.spec['bandwidthMiBps']} MiB/s" if "bandwidthMiBps" in self.spec else ""
        return f"{self.name} ({self.dirty_mib} MiB/s dirtied{held})"


@dataclass(frozen=True)
class Run:
    """One measured migration."""

    total_s: float  # what the user waits: `virsh migrate`'s wall time, or create-to-Succeeded
    downtime_ms: float
    libvirt_s: float  # libvirt's own `Time elapsed` of the migration job
    phases: dict[str, float]  # operator runs: seconds spent in each phase


def make_guest(host: str, name: str, dirty_mib: int, spec: dict[str, Any] | None = None) -> Guest:
    for h in ("lab1", "lab2"):
        Lab.remove_vm(h, name)
    vm = Lab.create_vm(host, name, state=VMState.RUNNING, dirty_mib=dirty_mib)
    return Guest(name, vm.uuid, vm.disk, dirty_mib, spec or {})


def remove_guest(guest: Guest) -> None:
    for h in ("lab1", "lab2"):
        Lab.remove_vm(h, guest.name)


def _access(lab: LabInfo, host: str, namespace: str) -> HostAccess:
    h = lab.host(host)
    return HostAccess(name=host, namespace=namespace, address=h.address, migration_address=h.address)


def plan_for(lab: LabInfo, guest: Guest, src: str, dst: str, spec: dict[str, Any]) -> MigrationPlan:
    """The plan the operator would hand its driver for this migration."""
    full = MigrationSpec.model_validate({"source": {"host": src, "name": guest.name}, "target": {"host": dst}, **spec})
    ve = VEFacts(name=guest.name, uuid=guest.uuid, type=VEKind.VM, state=VEState.RUNNING, disk_paths=(guest.disk,))
    uid = str(uuid.uuid4())
    resolved = replace(resolve(uid, full, ve, None, None), mode=Mode.LIVE)
    return MigrationPlan.of(uid, full, resolved, ve, _access(lab, src, "bench"), _access(lab, dst, "bench"))


def _sh(host: str, script: str, *args: str) -> str:
    done = Lab.exec(host, ["sh", "-c", script, "sh", *args], capture=True)
    if done.returncode != 0:
        raise RuntimeError(f"on {host}: {script[:80]}... exited {done.returncode}: {done.stderr.strip()[-400:]}")
    return done.stdout


def _completed(host: str, guest: Guest) -> tuple[float, float]:
    """(downtime ms, libvirt's elapsed s) of the last migration job, kept by the target's libvirtd."""
    text = _sh(host, 'virsh -c qemu:///system domjobinfo --completed "$1"', guest.uuid)
    job = completed_stats(text, "")
    elapsed = _ELAPSED.search(text)
    return float(job.downtime_ms or 0), (int(elapsed.group(1)) / 1000 if elapsed else 0.0)


def _forget_source(host: str, guest: Guest) -> None:
    """What the operator's Finalizing does after a direct run: the shut-off source and its disk go
    (through libvirt, so the host's storage pool knows the disk is gone)."""
    _sh(host, 'virsh -c qemu:///system undefine --remove-all-storage "$1" >/dev/null', guest.uuid)


def direct(lab: LabInfo, guest: Guest, src: str, dst: str, spec: dict[str, Any]) -> Run:
    """`virsh migrate` by hand on the source host, with the operator's own flags; timed on the host."""
    plan = plan_for(lab, guest, src, dst, spec)
    argv = live_argv(plan, copy_disks=True)
    lines = []
    if plan.spec.max_downtime_ms:
        lines.append(f"virsh -c qemu:///system migrate-setmaxdowntime {guest.uuid} {plan.spec.max_downtime_ms}")
    command = " ".join(_quote(a) for a in argv)
    if plan.spec.post_copy:
        # What ForceComplete does with postCopy: switch to post-copy once the first pass is under way.
        switch = f"virsh -c qemu:///system migrate-postcopy {guest.uuid} 2>/dev/null"
        command = f"{command} & pid=$!; sleep 1; {switch}; wait $pid"
    lines.append(f"s=$(date +%s%N); {command} >/dev/null; rc=$?; e=$(date +%s%N)")
    lines.append('echo "elapsed_ns=$((e - s))"; exit $rc')
    out = _sh(src, "\n".join(lines))
    match = _NS.search(out)
    total = int(match.group(1)) / 1e9 if match else 0.0
    downtime, elapsed = _completed(dst, guest)
    _forget_source(src, guest)
    return Run(total, downtime, elapsed, {})


def _quote(word: str) -> str:
    return word if re.fullmatch(r"[A-Za-z0-9_./:=@+-]+", word) else "'" + word.replace("'", "'\\''") + "'"


def _phase_seconds(status: dict[str, Any]) -> dict[str, float]:
    times = [(t["phase"], datetime.fromisoformat(t["time"])) for t in status.get("phaseTransitions", [])]
    return {phase: (later - at).total_seconds() for (phase, at), (_, later) in itertools.pairwise(times)}


def through_operator(
    lab: LabInfo, migrations: Migrations, op: Operator, guest: Guest, src: str, dst: str, spec: dict[str, Any]
) -> Run:
    """The same migration as a VirtualEnvironmentMigration: from the create call until this client
    sees Succeeded (polling every 50 ms)."""
    name = f"{guest.name}-{uuid.uuid4().hex[:6]}"
    full = {"source": {"host": src, "name": guest.name}, "target": {"host": dst}, "mode": "Live", **spec}
    wall, start = time.time(), time.monotonic()
    uid = migrations.create(name, full)
    job = lab.host(src).path(f"{JOBS_DIR}/{uid}/1")  # attempt 1
    seen_job: dict[str, float] = {}

    def watch_job(body: dict[str, Any]) -> None:
        """The job's own record on the source, read before the operator forgets it: libvirt's
        elapsed time from its stats, the job's wall time (its pid file to its exit file) and its end;
        and when this client first sees the migration past its job (Finalizing or later)."""
        if (body.get("status") or {}).get("phase") in PAST_JOB and "past" not in seen_job:
            seen_job["past"] = time.time()
        if "job" in seen_job:
            return
        with contextlib.suppress(OSError):
            text = (job / "stats").read_text()
            ended = (job / "exit").stat().st_mtime
            match = _ELAPSED.search(text)
            seen_job["libvirt"] = int(match.group(1)) / 1000 if match else 0.0
            seen_job["job"] = ended - (job / "pid").stat().st_mtime
            seen_job["ended"] = ended

    body, seen = migrations.wait_final(name, alive=op.alive, tick=watch_job)
    status = body["status"]
    if status["phase"] != "Succeeded":
        raise RuntimeError(f"operator migration {name} ended {status['phase']}: {status.get('failure')}")
    migrations.delete(name)
    elapsed = seen_job.get("libvirt", 0.0)
    phases = _phase_seconds(status)
    phases["job"] = seen_job.get("job", 0.0)
    if "ended" in seen_job and "past" in seen_job:
        # The exit file's mtime (the lab host shares this machine's clock) to this client's first read
        # of a phase past the job: what a watching user waits for the operator to notice the end.
        phases["noticed"] = seen_job["past"] - seen_job["ended"]
    validating = status["phaseTransitions"][0]
    phases["Pending"] = datetime.fromisoformat(validating["time"]).timestamp() - wall
    return Run(seen - start, float(status.get("downtimeMs") or 0), elapsed, phases)


def _noticed(runs: list[Run]) -> str:
    """Median seconds from the job's exit file to a client's first read of a later phase, and of how
    many runs (the client may miss the short-lived file)."""
    found = [r.phases["noticed"] for r in runs if "noticed" in r.phases]
    return f"{stats.median(found):.2f} ({len(found)} of {len(runs)})" if found else "n/a"


def versus(
    lab: LabInfo, migrations: Migrations, op: Operator, guests: list[Guest], repetitions: int
) -> tuple[report.Table, report.Table]:
    """Operator vs direct on each guest, alternating which goes first; ratios of paired runs."""
    table = report.Table(
        "Live migration: operator vs `virsh migrate` with the same flags",
        [
            "guest",
            "pairs",
            "direct total (median)",
            "operator total (median)",
            "total ratio (median of pairs)",
            "libvirt job ratio",
            "direct downtime",
            "operator downtime",
            "downtime ratio",
        ],
    )
    phases = report.Table(
        "Where the operator's time goes (medians, seconds)",
        [
            "guest",
            "create→Validating",
            "Validating",
            "Transferring+Switchover",
            "of which the job on the source",
            "of which libvirt's migration",
            "job end → phase change seen",
            "Finalizing",
            "direct: libvirt's migration",
        ],
    )
    for guest in guests:
        where = "lab1"
        runs: dict[str, list[Run]] = {"direct": [], "operator": []}
        for first, second in stats.alternating(repetitions, "direct", "operator"):
            for who in (first, second):
                other = "lab2" if where == "lab1" else "lab1"
                say(f"live {guest.name}: {who} {where} -> {other}")
                if who == "direct":
                    run = direct(lab, guest, where, other, guest.spec)
                else:
                    run = through_operator(lab, migrations, op, guest, where, other, guest.spec)
                runs[who].append(run)
                where = other
        d, o = runs["direct"], runs["operator"]
        total = stats.paired_ratios([r.total_s for r in o], [r.total_s for r in d])
        job = stats.paired_ratios([r.libvirt_s for r in o], [r.libvirt_s for r in d])
        down_d = stats.median([r.downtime_ms for r in d])
        down_o = stats.median([r.downtime_ms for r in o])
        table.add(
            guest.label,
            len(d),
            report.seconds(stats.median([r.total_s for r in d])),
            report.seconds(stats.median([r.total_s for r in o])),
            report.ratio(stats.median(total)),
            report.ratio(stats.median(job)) if job else "n/a",
            report.ms(down_d),
            report.ms(down_o),
            report.ratio(stats.median(stats.paired_ratios([r.downtime_ms for r in o], [r.downtime_ms for r in d])))
            if all(r.downtime_ms > 0 for r in d)
            else "n/a",
        )
        phases.add(
            guest.name,
            *(f"{stats.median([r.phases.get(p, 0.0) for r in o]):.2f}" for p in ("Pending", "Validating")),
            f"{stats.median([r.phases.get('Transferring', 0.0) + r.phases.get('Switchover', 0.0) for r in o]):.2f}",
            f"{stats.median([r.phases.get('job', 0.0) for r in o]):.2f}",
            f"{stats.median([r.libvirt_s for r in o]):.2f}",
            _noticed(o),
            f"{stats.median([r.phases.get('Finalizing', 0.0) for r in o]):.2f}",
            f"{stats.median([r.libvirt_s for r in d]):.2f}",
        )
    table.notes += [
        "total: direct = wall time of `virsh migrate` on the source host; operator = from the create call "
        "until a client polling every 50 ms sees `Succeeded` (pre-flight checks, job start, switchover, "
        "source removal included).",
        "libvirt job: libvirt's own `Time elapsed` of the migration (`virsh domjobinfo --completed` on "
        "the target), the part both paths share.",
        "downtime: `domjobinfo --completed` on the target for the direct run, `status.downtimeMs` (the "
        "same libvirt figure, read by the operator's job) for the operator run.",
        "A guest held to N MiB/s: spec.bandwidthMiBps for the operator, `virsh migrate --bandwidth N` (the "
        "same `live_argv()`) by hand, so that libvirt's own migration takes tens of seconds: the operator's "
        "fixed cost (Validating, the job's start, noticing its end, Finalizing) against a long migration.",
    ]
    phases.notes += [
        "From `status.phaseTransitions`; create→Validating is the time in Pending (the operator's reaction).",
        "The job on the source: its script's wall time (`pid` to `exit` file): the target's disks created, "
        "`virsh migrate` (libvirtd's connection to the target a session on the migration's shared SSH "
        "connection, which Validating's `SSHPort` check made), then one session on the target for the "
        "downtime (`virsh domjobinfo --completed`), the copies found there and the removal of its ownership "
        "record. libvirt's migration: its own `Time elapsed`. The rest of Transferring is the job's start "
        "(one SSH command on the source) and the pass its end wakes (a long poll on the job's lock).",
    ]
    return table, phases


TUNINGS: list[tuple[str, dict[str, Any]]] = [
    ("defaults", {}),
    ("maxDowntimeMs: 50", {"maxDowntimeMs": 50}),
    ("maxDowntimeMs: 1000", {"maxDowntimeMs": 1000}),
    ("autoConverge", {"autoConverge": True}),
    ("postCopy (switched after 1 s)", {"postCopy": True}),
]


def sweep(lab: LabInfo, guests: list[Guest], repetitions: int, log: Callable[[str], None] = say) -> report.Table:
    """Downtime and total time against the dirty rate, for each tuning option; `virsh migrate` with the
    operator's flags for that spec, so only the option differs between rows."""
    table = report.Table(
        "Downtime vs dirty rate and tuning (direct `virsh migrate` with the operator's flags; medians)",
        ["tuning", *(f"{g.dirty_mib} MiB/s: downtime / total" for g in guests)],
    )
    where = {g.name: "lab1" for g in guests}
    for label, spec in TUNINGS:
        cells = []
        for guest in guests:
            runs = []
            for _ in range(repetitions):
                src = where[guest.name]
                dst = "lab2" if src == "lab1" else "lab1"
                log(f"sweep {guest.name} {label}: {src} -> {dst}")
                runs.append(direct(lab, guest, src, dst, spec))
                where[guest.name] = dst
            cells.append(
                f"{report.ms(stats.median([r.downtime_ms for r in runs]))} / "
                f"{report.seconds(stats.median([r.total_s for r in runs]))}"
            )
        table.add(label, *cells)
    table.notes.append(
        "Memory is dirtied by the guest's own loop (`vemigrate.dirty_mib`: N MiB of a 32 MiB working set "
        "rewritten each second, as fast as the emulated CPU manages). All runs: `--live --p2p "
        "--persistent --tls --copy-storage-all --compressed` plus the option."
    )
    return table


def before_after(
    lab: LabInfo, arms: list[tuple[str, Migrations, Operator]], guest: Guest, repetitions: int
) -> report.Table:
    """The same live migration through two operator builds (a baseline revision and this tree), each
    watching a namespace of its own, in alternating order: what the changes to the operator gained."""
    table = report.Table(
        f"Operator before/after on {guest.name} (medians of {repetitions}, seconds)",
        [
            "operator",
            "create→Validating",
            "Validating",
            "Transferring+Switchover",
            "job end → phase change seen",
            "Finalizing",
            "create→Succeeded",
        ],
    )
    runs: dict[str, list[Run]] = {label: [] for label, _, _ in arms}
    where = "lab1"
    for i in range(repetitions):
        for label, migrations, op in arms if i % 2 == 0 else list(reversed(arms)):
            other = "lab2" if where == "lab1" else "lab1"
            # An operator without the storage-pool refresh (before it was added) leaves the pool listing
            # the disk it removed, and the move back would fail: refreshed here so both arms can run.
            _sh(other, "virsh -c qemu:///system pool-refresh default >/dev/null")
            say(f"before/after {guest.name}: {label} {where} -> {other}")
            runs[label].append(through_operator(lab, migrations, op, guest, where, other, {}))
            where = other
    for label, found in runs.items():
        table.add(
            label,
            *(f"{stats.median([r.phases.get(p, 0.0) for r in found]):.2f}" for p in ("Pending", "Validating")),
            f"{stats.median([r.phases.get('Transferring', 0.0) + r.phases.get('Switchover', 0.0) for r in found]):.2f}",
            _noticed(found),
            f"{stats.median([r.phases.get('Finalizing', 0.0) for r in found]):.2f}",
            f"{stats.median([r.total_s for r in found]):.2f}",
        )
    return table
