"""The fault-injection suite: real control plane, real lab hosts, the operator as a process. Each
scenario runs VEMIGRATE_FAULT_RUNS times (1 by default, as CI runs it; `make faults` runs it more),
and every run's outcome, checked from outside the operator, becomes a row of the table printed at the
end of the session (and written to VEMIGRATE_FAULT_TABLE as Markdown when that is set)."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import pytest

from tests.faults.invariants import Outcome, table
from tests.lab.conftest import hosts, no_guest_outlives_its_test, vm_cleanup  # noqa: F401 - the lab tier's fixtures, shared

RUNS = max(1, int(os.environ.get("VEMIGRATE_FAULT_RUNS", "1")))
_OUTCOMES = pytest.StashKey[list[Outcome]]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_OUTCOMES] = []


@pytest.fixture
def record(request: pytest.FixtureRequest) -> list[Outcome]:
    """Where a scenario puts its outcome, before it asserts on it."""
    return request.config.stash[_OUTCOMES]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    outcomes = config.stash.get(_OUTCOMES, [])
    if not outcomes:
        return
    by_scenario: dict[str, list[Outcome]] = defaultdict(list)
    for outcome in outcomes:
        by_scenario[outcome.scenario].append(outcome)
    text = table(by_scenario)
    terminalreporter.write_sep("=", "fault injection: invariants checked from outside the operator")
    terminalreporter.write_line(text)
    target = os.environ.get("VEMIGRATE_FAULT_TABLE")
    if target:
        _write(Path(target), text, runs=RUNS)


BEGIN, END = "<!-- faults:begin -->", "<!-- faults:end -->"


def _write(path: Path, text: str, *, runs: int) -> None:
    """Into the file between its BEGIN and END markers when it has them (docs/reliability.md), else
    the whole file."""
    load = Path("/proc/loadavg").read_text().split()[:3]
    block = f"{BEGIN}\n{text}\n\n{runs} run(s) per scenario; load average at the end {' '.join(load)}.\n{END}"
    old = path.read_text() if path.exists() else ""
    if BEGIN in old and END in old:
        block = old[: old.index(BEGIN)] + block + old[old.index(END) + len(END) :]
    path.write_text(block if block.endswith("\n") else block + "\n")
