"""The benchmark's results and how they are written (no servers here: the tests render made-up results).

A pair compares one runtime variant (A, "moltbot int8") with its llama-server peer (B, "llama-server q8_0") at
several points. Each point runs in rounds; a round measures both sides once, alternating which side goes
first, and gives one ratio A/B. A point reports each side's median over the rounds, the median ratio with the
lowest and highest round, latencies, whether every request gave the asked token count, and the load average.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.loadgen import PointResult
from bench.stats import RatioSummary, fmt, markdown_table, median, percentile, round_ratios

# Bytes read per weight in one decode step. GGUF block types carry a 2-byte scale per 32 weights; llama-quantize
# keeps some tensors (the output matrix) at a higher type, so its figures are a lower bound. int4 is nominal.
# Q4_1 blocks carry a scale and a minimum (2 bytes each) per 32 weights.
BYTES_PER_WEIGHT = {"fp32": 4.0, "fp16": 2.0, "f16": 2.0, "int8": 1.0, "q8_0": 34 / 32, "int4": 0.5,
                    "q4_0": 18 / 32, "Q4_1": 20 / 32}

PEERS = {"int8": "q8_0", "int4": "q4_0", "fp32": "f16"}  # like against like: runtime precision -> GGUF type
# The targets for every pair (issue 21): aggregate throughput ratio at each point, and at the long-context
# point the runtime's inter-token latency p99 at most llama-server's.
RATIO_TARGETS = (("c1", 1.0), ("c8", 1.5), ("c32", 1.5))


@dataclass(frozen=True)
class PointSpec:
    """One load point: `concurrency` closed-loop clients sending `requests` requests of `prompt_tokens`
    tokens that each ask for `new_tokens` tokens."""

    name: str
    concurrency: int
    prompt_tokens: int
    new_tokens: int
    requests: int
    rounds: int


@dataclass
class PairPoint:
    """One point of a pair: per-round results of each side, in round order."""

    spec: PointSpec
    a: list[PointResult] = field(default_factory=list)
    b: list[PointResult] = field(default_factory=list)
    order: list[tuple[str, str]] = field(default_factory=list)
    load_before: float | None = None
    load_after: float | None = None
    seconds: float = 0.0

    def side(self, which: str) -> list[PointResult]:
        return self.a if which == "a" else self.b

    def tokens_per_second(self, which: str) -> float | None:
        runs = self.side(which)
        return median(p.tokens_per_second for p in runs) if runs else None

    def ratios(self) -> RatioSummary:
        return round_ratios([p.tokens_per_second for p in self.a], [p.tokens_per_second for p in self.b])

    def latency(self, which: str, kind: str, q: float = 50) -> float | None:
        """Median over the rounds of each round's q-th percentile (ms) of TTFT or inter-token gaps."""
        values = []
        for point in self.side(which):
            ok = [r for r in point.results if r.status == 200]
            samples = ([r.ttft for r in ok if r.ttft is not None] if kind == "ttft"
                       else [g for r in ok for g in r.gaps])
            if samples:
                values.append(1000 * percentile(samples, q))
        return median(values) if values else None

    def short_requests(self, which: str) -> int:
        return sum(len(p.short_requests(self.spec.new_tokens)) for p in self.side(which))

    def request_count(self, which: str) -> int:
        return sum(len(p.results) for p in self.side(which))

    def token_check(self) -> str:
        """`all 80 ok` when every request of both sides ended 200 with exactly the asked tokens."""
        total = self.request_count("a") + self.request_count("b")
        bad_a, bad_b = self.short_requests("a"), self.short_requests("b")
        if not bad_a and not bad_b and total:
            return f"all {total} ok"
        return f"FAIL: {bad_a} A, {bad_b} B of {total}"

    def token_check_passed(self) -> bool:
        return self.request_count("a") > 0 and not self.short_requests("a") and not self.short_requests("b")


