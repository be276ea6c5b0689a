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


def sample(logits: npt.NDArray[np.floating], params: SamplingParams, rng: np.random.Generator) -> int:
    """Greedy at temperature 0; otherwise a draw from the softmax at that temperature, restricted to the smallest
    set of most likely tokens whose probabilities reach top_p (nucleus sampling)."""
    if params.temperature <= 0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / params.temperature
    scaled -= scaled.max()
    probs = np.exp(scaled)
    probs /= probs.sum()
    if params.top_p < 1.0:
        order = np.argsort(-probs)
        cumulative = np.cumsum(probs[order])
        cutoff = int(np.searchsorted(cumulative, params.top_p)) + 1
        kept = order[:cutoff]
        kept_probs = probs[kept] / probs[kept].sum()
        return int(kept[rng.choice(len(kept), p=kept_probs)])
    return int(rng.choice(len(probs), p=probs))
