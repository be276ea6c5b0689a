"""The model builder's graphs (engine/builder_runner.py) against the reference: transformers on the same weights.

Teacher-forced over 64 steps: the reference's greedy continuation is fed to the graph token by token, and the
graph's own top-1 choice is compared at every step (fp32: identical; int8 >= 0.97; int4 >= 0.9). Also the
runner's slot bookkeeping: rows of different lengths in one step, prefill in place, chunked prefill, holes.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import numpy as np
import pytest

from moltbot.engine.backends.decoder import DecoderBackend
from moltbot.engine.builder_runner import BuilderGraphRunner, builder_precision, is_builder_graph
from moltbot.engine.config import ModelConfig
from moltbot.engine.export_marker import read_marker
from moltbot.engine.prefill import PrefillChunk
from moltbot.engine.sampling import SamplingParams
from moltbot.engine.scheduler import GenerationScheduler
from moltbot.engine.sessions import DeviceOptions
from moltbot.engine.sources import ModelSourceError
from moltbot.engine.tokenizer import TextTokenizer
from moltbot.settings import Settings
from tests.builder_models import BUILDER_PYTHON, ensure_checkpoint, ensure_graph

STEPS = 64
AGREEMENT = {"fp32": 1.0, "int8": 0.97, "int4": 0.9}


@pytest.fixture(scope="module")
def reference():
    """Prompts from the training corpus and transformers' greedy continuations of them (64 tokens each)."""
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    checkpoint = ensure_checkpoint()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    texts = ["The assistant answers questions,", "Operators deploy it with", "def add(a, b):"]
    prompts = [tokenizer(t)["input_ids"] for t in texts]
    continuations = []
    for prompt in prompts:
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), max_new_tokens=STEPS, min_new_tokens=STEPS,
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id)
        continuations.append(out[0, len(prompt):].tolist())
    return prompts, continuations


def runner_of(precision: str, slots: int = 4) -> BuilderGraphRunner:
    return BuilderGraphRunner(ensure_graph(precision), DeviceOptions(intra_op_threads=2), slots=slots, max_length=256)


@pytest.mark.parametrize("precision", ["fp32", "int8", "int4"])
def test_teacher_forced_top1_agreement_with_transformers(reference, precision):
    prompts, continuations = reference
    runner = runner_of(precision)
    slots = list(range(len(prompts)))
    first = runner.prefill([PrefillChunk(slot, p) for slot, p in zip(slots, prompts, strict=True)])
    choices = [[int(row.argmax())] for row in first]
    for step in range(STEPS - 1):
        logits = runner.decode(slots, [c[step] for c in continuations])
        for row, picked in enumerate(choices):
            picked.append(int(logits[row].argmax()))
    agree = sum(a == b for picked, ref in zip(choices, continuations, strict=True)
                for a, b in zip(picked, ref, strict=True))
    ratio = agree / (STEPS * len(prompts))
    print(f"\n{precision}: top-1 agreement with transformers fp32 {ratio:.3f} over {STEPS} steps x {len(prompts)}")
    if precision == "fp32":
        assert choices == continuations
    assert ratio >= AGREEMENT[precision]


def test_graph_family_and_precision_are_read_from_the_folder():
    assert all(is_builder_graph(ensure_graph(p)) for p in ("fp32", "int8", "int4"))
    assert [builder_precision(ensure_graph(p), np.float32) for p in ("fp32", "int8", "int4")] == [
        "fp32", "int8", "int4"]
    assert (read_marker(ensure_graph("int4"))["graph"], read_marker(ensure_graph("int4"))["precision"]) == (
        "genai", "int4")
    assert not is_builder_graph(ensure_checkpoint())


def test_precision_is_read_from_the_graph_when_no_marker_says_it(tmp_path):
    """Folders made by the builder directly carry no moltbot marker: the precision comes from MatMulNBits' bits."""
    for precision in ("int8", "int4"):
        bare = tmp_path / precision
        bare.mkdir()
        (bare / "model.onnx").write_bytes((ensure_graph(precision) / "model.onnx").read_bytes())
        assert builder_precision(bare, np.float32) == precision
    (tmp_path / "fp" / "model.onnx").parent.mkdir()
    (tmp_path / "fp" / "model.onnx").write_bytes((ensure_graph("fp32") / "model.onnx").read_bytes())
    assert builder_precision(tmp_path / "fp", np.float16) == "fp16"


def _greedy(runner: BuilderGraphRunner, prompt: list[int], steps: int) -> list[int]:
    first = runner.prefill([PrefillChunk(0, prompt)])
    tokens = [int(first[0].argmax())]
    for _ in range(steps - 1):
        tokens.append(int(runner.decode([0], [tokens[-1]])[0].argmax()))
    return tokens


