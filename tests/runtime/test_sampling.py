"""The sampling pipeline (engine/sampling.py, engine/logprobs.py), in process: greedy, temperature, logit_bias,
penalties, top-k / top-p / min-p, seeds, log probabilities, and a batch giving what its rows give alone."""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytest

from moltbot.engine.grammar import Constraint
from moltbot.engine.logprobs import FLOOR, logprobs_of
from moltbot.engine.sampling import SamplingParams, TokenCounts, sample_batch

# Probabilities 0.5, 0.3, 0.15, 0.05 at temperature 1.
LOGITS = np.log(np.array([0.5, 0.3, 0.15, 0.05]))[[2, 0, 3, 1]]  # shuffled: token 1 most likely, then 3, 0, 2


@dataclass
class Row:
    """A sequence as the pipeline reads it (the scheduler's Sequence in the server)."""

    params: SamplingParams
    rng: np.random.Generator
    counts: TokenCounts | None
    constraint: Constraint | None = None


def row(seed: int = 0, prompt: tuple[int, ...] = (), **params) -> Row:
    p = SamplingParams(**params)
    return Row(p, np.random.default_rng(seed), TokenCounts(list(prompt)) if p.penalised else None,
               p.grammar.matcher() if p.grammar else None)


def pick(logits, sequence: Row) -> int:
    [sampled] = sample_batch(np.asarray(logits, dtype=np.float32)[None], [sequence])
    assert sampled is not None and sampled.error is None, sampled
    return sampled.token


def draws(count: int = 2000, seed: int = 0, logits=LOGITS, **params) -> Counter[int]:
    sequence = row(seed, **params)
    return Counter(pick(logits, sequence) for _ in range(count))


def log_softmax(logits) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    return x - x.max() - np.log(np.exp(x - x.max()).sum())


# ---- greedy, temperature, top-p, seeds -----------------------------------------------------------------------------
def test_temperature_zero_is_greedy():
    assert draws(count=50, temperature=0.0) == Counter({1: 50})


def test_top_p_keeps_the_smallest_set_of_most_likely_tokens_that_reaches_it():
    assert set(draws(temperature=1.0, top_p=0.45)) == {1}  # 0.5 alone reaches it
    assert set(draws(temperature=1.0, top_p=0.6)) == {1, 3}  # 0.5 + 0.3
    assert set(draws(temperature=1.0, top_p=0.9)) == {1, 3, 0}  # 0.5 + 0.3 + 0.15
    assert set(draws(temperature=1.0, top_p=1.0)) == {0, 1, 2, 3}


def test_top_p_renormalises_what_it_keeps():
    counts = draws(count=4000, temperature=1.0, top_p=0.6)
    assert abs(counts[1] / 4000 - 0.5 / 0.8) < 0.03  # 0.625 of the kept mass, not 0.5


def test_temperature_below_one_sharpens_and_above_one_flattens():
    cold, hot = draws(temperature=0.5), draws(temperature=2.0)
    assert cold[1] > draws(temperature=1.0)[1] > hot[1]
    assert cold[2] < hot[2]


def test_the_same_seed_gives_the_same_tokens():
    def tokens(seed: int) -> list[int]:
        sequence = row(seed, temperature=1.0, top_p=0.9)
        return [pick(LOGITS, sequence) for _ in range(100)]

    assert tokens(42) == tokens(42)
    assert tokens(42) != tokens(43)


def test_draws_over_a_vocabulary_of_many_blocks_follow_the_softmax():
    """The draw finds a block by its sum, then the token in it: frequencies still follow the probabilities."""
    vocab = 50_000
    logits = np.full(vocab, -30.0)
    picked = {7: 0.4, 255: 0.1, 256: 0.2, 30_001: 0.25, vocab - 1: 0.05}  # block edges and the last token
    for token, p in picked.items():
        logits[token] = np.log(p)
    counts = draws(count=4000, seed=1, logits=logits, temperature=1.0)
    assert set(counts) == set(picked)
    for token, p in picked.items():
        assert abs(counts[token] / 4000 - p) < 0.03, (token, counts[token])


def test_top_p_over_a_flat_tail_looks_past_the_first_candidates():
    """When the likely tokens are far below the top_p mass (a flat distribution), the nucleus takes the tail in."""
    logits = np.zeros(5000)
    logits[0] = 2.0  # e^2 / (e^2 + 4999): about 0.15% of the mass
    drawn = set(draws(count=500, seed=3, logits=logits, temperature=1.0, top_p=0.5))
    assert len(drawn) > 100 and all(0 <= t < 5000 for t in drawn)


def test_scores_that_are_not_numbers_are_refused():
    for bad in (np.array([np.nan, 1.0]), np.array([np.inf, 1.0]), np.array([-np.inf, -np.inf])):
        [sampled] = sample_batch(bad[None], [row(temperature=1.0)])
        assert sampled is not None and sampled.error and "not finite" in sampled.error


