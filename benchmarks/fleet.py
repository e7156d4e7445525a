"""The control plane at fleet scale: many migration objects on the real kube-apiserver, reconciled by
the real operator process whose hosts are SIMULATED (`SimulatedHost`, vemigrate/drivers/simulated.py), since
this machine cannot run a fleet of guests. What is measured is the operator and the API server: the
time from create to `Validating`, the operator's CPU seconds and peak memory (/proc), API requests per
migration (the apiserver's own `apiserver_request_total`), and the queue under per-host limits."""

from __future__ import annotations

import base64
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from kubernetes import client

from benchmarks import report, stats
from benchmarks.harness import FINAL, Migrations, Operator, apiserver_requests, new_namespace, request_delta, say
from vemigrate.api.common import GROUP, VERSION, SecretKeyRef
from vemigrate.api.host import (
    KNOWN_HOSTS_KEY,
    PRIVATE_KEY_KEY,
    SECRET_MARK_LABEL,
    SECRET_MARK_VALUE,
    Driver,
    HostSpec,
    HypervisorHost,
)
from vemigrate.api.host import PLURAL as HOST_PLURAL
from vemigrate_dev.controlplane import ControlPlaneInfo

KEY_SECRET = "sim-ssh-key"  # noqa: S105 (a Secret's name)
KNOWN_HOSTS_SECRET = "sim-known-hosts"  # noqa: S105 (a Secret's name)


def _hosts(api: Any, namespace: str, sources: int, targets: int, max_out: int, max_in: int) -> None:
    """Secrets and HypervisorHosts for the simulated hosts (their addresses are never dialled)."""
    core = client.CoreV1Api(api)
    placeholder = base64.b64encode(b"simulated host: never used to connect\n").decode()
    for name, key in ((KEY_SECRET, PRIVATE_KEY_KEY), (KNOWN_HOSTS_SECRET, KNOWN_HOSTS_KEY)):
        core.create_namespaced_secret(
            namespace,
            client.V1Secret(
                metadata=client.V1ObjectMeta(name=name, labels={SECRET_MARK_LABEL: SECRET_MARK_VALUE}),
                data={key: placeholder},
            ),
        )
    custom = client.CustomObjectsApi(api)
    names = [f"sim-src-{i}" for i in range(sources)] + [f"sim-dst-{i}" for i in range(targets)]
    for i, name in enumerate(names):
        spec = HostSpec(
            address=f"127.0.{i // 250}.{i % 250 + 2}",
            driver=Driver.LIBVIRT,
            credentials_secret_ref=SecretKeyRef(name=KEY_SECRET, key=PRIVATE_KEY_KEY),
            known_hosts_secret_ref=SecretKeyRef(name=KNOWN_HOSTS_SECRET, key=KNOWN_HOSTS_KEY),
            max_inbound=max_in,
            max_outbound=max_out,
        )
        body = HypervisorHost(metadata={"name": name, "namespace": namespace}, spec=spec).to_wire()
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, HOST_PLURAL, body)


def _wait_all_final(
    migrations: Migrations, count: int, op: Operator, timeout: float
) -> tuple[list[dict[str, Any]], int]:
    """Every object once all are final, and how many list requests that took."""
    deadline = time.monotonic() + timeout
    lists = 0
    while time.monotonic() < deadline:
        items = migrations.all()
        lists += 1
        if len(items) >= count and all((i.get("status") or {}).get("phase") in FINAL for i in items):
            return items, lists
        if not op.alive():
            raise RuntimeError("the operator died")
        time.sleep(2)
    raise RuntimeError(f"not all {count} migrations finished within {timeout:.0f} s")


def _entered(status: dict[str, Any], phase: str) -> float | None:
    for t in status.get("phaseTransitions", []):
        if t["phase"] == phase:
            return datetime.fromisoformat(t["time"]).timestamp()
    return None


@dataclass
class FleetResult:
    table: report.Table
    requests: report.Table


