"""SIMULATION, for the control-plane benchmark: `vemigrate run` whose hosts are simulated by
vemigrate.drivers.simulated (`SimulatedWorld`), so 1,000 migration objects can be reconciled on a
2-core machine that could not run 1,000 guests.

Everything above the driver is the product, unchanged: `python -m benchmarks.simulated run ...` is
`vemigrate run` (kopf, the handlers, reconcile, the phase machine, the pre-flight checks, status
writes and Events against the real kube-apiserver) with the driver registry pointed at the simulation.
What is simulated is only what a driver would read from or do on a host:
- hosts named `sim-src-*` hold every VE they are asked about (a running 256 MiB VM) until it moves;
  other hosts hold none. Every host reports the same healthy facts.
- a migration job takes `VEMIGRATE_SIM_JOB_SECONDS` (default 3 s) from its start, then completes
  with a 50 ms downtime; the VE then runs on the target, and disposing of the source removes it there.
No network traffic, no SSH, no libvirt.
"""

from __future__ import annotations

import os
import sys

from vemigrate.drivers.simulated import SimulatedWorld

SOURCE_PREFIX = "sim-src-"


def world() -> SimulatedWorld:
    return SimulatedWorld(
        job_seconds=float(os.environ.get("VEMIGRATE_SIM_JOB_SECONDS", "3")),
        holds_any=lambda host: host.startswith(SOURCE_PREFIX),
    )


def main() -> int:
    """`vemigrate run` with every host simulated (the registry's factory replaced before it starts)."""
    from vemigrate import cli
    from vemigrate.drivers import registry

    registry.driver_for = world().driver
    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