# ---- top-k, min-p ----------------------------------------------------------------------------------------------------
def test_top_k_one_is_greedy_and_top_k_keeps_the_k_most_likely():
    logits = np.random.default_rng(5).normal(size=3000) * 3
    best = int(np.argmax(logits))
    assert set(draws(count=200, logits=logits, temperature=1.5, top_k=1)) == {best}
    assert set(draws(count=2000, logits=logits, temperature=1.0, top_k=3)) == set(np.argsort(-logits)[:3])
    assert set(draws(temperature=1.0, top_k=2)) == {1, 3}
    assert set(draws(temperature=1.0, top_k=4)) == set(draws(temperature=1.0, top_k=0)) == {0, 1, 2, 3}


def test_min_p_removes_the_tokens_below_its_share_of_the_most_likely():
    # Relative to the most likely token's 0.5: 1, 0.6, 0.3, 0.1.
    assert set(draws(temperature=1.0, min_p=0.35)) == {1, 3}
    assert set(draws(temperature=1.0, min_p=0.25)) == {1, 3, 0}
    assert set(draws(temperature=1.0, min_p=1.0)) == {1}


def test_top_p_is_taken_over_what_top_k_and_min_p_leave():
    # top_k 3 leaves 0.95 of the mass: 0.5 / 0.95 < 0.6 of it, so the nucleus needs the next token too.
    assert set(draws(temperature=1.0, top_k=3, top_p=0.6)) == {1, 3}
    assert set(draws(temperature=1.0, top_k=3, top_p=0.5)) == {1}
    assert set(draws(temperature=1.0, min_p=0.25, top_p=0.55)) == {1, 3}  # 0.5 / 0.95 < 0.55


# ---- logit_bias and penalties ------------------------------------------------------------------------------------
def test_logit_bias_flips_the_greedy_choice_and_minus_100_bans_a_token():
    assert pick(LOGITS, row(temperature=0.0)) == 1
    assert pick(LOGITS, row(temperature=0.0, logit_bias=((2, 5.0),))) == 2
    banned = draws(count=3000, temperature=1.5, logit_bias=((1, -100.0), (3, -100.0)))
    assert set(banned) == {0, 2}
    assert pick(LOGITS, row(temperature=0.0, logit_bias=((1, -100.0),))) == 3


def test_repetition_penalty_divides_positive_logits_and_multiplies_negative_ones():
    logits = np.array([2.0, -1.0, 1.5, 0.5], dtype=np.float32)
    counts = TokenCounts([0, 1])  # tokens of the prompt count too
    adjusted = logits.copy()
    counts.apply(adjusted, SamplingParams(repetition_penalty=2.0))
    assert adjusted.tolist() == [1.0, -2.0, 1.5, 0.5]
    assert pick(logits, row(temperature=0.0)) == 0
    assert pick(logits, row(temperature=0.0, repetition_penalty=2.0, prompt=(0, 1))) == 2  # the argmax flips


def test_frequency_penalty_counts_occurrences_and_presence_penalty_only_presence():
    logits = np.array([1.0, 0.9, 0.0], dtype=np.float32)

    def greedy(steps: int = 4, **params) -> list[int]:
        sequence = row(temperature=0.0, **params)
        return [pick(logits, sequence) for _ in range(steps)]

    assert greedy() == [0, 0, 0, 0]
    # frequency 0.2: token 0 at 1.0, 0.8, 0.6 after 0, 1, 2 occurrences; token 1 at 0.9, 0.7
    assert greedy(frequency_penalty=0.2) == [0, 1, 0, 1]
    # presence 0.5: each token loses 0.5 once it came, however often
    assert greedy(presence_penalty=0.5) == [0, 1, 0, 0]
    # the prompt does not count for them (it does for repetition_penalty)
    assert greedy(presence_penalty=0.5, prompt=(1,)) == [0, 1, 0, 0]
    assert greedy(frequency_penalty=-0.5) == [0, 0, 0, 0]  # a negative penalty favours repeats


def test_token_counts_kept_incrementally_equal_a_recount_of_the_history():
    rng = np.random.default_rng(9)
    prompt = rng.integers(0, 50, size=40).tolist()
    params = SamplingParams(repetition_penalty=1.3, presence_penalty=0.4, frequency_penalty=0.25)
    counts = TokenCounts(prompt)
    logits = rng.normal(size=64).astype(np.float32)
    output: list[int] = []
    for _ in range(300):
        got = logits.copy()
        counts.apply(got, params)
        expected = logits.astype(np.float64)
        seen = sorted(set(prompt) | set(output))
        expected[seen] = np.where(expected[seen] > 0, expected[seen] / 1.3, expected[seen] * 1.3)
        occurrences = np.bincount(output, minlength=64)
        expected -= 0.4 * (occurrences > 0) + 0.25 * occurrences
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
        token = int(rng.integers(0, 64))
        counts.add(token)
        output.append(token)