def many_dry_runs(
    plane: ControlPlaneInfo,
    api: Any,
    log_dir: Path,
    count: int,
    profile: bool = False,
    tree: Path | None = None,
    label: str = "",
) -> FleetResult:
    """`count` dry-run migrations created back to back on 20 simulated host pairs (limits high enough
    that none queues): the operator's reaction time and cost per object."""
    namespace = new_namespace(api, "bench-fleet")
    pairs = 20
    _hosts(api, namespace, pairs, pairs, 64, 64)
    migrations = Migrations(plane, namespace)
    module = "benchmarks.simulated"
    spy = log_dir / f"operator-fleet{label}.py-spy.txt" if profile else None
    log = log_dir / f"operator-fleet{label}.log"
    op = Operator(plane.kubeconfig, log, namespace, module=module, profile=spy, tree=tree)
    op.start()
    try:
        time.sleep(5)  # the host probes at start-up are not part of the per-migration cost
        cpu0, req0 = op.cpu_seconds(), apiserver_requests(plane)
        created: dict[str, float] = {}
        t0 = time.monotonic()
        for i in range(count):
            name = f"dry-{i:04d}"
            spec = {
                "source": {"host": f"sim-src-{i % pairs}", "name": f"vm-{i:04d}"},
                "target": {"host": f"sim-dst-{i % pairs}"},
                "dryRun": True,
            }
            created[name] = time.time()
            migrations.create(name, spec)
        create_seconds = time.monotonic() - t0
        say(f"fleet: {count} dry runs created in {create_seconds:.1f} s; waiting for all to finish")
        items, lists = _wait_all_final(migrations, count, op, timeout=max(600, count * 2))
        done = time.monotonic() - t0
        time.sleep(3)  # let the last status writes and Events land before counting
        cpu1, req1, peak = op.cpu_seconds(), apiserver_requests(plane), op.peak_rss_bytes()
    finally:
        op.stop()
        migrations.close()
    to_validating: list[float] = []
    to_final: list[float] = []
    outcomes: dict[str, int] = defaultdict(int)
    for item in items:
        status = item.get("status") or {}
        name = item["metadata"]["name"]
        outcomes[status.get("phase", "?")] += 1
        entered = _entered(status, "Validating")
        final = _entered(status, status.get("phase", ""))
        if entered is not None:
            to_validating.append(entered - created[name])
        if final is not None:
            to_final.append(final - created[name])
    delta = request_delta(req0, req1)
    ours = {("POST", "virtualenvironmentmigrations"): float(count), ("LIST", "virtualenvironmentmigrations"): lists}
    operator_requests = {k: v - ours.get(k, 0.0) for k, v in delta.items() if k[1] and v - ours.get(k, 0.0) > 0}
    total_requests = sum(operator_requests.values())
    v, f = stats.Summary.of(to_validating), stats.Summary.of(to_final)
    table = report.Table(
        f"Control plane: {count} dry-run migrations on the real API server (hosts SIMULATED){label}",
        ["figure", "value"],
    )
    table.add("objects created (back to back, one client)", f"{count} in {create_seconds:.1f} s")
    table.add("outcome", ", ".join(f"{n} {p}" for p, n in sorted(outcomes.items())))
    table.add("create → Validating: median / p99 / max", f"{v.median:.2f} s / {v.p99:.2f} s / {v.high:.2f} s")
    table.add("create → final (DryRun Succeeded): median / p99", f"{f.median:.2f} s / {f.p99:.2f} s")
    table.add("all final after the first create", report.seconds(done))
    table.add(
        "operator CPU (user+system) for the run",
        f"{cpu1 - cpu0:.1f} s ({(cpu1 - cpu0) / count * 1000:.0f} ms per migration)",
    )
    table.add("operator peak memory (VmHWM)", f"{peak / 2**20:.0f} MiB")
    table.add("API requests by the operator per migration", f"{total_requests / count:.1f}")
    table.notes += [
        "SIMULATED hosts: `SimulatedHost` (vemigrate/drivers/simulated.py, run by benchmarks/simulated.py) answers "
        "every driver call from memory at once; kopf, the handlers, reconcile, the pre-flight checks, status "
        "writes and Events are the product's, against the real kube-apiserver and etcd of this machine.",
        "create → Validating: the `Validating` entry of `status.phaseTransitions` (operator's clock) minus the "
        "time just before this client's create call (same machine clock).",
        "API requests: the apiserver's `apiserver_request_total` before and after, minus this client's own "
        "creates and lists; kopf's watch, annotation and finalizer patches, status patches, Events and the "
        "host and Secret reads of every pass included.",
    ]
    requests = report.Table(
        f"API requests per dry-run migration, by verb and resource (top 8){label}",
        ["verb", "resource", "per migration"],
    )
    for (verb, resource), n in sorted(operator_requests.items(), key=lambda kv: -kv[1])[:8]:
        requests.add(verb, resource, f"{n / count:.2f}")
    return FleetResult(table, requests)


