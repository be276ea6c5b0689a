"""The graph runner interface the scheduler drives, and the choice of runner for a model folder.

A runner owns one decoder session and its KV cache, laid out its graph family's way, in numbered slots:
`prefill` writes prompt tokens into slots, `decode` steps slots by one token, `release` frees a slot. It knows
nothing of requests, sampling or text (scheduler.py, sampling.py, output.py), nor how long a prompt's pieces are:
the scheduler's planner (planner.py) alone decides which tokens go into which slot and when.
- builder_runner.py, family `genai` (the name users see): ONNX Runtime GenAI's builder graphs (one KV buffer for
  past and present, GroupQueryAttention, MatMulNBits int4/int8), preferred;
- optimum_runner.py, family `optimum`: Optimum's exports (KV cache concatenated each step), for the
  architectures the builder does not cover.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from moltbot.engine.builder_runner import BuilderGraphRunner, is_builder_graph
from moltbot.engine.optimum_runner import OptimumRunner
from moltbot.engine.prefill import PrefillChunk
from moltbot.engine.sessions import DeviceOptions

__all__ = ["GraphRunner", "PrefillChunk", "open_runner"]


class GraphRunner(Protocol):
    family: str  # genai | optimum
    precision: str  # fp32 | fp16 | int8 | int4
    provider: str  # the ONNX Runtime execution provider in use
    max_length: int  # the most tokens (prompt + generated) a slot holds
    eos_token_ids: tuple[int, ...]  # end-of-sequence ids the graph's own config names
    slots: int  # slots are numbered 0 .. slots - 1

    def free_slots(self) -> int: ...

    def prefill(self, chunks: list[PrefillChunk]) -> np.ndarray:
        """Write each chunk's tokens into its slot from position `start` (the slot holds the prompt's first
        `start` tokens; a chunk at 0 takes a free slot); returns each chunk's last-token logits [chunks, vocab].
        A slot whose prompt is not whole yet is left out of `decode` until it is. A failure frees the chunks'
        slots."""
        ...

    def decode(self, slots: list[int], tokens: list[int]) -> np.ndarray:
        """One token more for each slot named (with its last token); logits [slots, vocab] in the order given."""
        ...

    def release(self, slot: int) -> None: ...

    def reset(self) -> None:
        """Every slot free: after a failure, so that the next requests start from a consistent state."""
        ...


def open_runner(folder: Path, options: DeviceOptions, slots: int, context_length: int,
                cache_dir: Path | None = None) -> GraphRunner:
    if is_builder_graph(folder):
        return BuilderGraphRunner(folder, options, slots=slots, max_length=context_length, cache_dir=cache_dir)
    return OptimumRunner(folder, options, slots=slots, max_length=context_length, cache_dir=cache_dir)
