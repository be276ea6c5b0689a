"""What the grammar mask costs per token: the sampling pipeline over random logits, each row under a JSON schema
(its mask computed, applied and its matcher moved on every step) against the same rows unconstrained.

    python -m bench.grammar_mask MODEL_FOLDER [MODEL_FOLDER ...]

A figure for docs/engine.md, not a test: the masks are llguidance's (off the GIL, in parallel over a step's
rows), so the time depends on the machine's cores and load."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from statistics import median

import numpy as np

from moltbot.engine.grammar import GrammarCompiler, grammar_source
from moltbot.engine.sampling import SamplingParams, TokenCounts, sample_batch
from moltbot.engine.tokenizer import TextTokenizer

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["id", "name", "tags", "score"],
          "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 99999},
                         "name": {"type": "string", "maxLength": 24},
                         "tags": {"type": "array", "maxItems": 4, "items": {"enum": ["a", "b", "c"]}},
                         "score": {"type": "number", "minimum": 0, "maximum": 1}}}
STEPS = 64


class Row:
    def __init__(self, params: SamplingParams, seed: int):
        self.params = params
        self.rng = np.random.default_rng(seed)
        self.counts: TokenCounts | None = None
        self.constraint = params.grammar.matcher() if params.grammar else None


def step_seconds(width: int, params: SamplingParams, batch: int) -> float:
    """Median seconds of one pipeline pass over `batch` rows, while the rows' grammars are unfinished."""
    rows = [Row(params, seed) for seed in range(batch)]
    logits = np.random.default_rng(0).standard_normal((batch, width)).astype(np.float32)
    times = []
    for _ in range(STEPS):
        if any(row.constraint is not None and row.constraint.done for row in rows):
            break
        started = time.perf_counter()
        sample_batch(logits, list(rows))
        times.append(time.perf_counter() - started)
    return median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folders", nargs="+", type=Path)
    args = parser.parse_args()
    source, _ = grammar_source({"type": "json_schema", "json_schema": {"name": "bench", "schema": SCHEMA}}, None) \
        or ("", "")
    for folder in args.folders:
        tokenizer = TextTokenizer(folder)
        width = int(json.loads((folder / "config.json").read_text()).get("vocab_size") or tokenizer.vocab_size)
        compiler = GrammarCompiler((folder / "tokenizer.json").read_text(), width, tokenizer.vocab_size,
                                   tokenizer.eos_token_ids)
        started = time.perf_counter()
        grammar = compiler.compile(source, "response_format")
        compile_ms = (time.perf_counter() - started) * 1000
        for batch in (1, 8):
            free = step_seconds(width, SamplingParams(temperature=1.0), batch)
            held = step_seconds(width, SamplingParams(temperature=1.0, grammar=grammar), batch)
            print(f"{folder.name} (vocab {width}) batch {batch}: step {free * 1000:.3f} ms unconstrained, "
                  f"{held * 1000:.3f} ms under the schema: mask {(held - free) * 1000 / batch:.3f} ms per token "
                  f"(compile {compile_ms:.1f} ms)")


if __name__ == "__main__":
    main()