def fairness(
    plane: ControlPlaneInfo,
    api: Any,
    log_dir: Path,
    count: int,
    job_seconds: float,
    tree: Path | None = None,
    label: str = "",
) -> report.Table:
    """`count` real (simulated-host) migrations from 4 sources to 2 targets with maxOutbound 1 and
    maxInbound 2, created round-robin: who starts when, and in what order."""
    namespace = new_namespace(api, "bench-queue")
    sources, targets = 4, 2
    _hosts(api, namespace, sources, targets, 1, 2)
    migrations = Migrations(plane, namespace)
    op = Operator(
        plane.kubeconfig,
        log_dir / f"operator-queue{label}.log",
        namespace,
        module="benchmarks.simulated",
        env={"VEMIGRATE_SIM_JOB_SECONDS": str(job_seconds)},
        tree=tree,
    )
    op.start()
    created: dict[str, tuple[int, float, int]] = {}
    try:
        time.sleep(3)
        for i in range(count):
            name = f"q-{i:03d}"
            created[name] = (i, time.time(), i % sources)
            spec = {
                "source": {"host": f"sim-src-{i % sources}", "name": f"vm-{i:03d}"},
                "target": {"host": f"sim-dst-{i % targets}"},
            }
            migrations.create(name, spec)
        items, _ = _wait_all_final(migrations, count, op, timeout=max(600, count * job_seconds * 3))
    finally:
        op.stop()
        migrations.close()
    started: list[tuple[float, int, int]] = []  # (start, creation index, source)
    waits: dict[int, list[float]] = defaultdict(list)
    ends: list[float] = []
    first = min(t for _, t, _ in created.values())
    for item in items:
        index, at, source = created[item["metadata"]["name"]]
        status = item.get("status") or {}
        begin = _entered(status, "Validating")
        end = _entered(status, "Succeeded")
        if begin is None or end is None:
            continue
        started.append((begin, index, source))
        waits[source].append(begin - at)
        ends.append(end - first)
    order = [index for _, index, _ in sorted(started)]
    per_host_fifo = [
        stats.fifo_fraction([index for _, index, s in sorted(started) if s == source]) for source in range(sources)
    ]
    all_waits = [w for ws in waits.values() for w in ws]
    summary = stats.Summary.of(all_waits)
    slots = min(sources * 1, targets * 2)
    ideal = -(-count // slots) * job_seconds
    table = report.Table(
        f"Queue under per-host limits: {count} migrations, 4 sources (maxOutbound 1) → 2 targets (maxInbound 2), "
        f"jobs of {job_seconds:g} s (hosts SIMULATED){label}",
        ["figure", "value"],
    )
    table.add("finished", f"{len(started)} of {count} Succeeded")
    table.add(
        "makespan (first create → last Succeeded)", f"{max(ends):.1f} s (ideal with {slots} slots: {ideal:.0f} s)"
    )
    table.add(
        "wait create → Validating: median / p90 / max",
        f"{summary.median:.1f} s / {summary.p90:.1f} s / {summary.high:.1f} s",
    )
    table.add(
        "median wait per source host",
        ", ".join(f"src-{s}: {stats.median(waits[s]):.1f} s" for s in sorted(waits)),
    )
    table.add(
        "Jain index of the per-host median waits (1 = even)",
        f"{stats.jain([stats.median(waits[s]) for s in sorted(waits)]):.3f}",
    )
    table.add(
        "pairs started in creation order: all / within each source",
        f"{stats.fifo_fraction(order):.0%} / " + ", ".join(f"{f:.0%}" for f in per_host_fifo),
    )
    table.add("start order (creation indices)", " ".join(str(i) for i in order))
    table.notes.append(
        "Admission is first come, first served per slot (core/admission.py), and a migration that ends wakes "
        "the queued migrations whose turn it is at once. Creation order here is this client's; the operator "
        "orders migrations created within one second (creationTimestamp's resolution) by the order its watch "
        "saw them created. Each source sends to one target, so 'within each source' is the strict order."
    )
    return table
