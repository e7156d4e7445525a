"""The reasons users read: docs/api.md's table lists exactly the members of Reason and QueueCause, so
the documentation and the code cannot drift apart."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vemigrate.api.migration import QueueCause
from vemigrate.api.reasons import Reason
from vemigrate.core.decision import ActionKind

pytestmark = pytest.mark.unit
API_MD = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def documented() -> list[str]:
    """The names in the first column of the table under '### Reasons', in order (one row may name several)."""
    section = API_MD.read_text().split("\n### Reasons\n", 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [name for row in rows for name in re.findall(r"`([^`]+)`", row.split("|")[1])]


def test_the_table_lists_every_reason_once_and_nothing_else() -> None:
    names = documented()
    assert len(names) == len(set(names)), sorted(n for n in set(names) if names.count(n) > 1)
    expected = {r.value for r in Reason} | {c.value for c in QueueCause}
    assert set(names) - expected == set(), "documented, but no such reason"
    assert expected - set(names) == set(), "a reason the table does not explain"


def test_every_reason_is_one_camelcase_word() -> None:
    for reason in [*Reason, *QueueCause]:
        assert re.fullmatch(r"[A-Z][A-Za-z]+", reason.value), reason


def test_a_failed_step_has_a_reason_of_its_own() -> None:
    assert {kind.failed for kind in ActionKind} == {Reason(f"{kind.value}Failed") for kind in ActionKind}
