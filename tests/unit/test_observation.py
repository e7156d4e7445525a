"""`others_in_view`: each other migration counted once by admission, whichever view knows it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from vemigrate.core.observation import OtherMigration, others_in_view

pytestmark = pytest.mark.unit
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _other(uid: str, phase: str) -> OtherMigration:
    return OtherMigration(uid=uid, created=T0, phase=phase, source_host="a", target_host="b", ve_name=uid)


def test_an_admitted_migration_the_api_shows_in_flight_is_counted_once() -> None:
    view = others_in_view([_other("m0", "Validating")], [_other("m0", "Validating")])
    assert [o.uid for o in view] == ["m0"]


def test_the_admission_counts_until_the_api_shows_it() -> None:
    view = others_in_view([_other("m0", "Queued")], [_other("m0", "Validating")])
    assert [(o.uid, o.phase) for o in view] == [("m0", "Validating")]


def test_the_api_wins_once_it_shows_the_migration_past_waiting() -> None:
    view = others_in_view([_other("m0", "Failed"), _other("m1", "Transferring")], [_other("m0", "Validating")])
    assert sorted((o.uid, o.phase) for o in view) == [("m0", "Failed"), ("m1", "Transferring")]


def test_a_migration_that_left_its_slot_is_not_counted_in_it_while_the_api_lags() -> None:
    # Rolled back and queued for a retry: the index still shows it in flight until the watch delivers.
    view = others_in_view([_other("m0", "RollingBack")], [_other("m0", "Queued")])
    assert [(o.uid, o.phase) for o in view] == [("m0", "Queued")]


def test_only_migrations_the_api_has_are_in_view() -> None:
    assert others_in_view([], [_other("gone", "Validating")]) == []
