"""Where a Validating pass spends its wall time: each driver call it makes, timed on its own against
the real lab hosts with the operator's own `LibvirtDriver` (cold: fresh connections, as after an
operator start; warm: the connections a running operator keeps per host)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks import report, stats
from vemigrate.api.migration import MigrationSpec, Mode
from vemigrate.drivers.libvirt import LibvirtDriver
from vemigrate.drivers.protocol import MigrationPlan
from vemigrate_dev.lab import LabInfo


async def _timed(call: Callable[[], Awaitable[Any]]) -> float:
    start = time.perf_counter()
    await call()
    return (time.perf_counter() - start) * 1000


async def _pass(src: LibvirtDriver, dst: LibvirtDriver, vm: str) -> dict[str, float]:
    """The calls of one Validating pass (reconcile._observe), in its order, each timed alone."""
    out: dict[str, float] = {}
    out["find_ve on source (libvirt + qemu-img info over SSH)"] = await _timed(lambda: src.find_ve(vm, for_checks=True))
    out["find_ve on target"] = await _timed(lambda: dst.find_ve(vm, for_checks=True))
    ve = await src.find_ve(vm, for_checks=True)
    spec = MigrationSpec.model_validate({"source": {"host": "lab1", "name": vm}, "target": {"host": "lab2"}})
    plan = MigrationPlan(str(uuid.uuid4()), spec, Mode.LIVE, ve, src.access, dst.access)
    out["job() on source (read the job directory)"] = await _timed(lambda: src.job(plan))
    out["probe() source (libvirt facts + shell facts)"] = await _timed(src.probe)
    out["probe() target"] = await _timed(dst.probe)
    out["reaches(): `ssh target true` run on the source"] = await _timed(lambda: src.reaches(dst.access))
    out["one SSH command round trip (`true`)"] = await _timed(lambda: src.ssh.run(["true"]))
    return out


async def _measure(lab: LabInfo, vm: str, warm_repetitions: int) -> tuple[dict[str, float], dict[str, list[float]]]:
    src, dst = LibvirtDriver(lab.access("lab1", "bench")), LibvirtDriver(lab.access("lab2", "bench"))
    try:
        cold = await _pass(src, dst, vm)
        warm: dict[str, list[float]] = {}
        for _ in range(warm_repetitions):
            for step, ms in (await _pass(src, dst, vm)).items():
                warm.setdefault(step, []).append(ms)
        return cold, warm
    finally:
        await asyncio.gather(src.close(), dst.close())


def steps(lab: LabInfo, vm: str, warm_repetitions: int) -> report.Table:
    cold, warm = asyncio.run(_measure(lab, vm, warm_repetitions))
    table = report.Table(
        "A Validating pass call by call (the operator's LibvirtDriver against lab hosts; wall ms)",
        ["call", "cold (first, new connections)", f"warm (median of {warm_repetitions})"],
    )
    sequential = [k for k in cold if not k.startswith("one SSH")]
    for step in cold:
        table.add(step, report.ms(cold[step]), report.ms(stats.median(warm[step])))
    table.add(
        "sum of the pass's calls, run one after another",
        report.ms(sum(cold[k] for k in sequential)),
        report.ms(sum(stats.median(warm[k]) for k in sequential)),
    )
    return table
