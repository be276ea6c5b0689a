"""The graph runner interface the scheduler drives, and the choice of runner for a model folder.

A runner owns one decoder session and its KV cache, laid out its graph family's way, and hands out numbered
slots: `prefill` puts prompts into free slots, `decode` steps every slot in use by one token, `release` frees a
slot. It knows nothing of requests, sampling or text (scheduler.py, sampling.py, output.py).
- builder_runner.py, family `genai`: ONNX Runtime GenAI's builder graphs (one KV buffer for past and present,
  GroupQueryAttention, MatMulNBits int4/int8), preferred;
- optimum_runner.py, family `optimum`: Optimum's exports (KV cache concatenated each step), for the
  architectures the builder does not cover.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from moltbot.engine.builder_runner import BuilderGraphRunner, is_builder_graph
from moltbot.engine.optimum_runner import OptimumRunner
from moltbot.engine.sessions import DeviceOptions


class GraphRunner(Protocol):
    family: str  # genai | optimum
    precision: str  # fp32 | fp16 | int8 | int4
    provider: str  # the ONNX Runtime execution provider in use
    max_length: int  # the most tokens (prompt + generated) a slot holds
    eos_token_ids: tuple[int, ...]  # end-of-sequence ids the graph's own config names

    def free_slots(self) -> int: ...

    def prefill(self, prompts: list[list[int]], token_budget: int) -> tuple[list[int], np.ndarray]:
        """Each prompt's slot and its last-position logits [prompts, vocab]."""
        ...

    def decode(self, slots: list[int], tokens: list[int]) -> np.ndarray:
        """One token more for every slot in use; logits [slots, vocab] in the order given."""
        ...

    def release(self, slot: int) -> None: ...

    def reset(self) -> None:
        """Every slot free: after a failure, so that the next requests start from a consistent state."""
        ...


@runtime_checkable
class ChunkedPrefillRunner(Protocol):
    """A runner that can prefill a prompt in chunks with decode steps of the others between them (builder_runner.py)."""

    def prefill_chunk(self, slot: int | None, tokens: list[int]) -> tuple[int, np.ndarray]:
        """Append `tokens` to the slot's cache (a new slot when None); the slot, and the last token's logits.
        Until its prompt is whole, `decode` leaves such a slot out of `slots` and does not advance it."""
        ...


def open_runner(folder: Path, options: DeviceOptions, slots: int, context_length: int,
                cache_dir: Path | None = None) -> GraphRunner:
    if is_builder_graph(folder):
        return BuilderGraphRunner(folder, options, slots=slots, max_length=context_length, cache_dir=cache_dir)
    return OptimumRunner(folder, options, slots=slots, max_length=context_length, cache_dir=cache_dir)
