"""Sampling parameters and the sampling pipeline: the next token of every sequence of a step, from the step's logits.

The stages run over the rows of a step in this order, as vLLM's sampler runs them: logit_bias, penalties
(repetition, presence, frequency), the grammar mask (grammar.py: tokens the row's grammar does not allow next are
dropped), temperature, top-k / min-p / top-p, the draw, then the log probabilities (logprobs.py). Each stage
touches only the rows that use it: a greedy row with nothing to apply is one argmax, and a row without bias,
penalties or a grammar pays nothing for them. The raw logits are never changed: the rows that are
adjusted are copied first, and log probabilities are of the model's raw distribution.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from moltbot.engine.grammar import Constraint, Grammar
from moltbot.engine.logprobs import Logprobs, logprobs_of

Floats = npt.NDArray[np.float32]

# A temperature below this is greedy (as vLLM's _SAMPLING_EPS): dividing by it would overflow float32 logits.
_GREEDY_BELOW = 1e-5
# A logit divided by a repetition_penalty near 0 saturates here rather than at infinity: the row stays finite
# through the temperature (a factor of at most 1 / _GREEDY_BELOW).
_LOGIT_CEILING = np.float32(1e30)


@dataclass(frozen=True)
class SamplingParams:
    """How one sequence is generated; made by the validator (engine/validation.py), never from raw input."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False
    top_k: int = 0  # 0: off
    min_p: float = 0.0  # a token's least probability relative to the most likely token's; 0: off
    repetition_penalty: float = 1.0  # over the prompt's and the output's tokens; 1: off
    presence_penalty: float = 0.0  # over the output's tokens
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias), each id once
    logprobs: int | None = None  # None: none; otherwise the sampled token's and this many most likely tokens'
    grammar: Grammar | None = None  # constrained decoding: each sequence's tokens follow it

    @property
    def greedy(self) -> bool:
        return self.temperature < _GREEDY_BELOW

    @property
    def penalised(self) -> bool:
        """Whether the sequence's tokens must be counted (TokenCounts) for a penalty."""
        return self.repetition_penalty != 1.0 or bool(self.presence_penalty) or bool(self.frequency_penalty)

    @cached_property
    def route(self) -> str:
        """Which way the pipeline takes a row (worked out once per request, not per step): `plain` (greedy with
        nothing to apply: one argmax of the raw row), `adjusted` (greedy after bias, penalties or a grammar mask) or
        `drawn`."""
        if not self.greedy:
            return "drawn"
        return "adjusted" if self.logit_bias or self.penalised or self.grammar else "plain"

    @property
    def filters(self) -> bool:
        """Whether top-k, min-p or top-p may drop tokens before the draw (a row without them draws from all)."""
        return self.top_k > 0 or self.min_p > 0 or self.top_p < 1.0

    @cached_property
    def bias(self) -> tuple[npt.NDArray[np.intp], Floats]:
        """logit_bias as arrays (made once per request, not per step)."""
        ids = np.array([token for token, _ in self.logit_bias], dtype=np.intp)
        return ids, np.array([value for _, value in self.logit_bias], dtype=np.float32)


class _Ids:
    """A growing array of token ids (amortised O(1) appends, a view of them without copying)."""

    def __init__(self, initial: npt.NDArray[np.intp]):
        self._ids = np.empty(max(16, 2 * len(initial)), dtype=np.intp)
        self._ids[: len(initial)] = initial
        self._len = len(initial)

    def append(self, token: int) -> None:
        if self._len == len(self._ids):
            self._ids = np.concatenate([self._ids, np.empty_like(self._ids)])
        self._ids[self._len] = token
        self._len += 1

    def view(self) -> npt.NDArray[np.intp]:
        return self._ids[: self._len]


