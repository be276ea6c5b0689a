"""The chunk policy for long prompts that arrive while streams run: sized by the prefill stall budget from the
measured prefill rate, against a scripted runner whose prefill costs a known time per token (milliseconds)."""

from __future__ import annotations

import asyncio

import pytest

import moltbot.engine.planner as planner_module
from moltbot.engine.planner import MIN_CHUNK_TOKENS, PREFILL_CHUNK_TOKENS
from moltbot.engine.sampling import SamplingParams
from moltbot.engine.scheduler import GenerationScheduler
from moltbot.engine.tokenizer import TextTokenizer
from tests.runtime.scripted_runner import ScriptedRunner

SECONDS_PER_TOKEN = 0.001


@pytest.fixture(scope="module")
def tokenizer(defaults_dir):
    return TextTokenizer(defaults_dir / "tiny-chat")


def chunks_while_streaming(tokenizer, stall_seconds: float, prompt_tokens: int) -> tuple[list[int], int]:
    """A stream runs; a long prompt arrives. The chunk sizes it was prefilled in, and how many tokens the
    stream made meanwhile."""
    runner = ScriptedRunner(slots=2, seconds_per_token=SECONDS_PER_TOKEN)
    scheduler = GenerationScheduler("chunks", runner, tokenizer, context_length=4096, max_running=2, max_queued=2,
                                    prefill_stall_seconds=stall_seconds)

    async def scenario() -> int:
        loop = asyncio.get_running_loop()
        params = SamplingParams(max_tokens=2000, temperature=0, ignore_eos=True)
        running = scheduler.submit([1, 2, 3], params, 1, loop)
        while len(running.sequences[0].output.generated) < 2:
            await running.next_event()
        newcomer = scheduler.submit(list(range(prompt_tokens)), SamplingParams(max_tokens=1, temperature=0), 1, loop)
        at_submit = len(running.sequences[0].output.generated)
        while not (await newcomer.next_event()).finish_reason:
            pass
        running.cancel()
        return len(running.sequences[0].output.generated) - at_submit

    try:
        during = asyncio.run(scenario())
    finally:
        scheduler.stop()
    return [len(c.tokens) for call in runner.prefills[1:] for c in call], during  # after the stream's prompt


def test_a_long_prompt_goes_in_chunks_that_fit_the_stall_budget(tokenizer):
    """At 1 ms a token and a 64 ms budget a chunk is at most 64 tokens (more time per token measured, on a busy
    machine, makes them smaller, never larger), the chunks add up to the prompt, and the stream steps between
    every two of them."""
    chunks, during = chunks_while_streaming(tokenizer, stall_seconds=0.064, prompt_tokens=600)
    assert sum(chunks) == 600
    assert all(MIN_CHUNK_TOKENS <= size <= 64 for size in chunks)
    assert max(chunks) > MIN_CHUNK_TOKENS  # the measured rate made them grow to the budget
    assert during >= len(chunks) - 1


def test_a_larger_budget_takes_the_largest_chunks(tokenizer):
    chunks, _ = chunks_while_streaming(tokenizer, stall_seconds=10.0, prompt_tokens=1100)
    assert sum(chunks) == 1100
    assert chunks == [PREFILL_CHUNK_TOKENS] * 4 + [1100 - 4 * PREFILL_CHUNK_TOKENS]


def test_chunk_tokens_follow_the_estimates_within_bounds(tokenizer, monkeypatch):
    scheduler = GenerationScheduler("bounds", ScriptedRunner(slots=1), tokenizer, context_length=64,
                                    max_running=1, max_queued=1, prefill_stall_seconds=0.05)
    try:
        assert scheduler.chunk_tokens() == MIN_CHUNK_TOKENS  # nothing timed yet: the smallest chunk
        scheduler._time_prefill(100, 0.1)  # 1 ms a token
        assert scheduler.chunk_tokens() == 50
        scheduler._time_prefill(100, 0.0)  # the estimate moves by 30% of the new figure: 0.7 ms a token
        assert scheduler.chunk_tokens() == 71
        scheduler._time_prefill(100, 10.0)
        assert scheduler.chunk_tokens() == MIN_CHUNK_TOKENS
        scheduler._prefill_token_seconds = None  # start again from 1 ms a token
        scheduler._time_prefill(100, 0.1)
        assert scheduler.chunk_tokens() == 50
        scheduler._time_decode(0.08)  # a decode step longer than the stall budget is the budget
        assert scheduler.chunk_tokens() == 80
        scheduler._time_decode(0.0)  # 0.7 x 80 ms: still longer (56 ms, less a rounding)
        assert scheduler.chunk_tokens() in (55, 56)
        monkeypatch.setattr(planner_module, "PREFILL_CHUNK_TOKENS", 8)
        assert scheduler.chunk_tokens() == 8  # the largest chunk bounds the smallest too
    finally:
        scheduler.stop()
