"""The model builder's graphs (engine/shared_kv.py) against the reference: transformers on the same weights.

Teacher-forced over 64 steps: the reference's greedy continuation is fed to the graph token by token, and the
graph's own top-1 choice is compared at every step (fp32: identical; int8 >= 0.97; int4 >= 0.9). Also the
runner's slot bookkeeping: rows of different lengths in one step, prefill in place, chunked prefill, holes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from moltbot.engine.sessions import DeviceOptions
from moltbot.engine.shared_kv import SharedKVRunner, genai_precision, is_shared_kv_graph
from tests.builder_models import ensure_checkpoint, ensure_graph

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


def runner_of(precision: str, slots: int = 4) -> SharedKVRunner:
    return SharedKVRunner(ensure_graph(precision), DeviceOptions(intra_op_threads=2), slots=slots, max_length=256)


@pytest.mark.parametrize("precision", ["fp32", "int8", "int4"])
def test_teacher_forced_top1_agreement_with_transformers(reference, precision):
    prompts, continuations = reference
    runner = runner_of(precision)
    first = runner.prefill(list(range(len(prompts))), prompts, token_budget=1024)
    choices = [[int(row.argmax())] for row in first]
    for step in range(STEPS - 1):
        logits = runner.decode(np.array([c[step] for c in continuations]))
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
    assert all(is_shared_kv_graph(ensure_graph(p)) for p in ("fp32", "int8", "int4"))
    assert [genai_precision(ensure_graph(p)) for p in ("fp32", "int8", "int4")] == ["fp32", "int8", "int4"]
    meta = json.loads((ensure_graph("int4") / "moltbot-export.json").read_text())
    assert (meta["graph"], meta["precision"]) == ("genai", "int4")
    assert not is_shared_kv_graph(ensure_checkpoint())


def _greedy(runner: SharedKVRunner, slot: int, prompt: list[int], steps: int, budget: int = 1024) -> list[int]:
    tokens = [int(runner.prefill([slot], [prompt], budget)[0].argmax())]
    for _ in range(steps - 1):
        row = np.zeros(runner.high(), dtype=np.int64)
        row[slot] = tokens[-1]
        tokens.append(int(runner.decode(row)[slot].argmax()))
    return tokens


def test_rows_of_different_lengths_chunked_prefill_and_holes_give_each_sequence_its_own_tokens(reference):
    prompts, _ = reference
    alone = []
    for prompt in prompts:
        runner = runner_of("fp32", slots=1)
        alone.append(_greedy(runner, 0, prompt, 12))
    runner = runner_of("fp32", slots=4)
    # Slots 0 and 2 in one prefill call (not contiguous: two groups), slot 1 in chunks of 3 tokens.
    first = runner.prefill([0, 2], [prompts[0], prompts[2]], token_budget=1024)
    chunked = runner.prefill([1], [prompts[1]], token_budget=3)
    assert list(runner.lengths[:3]) == [len(prompts[0]), len(prompts[1]), len(prompts[2])]
    tokens = [[int(first[0].argmax())], [int(chunked[0].argmax())], [int(first[1].argmax())]]
    for _ in range(5):
        logits = runner.decode(np.array([t[-1] for t in tokens]))
        for row, seq in enumerate(tokens):
            seq.append(int(logits[row].argmax()))
    # Slot 1 leaves: a hole below `high`, stepped as a dummy row; the others go on unchanged.
    runner.release(1)
    assert runner.free_slot() == 1 and runner.high() == 3
    for _ in range(6):
        logits = runner.decode(np.array([tokens[0][-1], 0, tokens[2][-1]]))
        tokens[0].append(int(logits[0].argmax()))
        tokens[2].append(int(logits[2].argmax()))
    assert tokens[0] == alone[0] and tokens[2] == alone[2] and tokens[1] == alone[1][:6]
    # A newcomer takes the hole and is prefilled in place; the neighbours' caches are untouched.
    newcomer = runner.prefill([1], [prompts[1]], token_budget=1024)
    assert int(newcomer[0].argmax()) == alone[1][0]
    assert list(runner.lengths[:3]) == [len(prompts[0]) + 11, len(prompts[1]), len(prompts[2]) + 11]


def test_prompts_that_do_not_fit_and_busy_slots_are_refused():
    runner = runner_of("fp32", slots=2)
    with pytest.raises(ValueError, match="does not fit"):
        runner.prefill([0], [[5] * 256], token_budget=1024)
    runner.prefill([0], [[5, 6, 7]], token_budget=1024)
    with pytest.raises(ValueError, match="in use"):
        runner.prefill([0], [[5]], token_budget=1024)
