"""The benchmark's statistics and table helpers (bench/stats.py)."""

import pytest

from bench.stats import interleaved_order, markdown_table, median, percentile, round_ratios


def test_percentile_interpolates_like_numpy():
    values = [10, 1, 4, 7]  # sorted: 1 4 7 10
    assert percentile(values, 0) == 1
    assert percentile(values, 100) == 10
    assert percentile(values, 50) == pytest.approx(5.5)
    assert percentile(values, 99) == pytest.approx(7 + 3 * 0.97)
    assert percentile(range(101), 99) == pytest.approx(99)
    assert median([3.0]) == 3.0


def test_percentile_rejects_bad_input():
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="between 0 and 100"):
        percentile([1, 2], 101)


def test_round_ratios_give_median_min_and_max():
    summary = round_ratios([100.0, 120.0, 90.0, 110.0, 80.0], [100.0, 100.0, 100.0, 50.0, 100.0])
    assert summary.ratios == (1.0, 1.2, 0.9, 2.2, 0.8)
    assert summary.median == pytest.approx(1.0)
    assert (summary.low, summary.high) == (0.8, 2.2)
    assert summary.text() == "1.00x (0.80-2.20)"
    even = round_ratios([1.0, 3.0], [1.0, 1.0])
    assert even.median == pytest.approx(2.0)  # the mean of the middle two


def test_round_ratios_skip_rounds_where_b_measured_nothing_and_need_paired_rounds():
    assert round_ratios([10.0, 10.0], [0.0, 5.0]).ratios == (2.0,)
    empty = round_ratios([1.0], [0.0])
    assert (empty.median, empty.low, empty.high, empty.text()) == (None, None, None, "n/a")
    with pytest.raises(ValueError, match="3 rounds of A but 2 of B"):
        round_ratios([1.0, 2.0, 3.0], [1.0, 2.0])


def test_interleaved_order_alternates_which_side_goes_first():
    assert interleaved_order(5) == [("a", "b"), ("b", "a"), ("a", "b"), ("b", "a"), ("a", "b")]
    assert interleaved_order(1) == [("a", "b")]
    order = interleaved_order(6)
    assert sum(first == "a" for first, _ in order) == sum(first == "b" for first, _ in order) == 3
    with pytest.raises(ValueError):
        interleaved_order(0)


def test_markdown_table_formats_numbers_and_checks_width():
    table = markdown_table(["System", "tok/s"], [["moltbot", 123.456], ["eager", 17.71], ["none", None]])
    assert table.splitlines() == ["| System | tok/s |", "|---|---|", "| moltbot | 123 |", "| eager | 17.7 |",
                                  "| none | n/a |"]
    with pytest.raises(ValueError, match="2 cells"):
        markdown_table(["a", "b", "c"], [[1, 2]])
