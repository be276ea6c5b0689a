"""What a prefill call is given: a piece of one prompt and the slot it goes into (runner.py's `prefill`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PrefillChunk:
    """Prompt tokens [start, start + len(tokens)) into `slot`, which holds the prompt's first `start` tokens."""

    slot: int
    tokens: list[int]
    start: int = 0

    @property
    def end(self) -> int:
        """The slot's length after this chunk."""
        return self.start + len(self.tokens)
