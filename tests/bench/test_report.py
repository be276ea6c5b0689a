"""The benchmark's result summaries and report rendering (bench/report.py) on made-up results: no servers."""

import pytest

from bench.loadgen import PointResult, RequestResult
from bench.report import (Check, PairPoint, PairResult, PointSpec, ceiling_rows, cpu_checks, noisy_points, pair_table,
                          unavailable_lines)

SPEC = PointSpec("c8", 8, 32, 64, 8, 3)


def point(tokens_per_second: float, tokens: int = 64, requests: int = 2, status: int = 200,
          ttft: float = 0.1, gap: float = 0.02) -> PointResult:
    """A measurement whose aggregate throughput is `tokens_per_second` (when every request gave `tokens`)."""
    results = [RequestResult(status=status, ttft=ttft, gaps=[gap] * (tokens - 1), tokens=tokens, usage_tokens=tokens,
                             chunks=tokens) for _ in range(requests)]
    return PointResult(8, requests * tokens / tokens_per_second, results)


def pair_point(a: list[float], b: list[float], spec: PointSpec = SPEC, **kwargs) -> PairPoint:
    return PairPoint(spec, a=[point(x, **kwargs) for x in a], b=[point(x, gap=0.05) for x in b],
                     order=[("a", "b"), ("b", "a"), ("a", "b")][:len(a)], load_before=1.5, load_after=2.25)


def test_pair_point_medians_ratios_and_latencies():
    p = pair_point([100, 150, 120], [100, 100, 60])
    assert p.tokens_per_second("a") == pytest.approx(120)
    assert p.tokens_per_second("b") == pytest.approx(100)
    ratios = p.ratios()
    assert ratios.ratios == pytest.approx((1.0, 1.5, 2.0))
    assert ratios.median == pytest.approx(1.5)
    assert p.latency("a", "ttft") == pytest.approx(100)
    assert p.latency("a", "itl") == pytest.approx(20)
    assert p.latency("b", "itl", 99) == pytest.approx(50)
    assert p.token_check() == "all 12 ok"
    assert p.token_check_passed()


def test_token_check_catches_short_and_failed_requests():
    short = pair_point([100, 100, 100], [100, 100, 100], tokens=63)
    assert short.short_requests("a") == 6 and short.short_requests("b") == 0
    assert short.token_check() == "FAIL: 6 A, 0 B of 12"
    assert not short.token_check_passed()
    failed = point(100, status=429)
    assert len(failed.short_requests(64)) == 2
    assert point(100).short_requests(64) == []


def measured_pair(precision="int8", gguf="q8_0", ratio=1.6) -> PairResult:
    pair = PairResult(precision, gguf, load_seconds={f"moltbot {precision}": 3.2, f"llama-server {gguf}": 0.4})
    for name, c in (("c1", 1), ("c8", 8), ("c32", 32)):
        spec = PointSpec(name, c, 32, 64, max(2, c), 5)
        pair.points[name] = pair_point([ratio * 50] * 3, [50] * 3, spec)
    long = PointSpec("long c8", 8, 1024, 128, 8, 3)
    pair.points["long c8"] = PairPoint(long, a=[point(30, tokens=128, gap=0.04)] * 3, b=[point(20, tokens=128, gap=0.06)] * 3)
    return pair


def test_pair_table_has_a_row_per_point_with_both_sides():
    table = pair_table([measured_pair()])
    lines = table.splitlines()
    assert lines[0].startswith("| Pair (A vs B) | Point | Rounds | A tok/s | B tok/s | A/B per round")
    assert len(lines) == 2 + 4
    assert lines[2] == ("| moltbot int8 vs llama-server q8_0 | c1 | 5 | 80.0 | 50.0 | 1.60x (1.60-1.60) | 100 / 100 | "
                        "20.0 / 50.0 | 20.0 / 50.0 | all 12 ok | 1.5 / 2.2 |")
    assert "| long c8 | 3 | 30.0 | 20.0 | 1.50x (1.50-1.50) | 100 / 100 | 40.0 / 60.0 |" in lines[5]


