"""Reading py-spy's collapsed stacks (`--format raw`): where the operator's samples go, by function."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class Hot:
    function: str  # "name (file:line)" as py-spy writes a frame
    inclusive: float  # share of all samples with this function anywhere on the stack
    own: float  # share of samples with this function on top


def hot(collapsed: str, top: int = 15, only: str = "") -> list[Hot]:
    """The `top` functions by inclusive share; `only` keeps frames whose text contains it."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        for frame in set(frames):
            if only in frame:
                inclusive[frame] += count
        if only in frames[-1]:
            own[frames[-1]] += count
    if total == 0:
        return []
    return [Hot(f, n / total, own[f] / total) for f, n in inclusive.most_common(top)]
