"""Log probabilities of a sampled token and of the most likely tokens at its position.

They are of the model's raw distribution: the log-softmax of the logits as the model made them, before logit_bias,
penalties, temperature and top-k / top-p / min-p (vLLM's default, `raw_logprobs`). So they say how likely the model
found a token, whatever the request did to pick it, and the same text has the same log probabilities whatever
the sampling parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

# The most alternatives a request may ask for per token (OpenAI's top_logprobs bound).
MAX_TOP_LOGPROBS = 20
# What a log probability too small for a float (a logit of -inf) is reported as: OpenAI's value for "very
# unlikely", and a number JSON can carry.
FLOOR = -9999.0


@dataclass(frozen=True)
class Logprobs:
    """The sampled token's log probability, and the `top` most likely tokens' (most likely first)."""

    token: int
    logprob: float
    top_ids: tuple[int, ...] = ()
    top_logprobs: tuple[float, ...] = ()


def logprobs_of(logits: npt.NDArray[np.floating], token: int, top: int) -> Logprobs:
    """Of one row of raw logits: `token`'s log probability and the `top` most likely tokens'. Finds the most
    likely tokens with a partition (no sort of the vocabulary). ValueError if the scores are not finite."""
    row = np.asarray(logits, dtype=np.float32)
    peak = float(row.max())
    with np.errstate(over="ignore", invalid="ignore"):
        mass = float(np.exp(row - np.float32(peak)).sum(dtype=np.float64))
    if not np.isfinite(peak) or not np.isfinite(mass):
        raise ValueError("the model's scores are not finite numbers")
    normaliser = peak + float(np.log(mass))
    ids = _most_likely(row, peak, min(top, len(row)))
    return Logprobs(token, _bounded(float(row[token]) - normaliser), tuple(int(i) for i in ids),
                    tuple(_bounded(float(row[i]) - normaliser) for i in ids))


# How far below the highest logit the most likely tokens are looked for first, then further: a partition of the
# whole vocabulary costs about as much as the rest of a step's sampling together.
_SEARCH_DEPTHS = (2.0, 4.0, 8.0, 16.0, np.inf)


def _most_likely(row: npt.NDArray[np.float32], peak: float, top: int) -> npt.NDArray[np.intp]:
    """The ids of the `top` highest logits, highest first (ties in id order)."""
    if not top:
        return np.zeros(0, dtype=np.intp)
    for depth in _SEARCH_DEPTHS:
        candidates = np.flatnonzero(row >= np.float32(peak - depth))
        if len(candidates) >= top:
            break
    return candidates[np.argsort(-row[candidates], kind="stable")[:top]]


def _bounded(logprob: float) -> float:
    return max(logprob, FLOOR)