def _in_pieces(runner: BuilderGraphRunner, slot: int, prompt: list[int], size: int) -> np.ndarray:
    """The prompt into `slot` a piece of `size` tokens a call; the last piece's logits."""
    for start in range(0, len(prompt), size):
        logits = runner.prefill([PrefillChunk(slot, prompt[start: start + size], start)])
    return logits


def test_rows_of_different_lengths_chunked_prefill_and_holes_give_each_sequence_its_own_tokens(reference):
    prompts, _ = reference
    alone = [_greedy(runner_of("fp32", slots=1), prompt, 12) for prompt in prompts]
    runner = runner_of("fp32", slots=4)
    # Two prompts in one prefill call (slots 0 and 1, one right-padded batch), the third in chunks of 3 tokens.
    first = runner.prefill([PrefillChunk(0, prompts[0]), PrefillChunk(1, prompts[2])])
    chunked = _in_pieces(runner, 2, prompts[1], 3)
    assert list(runner.lengths[:3]) == [len(prompts[0]), len(prompts[2]), len(prompts[1])]
    tokens = {0: [int(first[0].argmax())], 1: [int(first[1].argmax())], 2: [int(chunked[0].argmax())]}
    for _ in range(5):
        logits = runner.decode([0, 1, 2], [tokens[s][-1] for s in (0, 1, 2)])
        for row, slot in enumerate((0, 1, 2)):
            tokens[slot].append(int(logits[row].argmax()))
    # Slot 1 leaves: a hole below the highest slot, stepped as a dummy row; the others go on unchanged.
    runner.release(1)
    assert runner.free_slots() == 2 and list(runner.lengths[:3] > 0) == [True, False, True]
    for _ in range(6):
        logits = runner.decode([2, 0], [tokens[2][-1], tokens[0][-1]])  # in any order
        tokens[2].append(int(logits[0].argmax()))
        tokens[0].append(int(logits[1].argmax()))
    assert tokens[0] == alone[0] and tokens[2] == alone[1] and tokens[1] == alone[2][:6]
    # A newcomer takes the hole and is prefilled in place; the neighbours' caches are untouched.
    newcomer = runner.prefill([PrefillChunk(1, prompts[2])])
    assert int(newcomer[0].argmax()) == alone[2][0]
    assert list(runner.lengths[:3]) == [len(prompts[0]) + 11, len(prompts[2]), len(prompts[1]) + 11]
    with pytest.raises(ValueError, match="distinct slots in use"):
        runner.decode([0, 3], [1, 1])  # slot 3 is free
    with pytest.raises(ValueError, match="distinct slots in use"):
        runner.decode([0, 0], [1, 1])


def test_a_prompt_prefilled_in_chunks_between_decode_steps_of_others_gets_its_own_tokens(reference):
    """Chunked prefill between steps: the long prompt's slot sits below and between running rows, is stepped as a
    dummy row that advances nothing while its chunks go in, and then continues exactly as alone, as do the
    others."""
    prompts, _ = reference
    alone = [_greedy(runner_of("fp32", slots=1), prompt, 10) for prompt in prompts]
    runner = runner_of("fp32", slots=4)
    first = runner.prefill([PrefillChunk(0, prompts[0]), PrefillChunk(1, prompts[2])])
    runner.release(0)  # slot 0 free: taken again, and the chunked prompt goes into slot 2, above the running 1
    again = runner.prefill([PrefillChunk(0, prompts[0])])
    tokens = {0: [int(again[0].argmax())], 1: [int(first[1].argmax())]}
    for start in range(0, len(prompts[1]), 2):
        logits = runner.prefill([PrefillChunk(2, prompts[1][start: start + 2], start)])
        step = runner.decode([0, 1], [tokens[0][-1], tokens[1][-1]])  # the chunked slot left out
        tokens[0].append(int(step[0].argmax()))
        tokens[1].append(int(step[1].argmax()))
        assert runner.lengths[2] == min(start + 2, len(prompts[1]))
    tokens[2] = [int(logits[0].argmax())]
    while len(tokens[2]) < 10:
        step = runner.decode([2, 0, 1], [tokens[2][-1], tokens[0][-1], tokens[1][-1]])
        for row, s in enumerate((2, 0, 1)):
            tokens[s].append(int(step[row].argmax()))
    assert tokens[2][:10] == alone[1] and tokens[0][:10] == alone[0] and tokens[1][:10] == alone[2]
    with pytest.raises(ValueError, match="does not fit"):
        runner.prefill([PrefillChunk(3, list(range(5, 5 + runner.max_length)))])
    assert runner.free_slots() == 1  # the refused prompt took no slot


