"""`python -m benchmarks [--quick] [--only PART,...]`: run the benchmarks, print the table, write it into
docs/performance.md (between its generated-block markers). `make bench` runs the full set (about
20-30 minutes here), `make bench QUICK=1` one repetition of each on smaller inputs."""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import fleet, harness, live, machine, offline, profile, report, validating
from benchmarks.harness import say
from vemigrate_dev.controlplane_accounts import api_client
from vemigrate_dev.lab import kube as lab_kube

# fleet: the 1,000 dry runs; queue: the queue under per-host limits (both on SIMULATED hosts, no lab).
PARTS = ("live", "sweep", "offline", "fleet", "queue")
DOC = harness.REPO / "docs" / "performance.md"


@dataclass(frozen=True)
class Sizes:
    """How much of everything one run measures."""

    live_pairs: int
    validating_repetitions: int
    dirty_mib: int
    sweep_rates: tuple[int, ...]
    sweep_repetitions: int
    offline_mib: int
    offline_repetitions: int
    shaped_rate: str
    fleet_objects: int
    queue_objects: int
    queue_job_seconds: float


FULL = Sizes(5, 5, 16, (0, 16, 64), 3, 256, 3, "400mbit", 1000, 24, 3.0)
QUICK = Sizes(1, 2, 16, (0, 32), 1, 64, 1, "400mbit", 100, 12, 2.0)


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=harness.REPO)
    return done.stdout.strip() or "unknown"


def run(args: argparse.Namespace) -> int:
    sizes = QUICK if args.quick else FULL
    parts = [p for p in args.only.split(",") if p] if args.only else list(PARTS)
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise SystemExit(f"unknown part(s): {', '.join(sorted(unknown))} (known: {', '.join(PARTS)})")
    started = time.monotonic()
    load_before = machine.loadavg()
    tables: list[report.Table] = []
    logs = Path(tempfile.mkdtemp(prefix="vemigrate-bench-"))
    say(f"logs in {logs}")
    lab_parts = {"live", "sweep", "offline"} & set(parts)
    with contextlib.ExitStack() as stack:
        # The lab first: waiting for it (other test runs hold it) should not keep a control plane idle.
        lab = stack.enter_context(harness.lab(hosts=2)) if lab_parts else None
        plane = stack.enter_context(harness.control_plane())
        api = api_client(plane.kubeconfig)
        stack.callback(api.close)
        # --baseline: the same measurements with the operator of another revision, for before/after.
        tree = harness.source_tree(args.baseline, logs / "baseline") if args.baseline else None
        before = f" — operator at {args.baseline} (before)"

        def attempt(part: str, run_part: Callable[[], list[report.Table]]) -> None:
            """One part; its failure is reported in the table and the other parts still run."""
            try:
                done = run_part()
            except Exception as exc:
                say(f"{part} failed: {exc!r}")
                failed = report.Table(f"{part}: did not complete", ["error"])
                failed.add(f"{type(exc).__name__}: {str(exc)[:500]}")
                done = [failed]
            for table in done:
                print(report.render(table), flush=True)
            tables.extend(done)

        builds = ((before, tree), ("", None)) if tree else (("", None),)
        if "fleet" in parts:
            for label, build in builds:

                def dry_runs(label: str = label, build: Path | None = build) -> list[report.Table]:
                    result = fleet.many_dry_runs(
                        plane, api, logs, sizes.fleet_objects, profile=args.profile, tree=build, label=label
                    )
                    return [result.table, result.requests]

                attempt("fleet" + label, dry_runs)
        if "queue" in parts:
            for label, build in builds:
                attempt(
                    "queue" + label,
                    lambda label=label, build=build: [  # type: ignore[misc]
                        fleet.fairness(plane, api, logs, sizes.queue_objects, sizes.queue_job_seconds, build, label)
                    ],
                )
        if lab is not None:
            namespace = harness.new_namespace(api, "bench")
            lab_kube.apply(lab, namespace, str(plane.kubeconfig))
            migrations = harness.Migrations(plane, namespace)
            stack.callback(migrations.close)
            spy = logs / "operator.py-spy.txt" if args.profile else None
            op = stack.enter_context(harness.operator(plane, namespace, logs / "operator.log", profile=spy))
            if "live" in parts:
                guests = [
                    live.make_guest("lab1", "bench-idle", 0),
                    live.make_guest("lab1", "bench-dirty", sizes.dirty_mib),
                    live.make_guest("lab1", "bench-long", 1, {"bandwidthMiBps": live.LONG_BANDWIDTH_MIB_PS}),
                ]
                try:
                    attempt("validating", lambda: [validating.steps(lab, guests[0].name, sizes.validating_repetitions)])
                    attempt("live", lambda: list(live.versus(lab, migrations, op, guests, sizes.live_pairs)))
                    if tree is not None:
                        base_ns = harness.new_namespace(api, "bench-base")
                        lab_kube.apply(lab, base_ns, str(plane.kubeconfig))
                        base_migrations = harness.Migrations(plane, base_ns)
                        stack.callback(base_migrations.close)
                        base_op = stack.enter_context(
                            harness.operator(plane, base_ns, logs / "operator-baseline.log", tree=tree)
                        )
                        arms = [
                            (f"at {args.baseline} (before)", base_migrations, base_op),
                            ("this tree", migrations, op),
                        ]
                        attempt("before/after", lambda: [live.before_after(lab, arms, guests[0], sizes.live_pairs * 2)])
                finally:
                    for guest in guests:
                        live.remove_guest(guest)
            if "sweep" in parts:
                guests = [live.make_guest("lab1", f"bench-d{rate}", rate) for rate in sizes.sweep_rates]
                try:
                    attempt("sweep", lambda: [live.sweep(lab, guests, sizes.sweep_repetitions)])
                finally:
                    for guest in guests:
                        live.remove_guest(guest)
            if "offline" in parts:
                attempt(
                    "offline",
                    lambda: [
                        offline.compare(
                            lab, migrations, op, sizes.offline_mib, sizes.offline_repetitions, sizes.shaped_rate
                        )
                    ],
                )
    accel = lab.accel if lab is not None else None
    header = [
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC at commit `{_commit()}` by "
        f"`{'make bench QUICK=1' if args.quick else 'make bench'}"
        f"{f' BASELINE={args.baseline}' if args.baseline else ''}` ({', '.join(parts)}; "
        f"{time.monotonic() - started:.0f} s).",
        *machine.describe(accel),
        f"Load average (1/5/15 min) at the start: {load_before}; at the end: {machine.loadavg()} "
        "(other work on this machine shares its 2 cores).",
    ]
    for collapsed in sorted(logs.glob("*.py-spy.txt")) if args.profile else []:
        print(f"\n{collapsed.name}: inclusive / own share of samples, vemigrate frames")
        for h in profile.hot(collapsed.read_text(), top=25, only="vemigrate"):
            print(f"  {h.inclusive:6.1%} {h.own:6.1%}  {h.function}")
    block = report.document(header, tables)
    print()
    print(block)
    if args.write:
        existing = DOC.read_text() if DOC.exists() else ""
        DOC.write_text(report.splice(existing, block))
        say(f"wrote {DOC.relative_to(harness.REPO)}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one repetition of each, smaller inputs")
    parser.add_argument("--only", default="", help=f"comma-separated parts to run (default all: {','.join(PARTS)})")
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also run the fleet and a live migration with the operator of git revision REV (before/after)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="record the operator with py-spy and print its hottest functions"
    )
    parser.add_argument(
        "--write", action=argparse.BooleanOptionalAction, default=True, help="write docs/performance.md"
    )
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