@dataclass
class PairResult:
    """A runtime precision against a GGUF type: `why` says why it was not measured (None when it was)."""

    precision: str
    gguf_type: str
    model: str = ""  # the model's key (bench/prepare.py GGUF_MODELS); pairs are reported per model
    points: dict[str, PairPoint] = field(default_factory=dict)
    why: str | None = None
    load_seconds: dict[str, float] = field(default_factory=dict)  # side label -> process start to ready
    served: str = ""  # the runtime's own word on what it serves (/v1/models graph and precision)
    prompt_tokens: dict[str, dict[str, int]] = field(default_factory=dict)  # side -> point name -> tokens seen

    @property
    def a_label(self) -> str:
        return f"moltbot {self.precision}"

    @property
    def b_label(self) -> str:
        return f"llama-server {self.gguf_type}"

    @property
    def label(self) -> str:
        return f"{self.a_label} vs {self.b_label}"


def pair_table(pairs: list[PairResult]) -> str:
    """One row per measured pair and point."""
    rows = []
    for pair in pairs:
        for name, point in pair.points.items():
            rows.append([
                pair.label, name, f"{point.spec.rounds}", point.tokens_per_second("a"), point.tokens_per_second("b"),
                point.ratios().text(),
                _pair_of(point.latency("a", "ttft"), point.latency("b", "ttft")),
                _pair_of(point.latency("a", "itl"), point.latency("b", "itl")),
                _pair_of(point.latency("a", "itl", 99), point.latency("b", "itl", 99)),
                point.token_check(),
                f"{fmt(point.load_before)} / {fmt(point.load_after)}",
            ])
    return markdown_table(["Pair (A vs B)", "Point", "Rounds", "A tok/s", "B tok/s", "A/B per round: median (min-max)",
                           "TTFT p50 ms A / B", "ITL p50 ms A / B", "ITL p99 ms A / B", "Exact token count",
                           "Load avg before / after"], rows)


def _pair_of(a: float | None, b: float | None) -> str:
    return f"{fmt(a)} / {fmt(b)}"


NOISY_SPREAD = 1.5  # highest over lowest per-round ratio beyond which a point is flagged


def noisy_points(pairs: list[PairResult], spread: float = NOISY_SPREAD) -> list[str]:
    """`pair point (1.22-2.79)` for each point whose per-round ratios spread by more than `spread`: a side was
    slowed in some rounds (other load on the machine), so its median says less than the others'."""
    out = []
    for pair in pairs:
        for name, point in pair.points.items():
            ratios = point.ratios()
            if _spread_too_wide(ratios, spread):
                out.append(f"{pair.label} {name} ({ratios.low:.2f}-{ratios.high:.2f})")
    return out


def unavailable_lines(pairs: list[PairResult]) -> list[str]:
    return [f"- {pair.label}: not available in this runtime ({pair.why})" for pair in pairs if pair.why]


def ceiling_rows(pairs: list[PairResult], bytes_per_step: dict[str, float], bandwidth: float) -> list[list]:
    """Per measured side: bytes per decode step, the batch-1 tok/s ceiling at `bandwidth` bytes/s, the c1
    median and the share of the ceiling it reached."""
    rows = []
    for pair in pairs:
        c1 = pair.points.get("c1")
        if pair.why or c1 is None:
            continue
        for which, label, kind in (("a", pair.a_label, pair.precision), ("b", pair.b_label, pair.gguf_type)):
            ceiling = bandwidth / bytes_per_step[kind]
            measured = c1.tokens_per_second(which)
            rows.append([label, f"{bytes_per_step[kind] / 1e6:.0f} MB", ceiling, measured,
                         f"{100 * measured / ceiling:.0f}%" if measured is not None else "n/a"])
    return rows


def ceiling_table(rows: list[list]) -> str:
    return markdown_table(["System", "Weight bytes per step", "Batch-1 ceiling tok/s", "c1 tok/s (median)",
                           "c1 share of ceiling"], rows)


