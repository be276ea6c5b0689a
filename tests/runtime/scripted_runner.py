"""A graph runner without a graph, for the scheduler's tests: slots with lengths, a known cost per prompt token,
logits that always favour one token, and a record of every call it is given (milliseconds, not a model)."""

from __future__ import annotations

import threading
import time

import numpy as np

from moltbot.engine.prefill import PrefillChunk

VOCAB = 64
FAVOURED = 7  # every row's greedy token


class ScriptedRunner:
    family, precision, provider, max_length, eos_token_ids = "scripted", "fp32", "CPUExecutionProvider", 4096, ()

    def __init__(self, slots: int, seconds_per_token: float = 0.0, gate: threading.Event | None = None):
        self.slots = slots
        self.lengths = [0] * slots
        self.seconds_per_token = seconds_per_token
        self.gate = gate  # where set, a prefill waits for it: a window in which a test acts mid-prefill
        self.prefills: list[list[PrefillChunk]] = []
        self.decodes: list[list[int]] = []

    def free_slots(self) -> int:
        return self.lengths.count(0)

    def _logits(self, rows: int) -> np.ndarray:
        logits = np.zeros((rows, VOCAB), dtype=np.float32)
        logits[:, FAVOURED] = 10.0
        return logits

    def prefill(self, chunks: list[PrefillChunk]) -> np.ndarray:
        if self.gate is not None:
            self.gate.wait()
        for chunk in chunks:
            assert self.lengths[chunk.slot] == chunk.start, "a chunk must continue what its slot holds"
            self.lengths[chunk.slot] = chunk.end
        self.prefills.append(chunks)
        time.sleep(self.seconds_per_token * sum(len(c.tokens) for c in chunks))
        return self._logits(len(chunks))

    def decode(self, slots: list[int], tokens: list[int]) -> np.ndarray:
        assert slots and all(self.lengths[s] for s in slots) and len(set(slots)) == len(slots)
        for slot in slots:
            self.lengths[slot] += 1
        self.decodes.append(list(slots))
        return self._logits(len(slots))

    def release(self, slot: int) -> None:
        self.lengths[slot] = 0

    def reset(self) -> None:
        self.lengths = [0] * len(self.lengths)
