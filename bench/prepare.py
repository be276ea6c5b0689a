"""Make the benchmark's artefacts once and cache them under build/bench/: the Hugging Face checkpoint, its ONNX
export (`moltbot models export`), and its GGUF f16 conversion for llama-server."""

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


def ensure_onnx(checkpoint: Path, root: Path, name: str, dtype: str = "fp32", device: str = "cpu",
                log=print) -> Path:
    """The ONNX export, made with the runtime's own CLI as a user would."""
    folder = root / f"{name}-onnx-{dtype}"
    if (folder / "model.onnx").exists() and (folder / "moltbot-export.json").exists():
        log(f"onnx export: cached in {folder}")
        return folder
    started = time.monotonic()
    moltbot = Path(sys.executable).with_name("moltbot")
    subprocess.run([str(moltbot), "models", "export", str(checkpoint), str(folder), "--task", "chat",
                    "--dtype", dtype, "--device", device], check=True)
    log(f"onnx export: made in {folder} ({time.monotonic() - started:.0f} s)")
    return folder


def ensure_gguf(checkpoint: Path, root: Path, name: str, llama_src: Path, log=print) -> Path:
    target = root / f"{name}-f16.gguf"
    if target.exists():
        log(f"gguf: cached in {target}")
        return target
    started = time.monotonic()
    partial = target.with_suffix(".partial")
    result = subprocess.run([sys.executable, "-m", "bench.gguf_convert", str(llama_src), str(checkpoint),
                             str(partial)], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"GGUF conversion of {checkpoint} failed:\n{result.stderr[-3000:]}")
    partial.rename(target)
    log(f"gguf: made {target} ({time.monotonic() - started:.0f} s)")
    return target

