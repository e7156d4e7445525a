"""The condition writer: metav1.Condition semantics (lastTransitionTime moves only when status flips)."""

from __future__ import annotations

from datetime import datetime

from vemigrate.api.common import Condition, ConditionStatus


def find(conditions: list[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None,
) -> list[Condition]:
    """A new list with `type_` set; the others keep their order and values. `reason` is a str: a member of
    Reason, Phase or QueueCause when written this pass, or a failure's reason copied from the stored status."""
    previous = find(conditions, type_)
    since = previous.last_transition_time if previous is not None and previous.status == status else now
    updated = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=since,
        observed_generation=generation,
    )
    if previous is None:
        return [*conditions, updated]
    return [updated if c.type == type_ else c for c in conditions]
