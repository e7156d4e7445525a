"""The benchmark runner's pure parts (statistics, ordering, table rendering), so they do not rot
between the rare runs of `make bench`."""

from __future__ import annotations

import pytest
from benchmarks import profile, report, stats

pytestmark = pytest.mark.unit


def test_median_and_nearest_rank_percentiles() -> None:
    assert stats.median([3, 1, 2]) == 2
    assert stats.median([4, 1, 3, 2]) == 2.5
    values = list(range(1, 101))
    assert stats.percentile(values, 99) == 99
    assert stats.percentile(values, 100) == 100
    assert stats.percentile([5.0], 99) == 5.0
    summary = stats.Summary.of([1.0, 2.0, 10.0])
    assert (summary.n, summary.median, summary.low, summary.high) == (3, 2.0, 1.0, 10.0)
    with pytest.raises(ValueError):
        stats.median([])


def test_paired_ratios_and_alternating_order() -> None:
    assert stats.paired_ratios([2.0, 3.0], [1.0, 2.0]) == [2.0, 1.5]
    with pytest.raises(ValueError):
        stats.paired_ratios([1.0], [1.0, 2.0])
    order = stats.alternating(4, "direct", "operator")
    assert order == [("direct", "operator"), ("operator", "direct")] * 2


def test_order_and_fairness_measures() -> None:
    assert stats.inversions([0, 1, 2, 3]) == 0
    assert stats.inversions([1, 0, 3, 2]) == 2
    assert stats.fifo_fraction([3, 2, 1, 0]) == 0.0
    assert stats.fifo_fraction([0]) == 1.0
    assert stats.jain([5.0, 5.0, 5.0]) == pytest.approx(1.0)
    assert stats.jain([1.0, 0.0, 0.0, 0.0]) == pytest.approx(0.25)


def test_table_renders_as_markdown_and_splices_into_the_page() -> None:
    table = report.Table("Live", ["guest", "ratio"], notes=["a note"])
    table.add("idle", report.ratio(1.04))
    table.add("a|b", "2")
    text = report.render(table)
    assert text.splitlines()[:4] == ["### Live", "", "| guest | ratio |", "|-------|-------|"]
    assert "| a\\|b  | 2     |" in text and "- a note" in text
    with pytest.raises(ValueError):
        table.add("only one cell")

    block = report.document(["Machine: test"], [table])
    page = "# Performance\n\nintro\n\n" + block + "\n## Notes\n"
    again = report.splice(page, report.document(["Machine: other"], [table]))
    assert again.count(report.BEGIN) == 1 and "Machine: other" in again and "Machine: test" not in again
    assert again.startswith("# Performance\n\nintro\n\n") and again.endswith("\n## Notes\n")
    assert report.splice("", block) == block


def test_profile_shares_from_collapsed_stacks() -> None:
    collapsed = "main (a.py:1);work (vemigrate/x.py:2);read (ssl.py:3) 6\nmain (a.py:1);idle (b.py:4) 4\n"
    found = {h.function: h for h in profile.hot(collapsed)}
    assert found["main (a.py:1)"].inclusive == 1.0 and found["main (a.py:1)"].own == 0.0
    assert found["read (ssl.py:3)"].own == pytest.approx(0.6)
    only = profile.hot(collapsed, only="vemigrate")
    assert [h.function for h in only] == ["work (vemigrate/x.py:2)"] and only[0].inclusive == pytest.approx(0.6)
