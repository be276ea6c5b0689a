"""Sampling parameters and the sampler: the next token from one row of logits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class SamplingParams:
    """How one sequence is generated; made by the validator (engine/validation.py), never from raw input."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False


# Nucleus candidates: the tokens whose weight (relative to the most likely token's) reaches a threshold, lowered
# by these steps until their mass reaches top_p. Tokens above a threshold are a prefix of the sorted order, so the
# nucleus lies within them, and only they are sorted: a full sort of a 50k-150k vocabulary costs milliseconds.
_NUCLEUS_THRESHOLDS = (1e-2, 1e-4, 1e-7, 0.0)
# The draw finds its block of this many tokens by the blocks' sums, then its token within the block: numpy's
# running sum is sequential, too slow over a whole vocabulary for every token of every sequence.
_DRAW_BLOCK = 256


def sample(logits: npt.NDArray[np.floating], params: SamplingParams, rng: np.random.Generator) -> int:
    """Greedy at temperature 0; otherwise a draw from the softmax at that temperature, restricted to the smallest
    set of most likely tokens whose probabilities reach top_p (nucleus sampling).

    This runs for every token of every running sequence on the scheduler thread: vectorised float32 work over
    the vocabulary, one uniform draw."""
    if params.temperature <= 0:
        return int(np.argmax(logits))
    with np.errstate(invalid="ignore", over="ignore"):  # scores that are not numbers are refused below
        weights = np.asarray(logits, dtype=np.float32) * np.float32(1.0 / params.temperature)
        weights -= weights.max()
        np.exp(weights, out=weights)  # the most likely token weighs 1
        total = float(weights.sum(dtype=np.float64))
    if not np.isfinite(total) or total <= 0.0:
        raise ValueError("the model's scores are not finite numbers")
    if params.top_p < 1.0:
        kept = _nucleus(weights, params.top_p * total)
        return int(kept[_draw(weights[kept], rng)])
    return _draw(weights, rng)


def _nucleus(weights: npt.NDArray[np.float32], mass: float) -> npt.NDArray[np.intp]:
    """The smallest set of largest weights whose sum reaches `mass`, largest first."""
    for threshold in _NUCLEUS_THRESHOLDS:
        candidates = np.flatnonzero(weights >= threshold)
        if threshold == 0.0 or float(weights[candidates].sum(dtype=np.float64)) >= mass:
            break
    ordered = candidates[np.argsort(-weights[candidates], kind="stable")]
    cumulative = np.cumsum(weights[ordered], dtype=np.float64)
    return ordered[: min(int(np.searchsorted(cumulative, mass)) + 1, len(ordered))]


def _draw(weights: npt.NDArray[np.float32], rng: np.random.Generator) -> int:
    """An index drawn with probability proportional to its weight."""
    blocks = -(-len(weights) // _DRAW_BLOCK)
    padded = np.zeros(blocks * _DRAW_BLOCK, dtype=np.float32)
    padded[: len(weights)] = weights
    block_sums = np.cumsum(padded.reshape(blocks, _DRAW_BLOCK).sum(axis=1, dtype=np.float64))
    target = rng.random() * block_sums[-1]
    block = min(int(np.searchsorted(block_sums, target, side="right")), blocks - 1)
    before = block_sums[block - 1] if block else 0.0
    within = np.cumsum(padded[block * _DRAW_BLOCK: (block + 1) * _DRAW_BLOCK], dtype=np.float64)
    index = block * _DRAW_BLOCK + int(np.searchsorted(within, target - before, side="right"))
    return min(index, len(weights) - 1)