class TokenCounts:
    """A sequence's tokens for the penalties, counted as they come (never recounted over the whole history): which
    tokens its prompt and output hold (repetition_penalty), and how often each came in its output (presence and
    frequency penalties). Dense counts over the vocabulary with the distinct ids listed beside them, so that adding
    a token is O(1) and a step touches only the ids seen. Sized at the first step, by the logits' width."""

    def __init__(self, prompt_ids: Sequence[int]):
        self._prompt_ids = prompt_ids
        self._counts: npt.NDArray[np.int32] | None = None  # output occurrences per token id
        self._seen = np.zeros(0, dtype=bool)  # in the prompt or the output
        self._seen_ids = _Ids(np.zeros(0, dtype=np.intp))
        self._output_ids = _Ids(np.zeros(0, dtype=np.intp))

    def _ready(self, width: int) -> npt.NDArray[np.int32]:
        if self._counts is None:
            prompt = np.unique(np.asarray(self._prompt_ids, dtype=np.intp))
            prompt = prompt[(prompt >= 0) & (prompt < width)]  # ids beyond the logits cannot be scored anyway
            self._counts = np.zeros(width, dtype=np.int32)
            self._seen = np.zeros(width, dtype=bool)
            self._seen[prompt] = True
            self._seen_ids = _Ids(prompt)
        return self._counts

    def add(self, token: int) -> None:
        """A sampled token (after apply() on its step: the counts are sized by then)."""
        counts = self._counts
        assert counts is not None, "TokenCounts.add before apply"
        if not counts[token]:
            self._output_ids.append(token)
        counts[token] += 1
        if not self._seen[token]:
            self._seen[token] = True
            self._seen_ids.append(token)

    def apply(self, row: Floats, params: SamplingParams) -> None:
        """The penalties on one row of logits, in place: repetition_penalty as HF and vLLM define it (a seen
        token's positive logit divided by it, a negative one multiplied), then presence and frequency penalties as
        OpenAI defines them (minus presence once a token came in the output, minus frequency times its count)."""
        counts = self._ready(len(row))
        if params.repetition_penalty != 1.0:
            ids = self._seen_ids.view()
            seen = row[ids]
            penalty = np.float32(params.repetition_penalty)
            with np.errstate(over="ignore", divide="ignore"):
                row[ids] = np.where(seen > 0, np.minimum(seen / penalty, _LOGIT_CEILING), seen * penalty)
        if params.presence_penalty or params.frequency_penalty:
            ids = self._output_ids.view()
            row[ids] -= params.presence_penalty + params.frequency_penalty * counts[ids]


class SamplingRow(Protocol):
    """What the pipeline reads of a sequence (the scheduler's Sequence is one)."""

    @property
    def params(self) -> SamplingParams: ...

    @property
    def rng(self) -> np.random.Generator: ...  # seeded per sequence: reproducible draws

    @property
    def counts(self) -> TokenCounts | None: ...  # where params.penalised

    @property
    def constraint(self) -> Constraint | None: ...  # where params.grammar


class Sampled(NamedTuple):
    """One row's outcome: its token and, where asked for, log probabilities; or why it could not be sampled."""

    token: int = -1
    logprobs: Logprobs | None = None
    error: str | None = None


# Cutoff candidates: the tokens whose weight (relative to the most likely token's) reaches a threshold, lowered by
# these steps until they hold what top-k / top-p need. Tokens above a threshold are a prefix of the sorted order, so
# the cutoff lies within them, and only they are sorted: a full sort of a 50k-150k vocabulary costs milliseconds.
_NUCLEUS_THRESHOLDS = (1e-2, 1e-4, 1e-7, 0.0)
# The draw finds its block of this many tokens by the blocks' sums, then its token within the block: numpy's
# running sum is sequential, too slow over a whole vocabulary for every token of every sequence.
_DRAW_BLOCK = 256


def sample_batch(logits: npt.NDArray[np.floating], rows: Sequence[SamplingRow | None]) -> list[Sampled | None]:
    """The next token of each row of a step's logits ([rows, vocab]); None where the row is None (a sequence that
    left during the step). A row whose scores are not finite numbers fails alone.

    This runs for every step on the scheduler thread: vectorised float32 work over the vocabulary, one uniform
    draw per sampled row."""
    live = {i: row for i, row in enumerate(rows) if row is not None}
    picked: dict[int, int | str] = {}  # a token, or why not
    masks = _grammar_masks(logits.shape[1], live)
    routes: dict[str, list[int]] = {"plain": [], "adjusted": [], "drawn": []}
    for i, row in live.items():
        if i in masks and not masks[i].any():
            picked[i] = "the grammar allows no token here"
        else:
            routes[row.params.route].append(i)
    plain, adjusted, drawn = routes["plain"], routes["adjusted"], routes["drawn"]
    picked.update(zip(plain, _argmax(logits, plain), strict=True))
    if adjusted:
        work = _adjusted(logits, adjusted, [live[i] for i in adjusted], masks)
        picked.update(zip(adjusted, (int(t) for t in np.argmax(work, axis=1)), strict=True))
    if drawn:
        work = _adjusted(logits, drawn, [live[i] for i in drawn], masks)
        picked.update(zip(drawn, _draw_rows(work, [live[i] for i in drawn]), strict=True))
    return [None if row is None else _outcome(logits[i], picked[i], row) for i, row in enumerate(rows)]


def _outcome(raw: npt.NDArray[np.floating], picked: int | str, row: SamplingRow) -> Sampled:
    """The row's token counted for its penalties, with its log probabilities where asked for."""
    if isinstance(picked, str):
        return Sampled(error=picked)
    top = row.params.logprobs
    try:
        logprobs = None if top is None else logprobs_of(raw, picked, top)
    except ValueError as exc:
        return Sampled(error=str(exc))
    if row.constraint is not None:
        failed = row.constraint.consume(picked)
        if failed:
            return Sampled(error=failed)
    if row.counts is not None:
        row.counts.add(picked)
    return Sampled(picked, logprobs)


