"""The benchmark's statistics and table helpers (bench/stats.py)."""

import pytest

from bench.stats import Target, markdown_table, median, percentile


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


def test_target_verdicts_and_row():
    assert Target("c32 >= 6x c1", 240.0, 40.0, 6.0).verdict == "pass"
    failing = Target("c32 >= 6x c1", 200.0, 40.0, 6.0)
    assert failing.verdict == "FAIL"
    assert failing.row() == ["c32 >= 6x c1", "200", "240", "5.00x", "FAIL"]
    assert Target("vs llama-server", 100.0, None).verdict == "n/a"


def test_markdown_table_formats_numbers_and_checks_width():
    table = markdown_table(["System", "tok/s"], [["moltbot", 123.456], ["eager", 17.71], ["none", None]])
    assert table.splitlines() == ["| System | tok/s |", "|---|---|", "| moltbot | 123 |", "| eager | 17.7 |",
                                  "| none | n/a |"]
    with pytest.raises(ValueError, match="2 cells"):
        markdown_table(["a", "b", "c"], [[1, 2]])
