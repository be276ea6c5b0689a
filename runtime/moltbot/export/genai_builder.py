"""Hugging Face checkpoint -> a serving-grade decoder graph, with ONNX Runtime GenAI's model builder.

The builder's graphs use GroupQueryAttention over one KV buffer that past and present share (nothing is
concatenated per step), fused norms and rotary embeddings, and MatMulNBits block-quantised weights for int4 and
int8 (engine/builder_runner.py serves them). It covers the common decoder families (Llama, Qwen, Mistral, Phi,
Gemma, ...); Optimum's export (optimum_export.py) stays the fallback for the rest and for encoders.

The builder needs transformers 5, Optimum's exporter pins 4.57: the builder runs in its own environment
(`make builder-venv`, or any Python with requirements/builder.txt installed), named by the `builder_python`
setting (MOLTBOT_BUILDER_PYTHON), else this interpreter when it has the builder.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from moltbot.engine.export_marker import write_marker

PRECISIONS = ("fp32", "fp16", "int8", "int4")
# Files the serving path reads, taken from the checkpoint itself (the builder rewrites tokenizer_config.json
# through transformers 5, which drops fields such as added tokens).
_CHECKPOINT_FILES = ("config.json", "generation_config.json", "special_tokens_map.json", "tokenizer_config.json",
                     "chat_template.jinja")
_NOT_COVERED = "is not currently supported"


class BuilderUnavailable(RuntimeError):
    """No Python with the model builder is configured or found."""


class ArchitectureNotCovered(RuntimeError):
    """The builder does not know the checkpoint's architecture (use Optimum's export)."""


def find_builder_python(configured: str | None = None) -> str:
    """The interpreter that runs the builder: the configured one, else this one if it has the builder."""
    if configured:
        if not Path(configured).exists():
            raise BuilderUnavailable(f"builder_python {configured} does not exist")
        return configured
    if importlib.util.find_spec("onnxruntime_genai") is not None:
        return sys.executable
    raise BuilderUnavailable("the ONNX Runtime GenAI model builder is not installed: run `make builder-venv` and "
                             "set MOLTBOT_BUILDER_PYTHON=build/builder-venv/bin/python (or install "
                             "requirements/builder.txt into a Python of your choice)")


def build_graph(src: str | Path, dst: str | Path, precision: str = "int4", device: str = "cpu",
                python: str | None = None, extra_options: dict[str, str] | None = None) -> Path:
    """Build `dst` from the checkpoint folder `src` atomically: a half-made graph never appears at `dst`.
    `extra_options` go to the builder as `--extra_options key=value ...` (e.g. windowed_kv_cache=false)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "fp16" and device != "cuda":
        raise ValueError("fp16 graphs are for CUDA (on the CPU ONNX Runtime computes fp16 through casts to fp32)")
    src, dst = Path(src), Path(dst)
    interpreter = find_builder_python(python)
    dst.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        graph = work / "graph"
        _run_builder(interpreter, src, graph, precision, device, work / "cache", extra_options)
        for name in _CHECKPOINT_FILES:
            if (src / name).exists():
                shutil.copy2(src / name, graph / name)
        meta = {"task": "chat", "graph": "genai", "precision": precision, "device": device, "source": str(src)}
        write_marker(graph, meta)
        graph.chmod(0o755)
        if dst.exists():
            shutil.rmtree(dst)
        graph.rename(dst)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dst


def graph_recipe(precision: str, device: str) -> str:
    """A name for how build_graph makes a graph at this precision, for cache keys: a changed recipe makes the
    graph again rather than serving one cached by an earlier recipe. int8 is the builder's own MatMulNBits 8-bit
    graph ("builder-nbits8") since #21: the earlier CPU recipe ("builder-dq8": per-channel int8 weights with
    per-tensor dynamically quantised activations) agreed with fp32 on only 55% of next tokens on real weights
    (the activations' outliers), see docs/engine.md."""
    return "builder-nbits8" if precision == "int8" else "builder"


def _run_builder(interpreter: str, src: Path, out: Path, precision: str, device: str, cache: Path,
                 extra_options: dict[str, str] | None = None) -> None:
    extra = [f"{key}={value}" for key, value in (extra_options or {}).items()]
    result = subprocess.run(
        [interpreter, "-P", str(Path(__file__).with_name("builder_shim.py")), "-i", str(src), "-o", str(out),
         "-p", precision, "-e", device, "-c", str(cache), *(["--extra_options", *extra] if extra else [])],
        capture_output=True, text=True,
        # TMPDIR in the work folder: what the builder leaves in a temporary folder (hundreds of MB when it is
        # killed midway) goes with the work folder instead of piling up in /tmp.
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TMPDIR": str(cache.parent)})
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["(no output)"]
        if _NOT_COVERED in result.stderr:
            raise ArchitectureNotCovered(f"{src}: the model builder does not cover this architecture: {tail[0]}")
        raise RuntimeError(f"the model builder failed on {src}: {tail[0]}")
