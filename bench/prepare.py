"""Make the benchmark's artefacts once and cache them under build/bench/: the Hugging Face checkpoint (the runtime
makes its own graphs from it, cached under build/bench/cache/) and its GGUF files for llama-server: f16 by
llama.cpp's converter, q8_0 and q4_0 by `llama-quantize` from the f16 file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.models import ModelShape, build_checkpoint

DONE = "bench-done.json"


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