# ---- log probabilities ---------------------------------------------------------------------------------------------
def test_logprobs_are_the_raw_log_softmax_normalised_and_most_likely_first():
    logits = np.random.default_rng(2).normal(size=1000).astype(np.float32) * 4
    expected = log_softmax(logits)
    full = logprobs_of(logits, 17, top=1000)
    assert abs(np.exp(np.array(full.top_logprobs, dtype=np.float64)).sum() - 1.0) < 1e-4
    assert full.logprob == pytest.approx(expected[17], abs=1e-4)
    top = logprobs_of(logits, 17, top=5)
    assert list(top.top_ids) == list(np.argsort(-logits)[:5])
    assert list(top.top_logprobs) == sorted(top.top_logprobs, reverse=True)
    np.testing.assert_allclose(top.top_logprobs, expected[list(top.top_ids)], atol=1e-4)
    assert logprobs_of(logits, 17, top=0).top_ids == ()


def test_logprobs_are_of_the_raw_distribution_whatever_picked_the_token():
    logits = np.random.default_rng(4).normal(size=500).astype(np.float32)
    raw = log_softmax(logits)
    [sampled] = sample_batch(logits[None], [row(temperature=0.3, top_k=5, logit_bias=((3, 50.0),),
                                                presence_penalty=1.0, logprobs=2)])
    assert sampled is not None and sampled.token == 3 and sampled.logprobs is not None  # the bias chose it
    assert sampled.logprobs.logprob == pytest.approx(raw[3], abs=1e-4)  # not the biased, sharpened one
    assert list(sampled.logprobs.top_ids) == list(np.argsort(-logits)[:2])


def test_logprobs_of_impossible_tokens_are_floored_and_nan_is_refused():
    logits = np.array([0.0, -np.inf, 1.0], dtype=np.float32)
    assert logprobs_of(logits, 1, top=3).logprob == FLOOR
    assert logprobs_of(logits, 1, top=3).top_logprobs[-1] == FLOOR
    with pytest.raises(ValueError, match="not finite"):
        logprobs_of(np.array([np.nan, 1.0], dtype=np.float32), 0, top=1)
    [greedy] = sample_batch(np.array([[np.nan, 1.0]], dtype=np.float32), [row(temperature=0.0, logprobs=1)])
    assert greedy is not None and greedy.error and "not finite" in greedy.error


# ---- the batch ---------------------------------------------------------------------------------------------------
MIXED = [dict(temperature=0.0), dict(temperature=0.0, logit_bias=((11, 3.0),)), dict(temperature=1.0, top_p=0.8),
         dict(temperature=0.7, top_k=20, logprobs=3), dict(temperature=1.2, min_p=0.05),
         dict(temperature=0.0, repetition_penalty=1.5, frequency_penalty=0.3, logprobs=0),
         dict(temperature=0.9, presence_penalty=1.0, logit_bias=((2, -100.0),))]


def test_a_batch_gives_what_each_row_gives_alone_and_leaves_the_logits_as_they_were():
    rng = np.random.default_rng(6)
    batch = [row(seed=i, prompt=(1, 2, 3), **params) for i, params in enumerate(MIXED)]
    alone = copy.deepcopy(batch)
    for _ in range(30):
        logits = (rng.normal(size=(len(batch), 400)) * 2).astype(np.float32)
        before = logits.copy()
        together = sample_batch(logits, batch)
        np.testing.assert_array_equal(logits, before)
        for i, sequence in enumerate(alone):
            [single] = sample_batch(logits[i:i + 1], [sequence])
            assert together[i] is not None and single is not None
            assert together[i].token == single.token
            assert together[i].logprobs == single.logprobs
            assert (single.logprobs is None) == (sequence.params.logprobs is None)


def test_a_row_that_fails_fails_alone_and_rows_that_left_are_skipped():
    logits = np.random.default_rng(7).normal(size=(4, 50)).astype(np.float32)
    logits[1, 5] = np.nan
    first, failed, gone, last = sample_batch(logits, [row(temperature=1.0), row(temperature=1.0), None,
                                                      row(temperature=0.0)])
    assert first is not None and first.error is None and 0 <= first.token < 50
    assert failed is not None and failed.error and failed.token == -1
    assert gone is None
    assert last is not None and last.token == int(np.argmax(logits[3]))


def test_extreme_values_within_the_bounds_stay_finite():
    """A temperature too small to divide by is greedy (as vLLM has it); a repetition_penalty near 0 saturates the
    seen tokens' logits instead of making them infinite (which would fail the row)."""
    logits = np.random.default_rng(8).normal(size=300).astype(np.float32)
    assert pick(logits, row(temperature=1e-300)) == int(np.argmax(logits))
    logits[4], logits[5] = 0.5, -0.5
    for temperature in (0.0, 1.0, 1e-5):
        sequence = row(temperature=temperature, repetition_penalty=5e-324, prompt=(4, 5))
        assert pick(logits, sequence) == 4  # the seen positive logit wins by far, the seen negative one is 0