def _argmax(logits: npt.NDArray[np.floating], which: list[int]) -> list[int]:
    if len(which) == len(logits):
        return [int(t) for t in np.argmax(logits, axis=1)]  # a whole greedy batch: one call, no copy
    return [int(np.argmax(logits[i])) for i in which]


def _grammar_masks(width: int, live: dict[int, SamplingRow]) -> dict[int, npt.NDArray[np.bool_]]:
    """The allowed next tokens of the constrained rows, by row: every row's mask of the step in one parallel call
    (rows without a grammar pay nothing)."""
    constrained = {i: row.constraint for i, row in live.items() if row.constraint is not None}
    if not constrained:
        return {}
    constraints = list(constrained.values())
    allowed = constraints[0].compiler.fill_masks(constraints, width)
    return dict(zip(constrained, allowed, strict=True))


def _adjusted(logits: npt.NDArray[np.floating], which: list[int], rows: list[SamplingRow],
              masks: dict[int, npt.NDArray[np.bool_]]) -> Floats:
    """Copies of the rows `which` (the raw logits stay as they are, for the log probabilities), with logit_bias,
    then the penalties, then the grammar mask applied where a row has them."""
    work = np.asarray(logits[which], dtype=np.float32)  # indexing with a list copies
    for index, adjusted, row in zip(which, work, rows, strict=True):
        if row.params.logit_bias:
            ids, values = row.params.bias
            inside = ids < len(adjusted)  # ids beyond the logits (a narrower graph) have no score to bias
            adjusted[ids[inside]] += values[inside]
        if row.counts is not None:
            row.counts.apply(adjusted, row.params)
        if index in masks:
            adjusted[~masks[index]] = -np.inf
    return work


def _draw_rows(work: Floats, rows: list[SamplingRow]) -> list[int | str]:
    """Temperature, top-k / min-p / top-p, and a draw for each row of `work` (changed in place): a token, or the
    reason a row could not be sampled."""
    inverse = np.array([1.0 / row.params.temperature for row in rows], dtype=np.float32)
    with np.errstate(invalid="ignore", over="ignore"):  # scores that are not numbers are refused below
        work *= inverse[:, None]
        work -= work.max(axis=1, keepdims=True)
        np.exp(work, out=work)  # each row's most likely token weighs 1
        totals = work.sum(axis=1, dtype=np.float64)
    picked: list[int | str] = []
    for weights, total, row in zip(work, totals, rows, strict=True):
        if not np.isfinite(total) or total <= 0.0:
            picked.append("the model's scores are not finite numbers")
            continue
        if row.params.filters:
            weights[weights < _cutoff(weights, row.params, float(total))] = 0.0
        picked.append(_draw(weights, row.rng))
    return picked


def _cutoff(weights: Floats, params: SamplingParams, total: float) -> float:
    """The least weight a token keeps: top-k and min-p first (both bound the weight from below, so they commute),
    then top-p over the mass they leave (the smallest set of most likely tokens that reaches top_p of it). Ties at
    the cutoff are kept, as vLLM keeps them."""
    floor = np.float32(params.min_p)  # the most likely token weighs 1: min-p is a bound on the weight itself
    top_k = params.top_k if 0 < params.top_k < len(weights) else 0
    if not top_k and params.top_p >= 1.0:
        return float(floor)
    if params.top_p < 1.0 and not top_k:
        total = total if floor <= 0 else float(weights[weights >= floor].sum(dtype=np.float64))
    for threshold in _NUCLEUS_THRESHOLDS:
        candidates = weights[weights >= max(np.float32(threshold), floor)]
        if threshold <= floor or (top_k and len(candidates) >= top_k):
            break
        if not top_k and float(candidates.sum(dtype=np.float64)) >= params.top_p * total:
            break
    ordered = -np.sort(-candidates)  # only the candidates are sorted, most likely first
    if top_k:
        ordered = ordered[:top_k]
        total = float(ordered.sum(dtype=np.float64))
    if params.top_p < 1.0:
        cumulative = np.cumsum(ordered, dtype=np.float64)
        ordered = ordered[: int(np.searchsorted(cumulative, params.top_p * total)) + 1]
    return float(ordered[-1]) if len(ordered) else float(floor)


def _draw(weights: Floats, rng: np.random.Generator) -> int:
    """An index drawn with probability proportional to its weight."""
    starts = np.arange(0, len(weights), _DRAW_BLOCK)
    block_sums = np.cumsum(np.add.reduceat(weights, starts, dtype=np.float64))
    target = rng.random() * block_sums[-1]
    block = min(int(np.searchsorted(block_sums, target, side="right")), len(starts) - 1)
    before = block_sums[block - 1] if block else 0.0
    within = np.cumsum(weights[block * _DRAW_BLOCK: (block + 1) * _DRAW_BLOCK], dtype=np.float64)
    index = block * _DRAW_BLOCK + int(np.searchsorted(within, target - before, side="right"))
    return min(index, len(weights) - 1)