def test_unavailable_pair_is_reported_not_measured():
    missing = PairResult("int4", "q4_0", why="quantize must be int8 (or left out)")
    assert unavailable_lines([measured_pair(), missing]) == [
        "- moltbot int4 vs llama-server q4_0: not available in this runtime (quantize must be int8 (or left out))"]
    assert ceiling_rows([missing], {"int4": 1.0, "q4_0": 1.0}, 1e9) == []


def test_ceiling_rows_give_the_share_of_the_ceiling_at_c1():
    rows = ceiling_rows([measured_pair()], {"int8": 100e6, "q8_0": 125e6}, 20e9)
    assert rows == [["moltbot int8", "100 MB", 200.0, pytest.approx(80.0), "40%"],
                    ["llama-server q8_0", "125 MB", 160.0, pytest.approx(50.0), "31%"]]


def test_cpu_checks_cover_every_pair_with_median_ratios_and_say_n_a_for_unavailable_pairs():
    int8 = measured_pair(ratio=1.6)
    int8.model = "smollm2"
    original = measured_pair(gguf="Q4_1", ratio=1.2)
    original.model = "smollm2"
    refused = PairResult("int4", "Q4_K_M", model="gemma3", why="refused")
    titles = {"smollm2": "SmolLM2", "gemma3": "Gemma"}
    checks = {c.label.split(" (")[0]: c for c in cpu_checks([int8, original, refused], "long c8", titles)}
    assert checks["SmolLM2: moltbot int8 vs llama-server q8_0: c1 >= 1x"].verdict == "pass"
    assert checks["SmolLM2: moltbot int8 vs llama-server q8_0: c8 >= 1.5x"].row()[1:] == ["1.60x", ">= 1.50x", "pass"]
    assert checks["SmolLM2: moltbot int8 vs llama-server Q4_1: c32 >= 1.5x"].row()[1:] == ["1.20x", ">= 1.50x",
                                                                                          "FAIL"]
    itl = checks["SmolLM2: moltbot int8 vs llama-server q8_0: long c8 ITL p99 at most llama-server's"]
    assert itl.row()[1:] == ["40.0 ms", "<= 60.0 ms", "pass"]
    assert checks["Gemma: moltbot int4 vs llama-server Q4_K_M: c1 >= 1x"].verdict == "n/a"
    assert checks["Gemma: moltbot int4 vs llama-server Q4_K_M: long c8 ITL p99 at most llama-server's"].verdict == "n/a"
    assert checks["every request gave 200 with exactly the asked token count"].row()[1:] == [
        "96 of 96", "all 96", "pass"]
    no_long = measured_pair()
    del no_long.points["long c8"]
    assert not any("ITL" in c.label for c in cpu_checks([no_long], "long c8"))  # the pair did not run that point


def test_check_rows_for_failures_and_at_most():
    assert Check("slow", 0.9, 1.0).row() == ["slow", "0.90x", ">= 1.00x", "FAIL"]
    assert Check("itl", 70.0, 60.0, "ms", at_most=True).verdict == "FAIL"
    assert Check("nothing", None, 1.0).row() == ["nothing", "n/a", ">= 1.00x", "n/a"]


def test_points_with_a_wide_spread_of_round_ratios_are_flagged():
    steady = measured_pair()
    disturbed = PairResult("fp32", "f16")
    disturbed.points["c32"] = PairPoint(PointSpec("c32", 32, 32, 64, 32, 3), a=[point(100)] * 3,
                                        b=[point(100), point(40), point(90)])
    assert noisy_points([steady, disturbed]) == ["moltbot fp32 vs llama-server f16 c32 (1.00-2.50)"]


def test_targets_on_noisy_points_say_so():
    pair = measured_pair(ratio=1.6)
    pair.points["c8"] = pair_point([160, 160, 160], [100, 40, 100])  # one round of B slowed by other load
    checks = {c.label.split(" (")[0]: c for c in cpu_checks([pair], "long c8")}
    assert checks["moltbot int8 vs llama-server q8_0: c8 >= 1.5x"].row()[1:] == ["1.60x", ">= 1.50x", "pass (noisy)"]
    assert checks["moltbot int8 vs llama-server q8_0: c1 >= 1x"].row()[-1] == "pass"
    assert Check("x", None, 1.0, noisy=True).row()[-1] == "n/a"
