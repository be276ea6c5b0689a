"""Hugging Face checkpoint -> ONNX model directory, with Optimum."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from moltbot.engine.export_marker import write_marker

TASKS = {"chat": "text-generation-with-past", "embeddings": "feature-extraction"}


def export_checkpoint(src: str | Path, dst: str | Path, task: str = "chat", dtype: str | None = None,
                      device: str = "cpu", extra_meta: dict[str, Any] | None = None) -> Path:
    """Export `src` (a local checkpoint folder) to `dst` atomically: a half-made export never appears at `dst`.

    task: `chat` (decoder with KV cache: past_key_values in, present out) or `embeddings` (encoder).
    """
    from optimum.exporters.onnx import main_export

    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, not {task!r}")
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        kwargs = {"dtype": dtype} if dtype else {}
        main_export(str(src), output=str(work), task=TASKS[task], device=device, local_files_only=True, **kwargs)
        # Files the serving path reads beside the ONNX graph (tokenizer and pooling config).
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                     "sentence_bert_config.json", "chat_template.jinja"):
            if (src / name).exists() and not (work / name).exists():
                shutil.copy2(src / name, work / name)
        graph = {"graph": "optimum", "precision": "fp16" if dtype == "fp16" else "fp32"} if task == "chat" else {}
        write_marker(work, {"task": task, "source": str(src), "dtype": dtype or "float32", **graph,
                            **(extra_meta or {})})
        if dst.exists():
            shutil.rmtree(dst)
        work.chmod(0o755)  # mkdtemp makes it private; the service may run as another user
        work.rename(dst)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return dst
