"""The sampler (engine/sampling.py), in process: greedy, temperature, nucleus (top_p) and seeds."""

from __future__ import annotations

from collections import Counter

import numpy as np

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
