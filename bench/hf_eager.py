"""Hugging Face transformers eager `generate()` on the benchmark checkpoint (run in a subprocess).

    python -m bench.hf_eager CHECKPOINT --prompts FILE --batches 1 8 --new-tokens 64 --repeats 3
        [--device cpu|cuda] [--dtype float32|float16] [--threads 2]

Prints one JSON object: {"<batch>": [generated tokens/s of each repeat], ...}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("--prompts", required=True, help="JSON list of token-id lists, all the same length")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM

    if args.threads:
        torch.set_num_threads(args.threads)
    # "Eager" as in PyTorch eager mode (no torch.compile), with transformers' default attention (SDPA).
    model = AutoModelForCausalLM.from_pretrained(args.checkpoint, dtype=getattr(torch, args.dtype)).to(
        args.device).eval()
    prompts = json.load(open(args.prompts))
    results: dict[str, list[float]] = {}

    def generate(batch: int, new_tokens: int) -> float:
        ids = torch.tensor(prompts[:batch], device=args.device)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
        generated = (out.shape[1] - ids.shape[1]) * batch
        if generated != new_tokens * batch:
            raise RuntimeError(f"generated {generated} tokens, expected {new_tokens * batch}")
        return generated / elapsed

    generate(1, 4)  # warm-up
    for batch in args.batches:
        if batch > len(prompts):
            raise SystemExit(f"batch {batch} needs {batch} prompts, the file has {len(prompts)}")
        results[str(batch)] = [generate(batch, args.new_tokens) for _ in range(args.repeats)]
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1:])
