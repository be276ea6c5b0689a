"""Side-by-side measurement of CPU int8 recipes for a model builder graph (issue #21: the u8s8 int8 graph
answered noise on the real SmolLM2 weights). One run, same machine, same fixed text, so figures compare.

For each recipe: teacher-forced top-1 agreement with the fp32 graph and perplexity on a fixed text (one prefill
per window, logits at every position), and decode tokens/s at batch 1 and 8 through the runtime's own runner
(engine/builder_runner.py), in process. Writes a Markdown table.

    python -m bench.int8_recipes CHECKPOINT FP32_GRAPH WORK_DIR [--builder-python P] [--tokens 1024]

CHECKPOINT is the Hugging Face folder the fp32 graph was built from (for the builder's own MatMulNBits int8).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from moltbot.engine.builder_runner import BuilderGraphRunner
from moltbot.engine.prefill import PrefillChunk
from moltbot.engine.sessions import DeviceOptions
from moltbot.engine.tokenizer import TextTokenizer

TEXT = Path(__file__).resolve().parent.parent / "tests" / "fidelity" / "data" / "us_constitution.txt"


def dynamic(**options: object) -> Callable[[Path, Path], None]:
    def make(fp32: Path, out: Path) -> None:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        out.mkdir(parents=True, exist_ok=True)
        for item in fp32.iterdir():
            if item.is_file() and not item.name.startswith("model.onnx"):
                shutil.copy2(item, out / item.name)
        weight = QuantType.QUInt8 if options.get("weight") == "u8" else QuantType.QInt8
        quantize_dynamic(fp32 / "model.onnx", out / "model.onnx", per_channel=bool(options.get("per_channel", True)),
                         reduce_range=bool(options.get("reduce_range", False)), weight_type=weight,
                         op_types_to_quantize=["MatMul"], extra_options={"MatMulConstBOnly": True},
                         nodes_to_exclude=_nodes(fp32, str(options["exclude"])) if "exclude" in options else None)
    return make


def _nodes(fp32: Path, part: str) -> list[str]:
    import onnx

    graph = onnx.load(fp32 / "model.onnx", load_external_data=False).graph
    return [node.name for node in graph.node if node.op_type == "MatMul" and part in node.name]


def builder_int8(checkpoint: Path, python: str, accuracy: int | None) -> Callable[[Path, Path], None]:
    def make(fp32: Path, out: Path) -> None:
        extra = ["--extra_options", f"accuracy_level={accuracy}"] if accuracy is not None else []
        subprocess.run([python, "-m", "onnxruntime_genai.models.builder", "-i", str(checkpoint), "-o", str(out),
                        "-p", "int8", "-e", "cpu", "-c", str(out.parent / "cache"), *extra], check=True,
                       capture_output=True)
    return make


def teacher_forced(runner: BuilderGraphRunner, ids: list[int]) -> np.ndarray:
    """Logits at every position of `ids` (one window), [len(ids), vocab]."""
    runner.reset()
    n = len(ids)
    logits = runner._run(0, 1, np.asarray([ids], dtype=np.int64), np.array([n]), past_lengths=np.array([0]),
                         last=np.arange(n))
    return np.asarray(logits, dtype=np.float32)


def perplexity(logits: np.ndarray, ids: list[int]) -> float:
    shifted = logits[:-1] - logits[:-1].max(axis=-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return float(np.exp(-logp[np.arange(len(ids) - 1), ids[1:]].mean()))


def decode_rate(runner: BuilderGraphRunner, batch: int, prompt: list[int], steps: int = 64, repeats: int = 5) -> float:
    rates = []
    for _ in range(repeats):
        runner.reset()
        slots = list(range(batch))
        logits = runner.prefill([PrefillChunk(slot, prompt) for slot in slots])
        tokens = [int(t) for t in logits.argmax(-1)]
        start = time.perf_counter()
        for _ in range(steps):
            tokens = [int(t) for t in runner.decode(slots, tokens).argmax(-1)]
        rates.append(batch * steps / (time.perf_counter() - start))
    return float(np.median(rates))


def greedy(runner: BuilderGraphRunner, tokenizer: TextTokenizer, text: str, steps: int = 12) -> str:
    runner.reset()
    slots = [0]
    logits = runner.prefill([PrefillChunk(0, tokenizer.encode(text))])
    out = [int(logits[0].argmax())]
    for _ in range(steps - 1):
        out.append(int(runner.decode(slots, [out[-1]])[0].argmax()))
    return tokenizer.decode(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("fp32", type=Path)
    parser.add_argument("work", type=Path)
    parser.add_argument("--builder-python", default="build/builder-venv/bin/python")
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--only", nargs="*")
    args = parser.parse_args()
    recipes: dict[str, Callable[[Path, Path], None] | None] = {
        "fp32": None,
        "dq8 s8 per-channel (old builder-dq8)": dynamic(),
        "dq8 s8 per-channel reduce_range": dynamic(reduce_range=True),
        "dq8 u8 per-channel": dynamic(weight="u8"),
        "dq8 s8 per-channel, down_proj float": dynamic(exclude="down_proj"),
        "MatMulNBits 8-bit (builder, acc 4)": builder_int8(args.checkpoint, args.builder_python, None),
        "MatMulNBits 8-bit (builder, acc 1: fp32 compute)": builder_int8(args.checkpoint, args.builder_python, 1),
    }
    tokenizer = TextTokenizer(args.fp32)
    ids = tokenizer.encode(TEXT.read_text())[: args.tokens]
    prompt = ids[:32]
    options = DeviceOptions(intra_op_threads=2)
    rows, reference = [], None
    for name, make in recipes.items():
        if args.only and name != "fp32" and not any(o in name for o in args.only):
            continue
        folder = args.fp32 if make is None else args.work / re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        if make is not None and not (folder / "model.onnx").exists():
            shutil.rmtree(folder, ignore_errors=True)
            make(args.fp32, folder)
        runner = BuilderGraphRunner(folder, options, slots=8, max_length=args.tokens + 128)
        logits = teacher_forced(runner, ids)
        if reference is None:
            reference = logits.argmax(-1)
        agreement = float((logits.argmax(-1) == reference).mean())
        answer = greedy(runner, tokenizer, "The capital of France is")
        rate1, rate8 = decode_rate(runner, 1, prompt), decode_rate(runner, 8, prompt)
        size = sum(p.stat().st_size for p in folder.glob("model.onnx*")) / 1e6
        rows.append(f"| {name} | {agreement:.3f} | {perplexity(logits, ids):.3f} | {rate1:.0f} | {rate8:.0f} | "
                    f"{size:.0f} | {answer!r} |")
        print(rows[-1], flush=True)
        del runner
    print("\n| recipe | top-1 vs fp32 | perplexity | tok/s b1 | tok/s b8 | MB | greedy 'The capital of France is' |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