def test_prompts_that_do_not_fit_and_busy_slots_are_refused():
    runner = runner_of("fp32", slots=2)
    with pytest.raises(ValueError, match="does not fit"):
        runner.prefill([PrefillChunk(0, [5] * 256)])
    runner.prefill([PrefillChunk(0, [5, 6, 7]), PrefillChunk(1, [8])])
    with pytest.raises(ValueError, match="holds 3 tokens, not 0"):
        runner.prefill([PrefillChunk(0, [5])])  # a slot in use
    with pytest.raises(ValueError, match="holds 1 tokens, not 4"):
        runner.prefill([PrefillChunk(1, [5], start=4)])  # a continuation must follow what the slot holds
    with pytest.raises(ValueError, match="distinct slots"):
        runner.prefill([PrefillChunk(2, [5])])  # no such slot
    assert list(runner.lengths) == [3, 1]  # refused calls leave the slots as they were


@pytest.mark.parametrize("precision", ["fp32", "int4"])
def test_the_scheduler_over_a_builder_graph_gives_the_same_tokens_alone_and_in_a_shared_batch(reference, precision):
    """fp32: transformers' tokens. int4: its own tokens alone and batched are the same (a quantised graph's choices
    may differ from fp32's; they must not depend on what else is in the batch)."""
    prompts, continuations = reference
    tokenizer = TextTokenizer(ensure_graph(precision))
    scheduler = GenerationScheduler(f"builder-{precision}", runner_of(precision), tokenizer, context_length=256,
                                    max_running=4, max_queued=4)
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)

    async def generate(prompt: list[int]) -> list[int]:
        handle = scheduler.submit(prompt, params, 1, asyncio.get_running_loop())
        while not (await handle.next_event()).finish_reason:
            pass
        return handle.sequences[0].output.generated

    async def scenario() -> tuple[list[list[int]], list[list[int]]]:
        alone = [await generate(p) for p in prompts]
        return alone, list(await asyncio.gather(*(generate(p) for p in prompts)))

    try:
        alone, together = asyncio.run(scenario())
    finally:
        scheduler.stop()
    assert alone == together
    if precision == "fp32":
        assert alone == [c[:24] for c in continuations]


def test_a_long_newcomer_is_prefilled_in_chunks_while_the_running_stream_goes_on(reference, monkeypatch):
    """While a sequence runs, a prompt longer than PREFILL_CHUNK_TOKENS goes in a chunk a pass with a decode step
    of the running one between chunks (its stream does not stall for the whole prefill), and both get exactly
    the tokens they get alone."""
    import moltbot.engine.planner as planner_module

    monkeypatch.setattr(planner_module, "PREFILL_CHUNK_TOKENS", 1)  # the test prompts are a few tokens long
    prompts, continuations = reference
    long_prompt = prompts[1]
    chunks = len(long_prompt)
    assert chunks >= 3
    scheduler = GenerationScheduler("builder-chunks", runner_of("fp32"), TextTokenizer(ensure_graph("fp32")),
                                    context_length=256, max_running=4, max_queued=4)

    async def scenario() -> tuple[list[int], list[int], int]:
        loop = asyncio.get_running_loop()
        running = scheduler.submit(prompts[0], SamplingParams(max_tokens=40, temperature=0, ignore_eos=True), 1,
                                   loop)
        while len(running.sequences[0].output.generated) < 3:
            await running.next_event()
        newcomer = scheduler.submit(long_prompt, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True), 1,
                                    loop)
        at_submit = len(running.sequences[0].output.generated)
        await newcomer.next_event()  # its first token: the prompt is whole
        during = len(running.sequences[0].output.generated) - at_submit
        while not (await newcomer.next_event()).finish_reason:
            pass
        while not (await running.next_event()).finish_reason:
            pass
        return running.sequences[0].output.generated, newcomer.sequences[0].output.generated, during

    try:
        first, second, during = asyncio.run(scenario())
    finally:
        scheduler.stop()
    assert during >= chunks - 1  # a step of the running stream between each two chunks
    assert first == continuations[0][:40] and second == continuations[1][:12]


def test_a_checkpoint_config_asking_for_int4_is_built_once_by_the_builder_and_served(tmp_path):
    settings = Settings.load({"cache_dir": str(tmp_path / "cache"), "builder_python": str(BUILDER_PYTHON),
                              "max_running": "2"}, environ={})
    config = ModelConfig.from_dict({"name": "tiny-int4", "source": "local", "path": str(ensure_checkpoint()),
                                    "quantize": "int4", "max_tokens": 256})
    backend = DecoderBackend.load(config, ensure_checkpoint(), settings)
    try:
        info = backend.describe()
        assert (info.graph, info.precision, info.provider) == ("genai", "int4", "CPUExecutionProvider")
        built = list((tmp_path / "cache" / "exports").iterdir())
        assert len(built) == 1 and "int4" in built[0].name
    finally:
        asyncio.run(backend.close())
    # Without the builder, int4 cannot be had: the error says how to get it.
    no_builder = Settings.load({"cache_dir": str(tmp_path / "other")}, environ={})
    with pytest.raises(ModelSourceError, match="int4"):
        DecoderBackend.load(config, ensure_checkpoint(), no_builder)


