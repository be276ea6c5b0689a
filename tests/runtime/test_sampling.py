"""The sampler (engine/sampling.py), in process: greedy, temperature, nucleus (top_p) and seeds."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from moltbot.engine.sampling import SamplingParams, sample

# Probabilities 0.5, 0.3, 0.15, 0.05 at temperature 1.
LOGITS = np.log(np.array([0.5, 0.3, 0.15, 0.05]))[[2, 0, 3, 1]]  # shuffled: token 1 most likely, then 3, 0, 2


def draws(params: SamplingParams, count: int = 2000, seed: int = 0) -> Counter[int]:
    rng = np.random.default_rng(seed)
    return Counter(sample(LOGITS, params, rng) for _ in range(count))


def test_temperature_zero_is_greedy():
    assert draws(SamplingParams(temperature=0.0), count=50) == Counter({1: 50})


def test_top_p_keeps_the_smallest_set_of_most_likely_tokens_that_reaches_it():
    assert set(draws(SamplingParams(temperature=1.0, top_p=0.45))) == {1}  # 0.5 alone reaches it
    assert set(draws(SamplingParams(temperature=1.0, top_p=0.6))) == {1, 3}  # 0.5 + 0.3
    assert set(draws(SamplingParams(temperature=1.0, top_p=0.9))) == {1, 3, 0}  # 0.5 + 0.3 + 0.15
    assert set(draws(SamplingParams(temperature=1.0, top_p=1.0))) == {0, 1, 2, 3}


def test_top_p_renormalises_what_it_keeps():
    counts = draws(SamplingParams(temperature=1.0, top_p=0.6), count=4000)
    assert abs(counts[1] / 4000 - 0.5 / 0.8) < 0.03  # 0.625 of the kept mass, not 0.5


def test_temperature_below_one_sharpens_and_above_one_flattens():
    cold = draws(SamplingParams(temperature=0.5))
    hot = draws(SamplingParams(temperature=2.0))
    assert cold[1] > draws(SamplingParams(temperature=1.0))[1] > hot[1]
    assert cold[2] < hot[2]


def test_the_same_seed_gives_the_same_tokens():
    params = SamplingParams(temperature=1.0, top_p=0.9)
    rng, again, other = np.random.default_rng(42), np.random.default_rng(42), np.random.default_rng(43)
    tokens = [sample(LOGITS, params, rng) for _ in range(100)]
    assert tokens == [sample(LOGITS, params, again) for _ in range(100)]
    assert tokens != [sample(LOGITS, params, other) for _ in range(100)]


def test_draws_over_a_vocabulary_of_many_blocks_follow_the_softmax():
    """The draw finds a block by its sum, then the token in it: frequencies still follow the probabilities."""
    vocab = 50_000
    logits = np.full(vocab, -30.0)
    picked = {7: 0.4, 255: 0.1, 256: 0.2, 30_001: 0.25, vocab - 1: 0.05}  # block edges and the last token
    for token, p in picked.items():
        logits[token] = np.log(p)
    rng = np.random.default_rng(1)
    counts = Counter(sample(logits, SamplingParams(temperature=1.0), rng) for _ in range(4000))
    assert set(counts) == set(picked)
    for token, p in picked.items():
        assert abs(counts[token] / 4000 - p) < 0.03, (token, counts[token])


def test_top_p_over_a_flat_tail_looks_past_the_first_candidates():
    """When the likely tokens are far below the top_p mass (a flat distribution), the nucleus takes the tail in."""
    logits = np.zeros(5000)
    logits[0] = 2.0  # e^2 / (e^2 + 4999): about 0.15% of the mass
    rng = np.random.default_rng(3)
    drawn = {sample(logits, SamplingParams(temperature=1.0, top_p=0.5), rng) for _ in range(500)}
    assert len(drawn) > 100 and all(0 <= t < 5000 for t in drawn)


def test_scores_that_are_not_numbers_are_refused():
    for bad in (np.array([np.nan, 1.0]), np.array([np.inf, 1.0]), np.array([-np.inf, -np.inf])):
        with pytest.raises(ValueError, match="not finite"):
            sample(bad, SamplingParams(temperature=1.0), np.random.default_rng(0))