@dataclass(frozen=True)
class Check:
    """A target: `measured` must reach `needed` (or stay at or under it when `at_most`), in `unit`."""

    label: str
    measured: float | None
    needed: float
    unit: str = "x"
    at_most: bool = False
    shown: tuple[str, str] | None = None  # how to write measured and needed, where numbers would not say it
    noisy: bool = False  # measured on a point whose rounds disagree (see noisy_points): the verdict says so

    @property
    def verdict(self) -> str:
        if self.measured is None:
            return "n/a"
        ok = self.measured <= self.needed if self.at_most else self.measured >= self.needed
        return "pass" if ok else "FAIL"

    def _text(self, value: float | None) -> str:
        if value is None:
            return "n/a"
        if self.unit == "x":
            return f"{value:.2f}x"
        if self.unit == "%":
            return f"{value:.0f}%"
        return f"{fmt(value)} {self.unit}"

    def row(self) -> list[str]:
        verdict = f"{self.verdict} (noisy)" if self.noisy and self.measured is not None else self.verdict
        if self.shown:
            return [self.label, *self.shown, verdict]
        return [self.label, self._text(self.measured), ("<= " if self.at_most else ">= ") + self._text(self.needed),
                verdict]


def checks_table(checks: list[Check]) -> str:
    return markdown_table(["Target", "Measured", "Needed", "Result"], [c.row() for c in checks])


def _named(pair: PairResult, titles: dict[str, str] | None) -> str:
    title = (titles or {}).get(pair.model)
    return f"{title}: {pair.label}" if title else pair.label


def ratio_check(pair: PairResult, point: str, needed: float, titles: dict[str, str] | None = None) -> Check:
    """`moltbot int8 vs llama-server q8_0: c8 >= 1.5x`: the median of the per-round ratios against the target."""
    label = f"{_named(pair, titles)}: {point} >= {needed:g}x (median of per-round ratios)"
    if pair.why or point not in pair.points:
        return Check(label, None, needed)
    ratios = pair.points[point].ratios()
    return Check(label, ratios.median, needed, noisy=_spread_too_wide(ratios))


def itl_check(pair: PairResult, point: str, q: float = 99, titles: dict[str, str] | None = None) -> Check:
    """The runtime's inter-token latency p`q` at `point` at most its peer's."""
    label = f"{_named(pair, titles)}: {point} ITL p{q:g} at most llama-server's"
    measured = None if pair.why else pair.points.get(point)
    a = measured.latency("a", "itl", q) if measured else None
    b = measured.latency("b", "itl", q) if measured else None
    return Check(label, a, b if b is not None else 0.0, "ms", at_most=True,
                 shown=None if a is not None and b is not None else ("n/a", "n/a"),
                 noisy=measured is not None and _spread_too_wide(measured.ratios()))


def _spread_too_wide(ratios: RatioSummary, spread: float | None = None) -> bool:
    return bool(ratios.ratios) and ratios.high > (spread or NOISY_SPREAD) * ratios.low


def cpu_checks(pairs: list[PairResult], long_point: str, titles: dict[str, str] | None = None) -> list[Check]:
    """The issue's CPU targets (2 cores) for every pair: c1 >= 1x, c8 and c32 >= 1.5x, the long-context ITL p99 at
    most llama-server's where the pair ran that point; and every request with exactly the asked tokens. `titles`
    (model key -> name) go in front of each pair's label."""
    checks = []
    for pair in pairs:
        checks += [ratio_check(pair, point, needed, titles) for point, needed in RATIO_TARGETS]
        if pair.why or long_point in pair.points:
            checks.append(itl_check(pair, long_point, titles=titles))
    points = [p for pair in pairs if not pair.why for p in pair.points.values()]
    short = sum(p.short_requests("a") + p.short_requests("b") for p in points)
    total = sum(p.request_count("a") + p.request_count("b") for p in points)
    checks.append(Check("every request gave 200 with exactly the asked token count",
                        float(total - short) if total else None,
                        float(total), "requests", shown=(f"{total - short} of {total}", f"all {total}")))
    return checks