def test_models_export_makes_a_builder_graph_or_says_why_not(tmp_path):
    out = tmp_path / "int8"
    made = subprocess.run([sys.executable, "-m", "moltbot", "models", "export", str(ensure_checkpoint()), str(out),
                           "--precision", "int8", "--builder-python", str(BUILDER_PYTHON)],
                          capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    assert is_builder_graph(out) and read_marker(out)["precision"] == "int8"
    refused = subprocess.run([sys.executable, "-m", "moltbot", "models", "export", str(ensure_checkpoint()),
                              str(tmp_path / "no"), "--precision", "int4", "--graph", "optimum"],
                             capture_output=True, text=True)
    assert refused.returncode == 1 and "int4 graphs come only from the model builder" in refused.stderr
    assert not (tmp_path / "no").exists()


def test_a_builder_graph_with_external_weights_loads_again_from_the_same_cache_dir(tmp_path):
    """The optimised-graph cache skips graphs with external weight files (a cached copy would point at weights
    that are not beside it, and the next load would fail)."""
    assert (ensure_graph("int4") / "model.onnx.data").exists()
    for _ in range(2):
        runner = BuilderGraphRunner(ensure_graph("int4"), DeviceOptions(intra_op_threads=2), slots=1, max_length=64,
                                cache_dir=tmp_path)
        logits = runner.prefill([PrefillChunk(0, [5, 6, 7])])
        assert logits.shape[0] == 1 and np.isfinite(logits).all()
    assert not list(tmp_path.rglob("*.onnx"))


def test_the_cpu_int8_graph_is_the_builders_8bit_matmulnbits(tmp_path):
    """int8 on the CPU: the builder's own 8-bit MatMulNBits (block-quantised activations), not the fp32 graph with
    dynamically quantised MatMuls, whose per-tensor activation scale failed on real weights (#21,
    test_int8_real_weights.py); its precision is read from the graph itself for a graph made elsewhere."""
    int8 = ensure_graph("int8")
    graph = (int8 / "model.onnx").read_bytes()
    assert b"MatMulNBits" in graph and b"MatMulInteger" not in graph and b"GroupQueryAttention" in graph
    marker = int8 / "moltbot-export.json"
    marker.rename(tmp_path / "marker")
    try:
        assert builder_precision(int8, np.float32) == "int8"
    finally:
        (tmp_path / "marker").rename(marker)
    runner = BuilderGraphRunner(int8, DeviceOptions(intra_op_threads=2), slots=1, max_length=64, cache_dir=tmp_path)
    logits = runner.prefill([PrefillChunk(0, [5, 6, 7])])
    assert np.isfinite(logits).all()


def test_a_prefill_that_fails_half_way_gives_its_slots_back(monkeypatch):
    runner = runner_of("fp32", slots=2)
    run = runner._run
    calls = 0

    def failing_third_graph_call(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("out of memory")
        return run(*args, **kwargs)

    monkeypatch.setattr(runner, "_run", failing_third_graph_call)
    runner.prefill([PrefillChunk(1, [5, 6, 7, 8])])  # the first piece of a prompt in slot 1
    with pytest.raises(RuntimeError, match="out of memory"):
        # one call, two graph calls: slot 0's new prompt, then slot 1's second piece, which fails
        runner.prefill([PrefillChunk(0, [9, 10]), PrefillChunk(1, [11, 12], start=4)])
    assert runner.free_slots() == 2 and list(runner.lengths) == [0, 0]
    monkeypatch.setattr(runner, "_run", run)
    runner.prefill([PrefillChunk(0, [5, 6]), PrefillChunk(1, [7, 8, 9])])
    assert list(runner.lengths) == [2, 3]


def test_a_cuda_kv_cache_over_gpu_mem_limit_is_refused_with_its_size(monkeypatch):
    """On CUDA the KV buffers are allocated whole at load: a cache over gpu_mem_limit is refused with the sizes
    (the provider is stood in for: no GPU here; the check runs before any device allocation)."""
    import moltbot.engine.builder_runner as builder_runner

    monkeypatch.setattr(builder_runner, "active_provider", lambda session: "CUDAExecutionProvider")
    with pytest.raises(ValueError, match=r"needs .* GiB, over gpu_mem_limit"):
        BuilderGraphRunner(ensure_graph("fp32"), DeviceOptions(device="cuda", gpu_mem_limit=1024), slots=4,
                       max_length=256)
