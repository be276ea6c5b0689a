"""GGUF file (llama.cpp, Ollama, LM Studio) -> a serving graph: dequantised to a Hugging Face checkpoint by
transformers' GGUF reader, then built by the model builder (genai_builder.build_graph).

Where each part runs:
- `gguf_architecture` reads the file's header itself (no `gguf` package): it runs anywhere, the serving venv too.
- `gguf_to_checkpoint` runs gguf_convert.py in the model builder's venv (`make builder-venv`: transformers 5,
  torch, `gguf`, `accelerate`); the serving path stays torch-free.
- `import_gguf` makes the graph (cached: a folder already made from the same file by the same recipe is kept)
  and writes provenance.json into it: the source, the file's sha256, the conversion steps and tool versions.
- A CPU int4 graph then gets the file's own quantised blocks (gguf_blocks.py, in the builder's venv too) in
  place of the builder's re-quantisation of the dequantised weights: +0.6% perplexity over fp32 on SmolLM2's
  Q4_1 and +0.9% on Gemma's Q4_K_M, against +59% and +220% re-quantised (docs/fidelity.md).

Covered: the Llama family (llama, mistral: SmolLM2, Llama 2/3, Mistral) and qwen2, and Gemma 3 (gemma3), whose
licence files travel with the graph (LICENSES). Any other architecture is refused before anything is converted.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

from moltbot.engine.export_marker import read_marker, write_marker
from moltbot.engine.sources import file_sha256
from moltbot.export.genai_builder import build_graph, find_builder_python, graph_recipe
from moltbot.export.gguf_blocks import NOT_COVERED_EXIT

PROVENANCE = "provenance.json"
# The context a model config written by `moltbot models import` gets at most (its max_tokens; raise it there):
# each running sequence may fill a KV buffer that long.
MAX_TOKENS = 8192
# general.architecture values imported, and the builder options each needs (see build_options).
ARCHITECTURES = ("llama", "mistral", "qwen2", "gemma3")
_MAGIC = b"GGUF"
# GGUF metadata value types: struct format of the fixed-size ones; 8 = string, 9 = array.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class GGUFError(ValueError):
    """The file is no GGUF, or holds a model this import does not cover; the message says which and why."""


def gguf_metadata(path: str | Path, keys: tuple[str, ...] = ("general.architecture",)) -> dict[str, Any]:
    """The scalar/string metadata values named in `keys` (those present), read from the header: stops as soon as
    all are found, and skips arrays (the vocabulary) without decoding them."""
    found: dict[str, Any] = {}
    path = Path(path)
    try:
        with path.open("rb") as fh:
            if fh.read(4) != _MAGIC:
                raise GGUFError(f"{path}: not a GGUF file (no GGUF magic)")
            version = _unpack(fh, "<I")
            if version < 2:
                raise GGUFError(f"{path}: GGUF version {version} is too old (2 or later is read)")
            _unpack(fh, "<Q")  # tensor count
            for _ in range(_unpack(fh, "<Q")):
                key = _read_string(fh)
                kind = _unpack(fh, "<I")
                if key in keys and kind != _ARRAY:
                    found[key] = _read_value(fh, kind)
                    if len(found) == len(keys):
                        break
                else:
                    _skip_value(fh, kind)
    except (struct.error, UnicodeDecodeError) as exc:
        raise GGUFError(f"{path}: truncated or corrupt GGUF header ({exc})") from None
    return found


def gguf_architecture(path: str | Path) -> str:
    """general.architecture of the GGUF file (e.g. llama, qwen2, gemma3)."""
    architecture = gguf_metadata(path).get("general.architecture")
    if not isinstance(architecture, str):
        raise GGUFError(f"{path}: the GGUF header has no general.architecture")
    return architecture


def check_architecture(path: str | Path) -> str:
    """The file's architecture, or GGUFError naming it when this import does not cover it."""
    architecture = gguf_architecture(path)
    if architecture not in ARCHITECTURES:
        raise GGUFError(f"{path}: general.architecture {architecture!r} is not covered by the GGUF import "
                        f"(covered: {', '.join(ARCHITECTURES)})")
    return architecture


def gguf_to_checkpoint(gguf_file: str | Path, out_dir: str | Path, python: str | None = None) -> Path:
    """Dequantise `gguf_file` into the Hugging Face checkpoint folder `out_dir` (config.json, float32 safetensors,
    tokenizer files with the chat template), in the builder's venv (`python`, else the builder_python lookup).
    Writes gguf-conversion.json there (steps, tool versions). Atomic: `out_dir` appears only when complete."""
    gguf_file, out_dir = Path(gguf_file), Path(out_dir)
    check_architecture(gguf_file)
    interpreter = find_builder_python(python)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        # -P: the script's folder (this package, whose gguf.py would shadow the gguf package) stays off sys.path.
        result = subprocess.run([interpreter, "-P", str(Path(__file__).with_name("gguf_convert.py")),
                                 str(gguf_file.resolve()), str(work)], capture_output=True, text=True,
                                env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                                     "HOME": str(work), "TMPDIR": str(work)})
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["(no output)"]
            raise RuntimeError(f"dequantising {gguf_file} failed: {tail[0]}")
        (work / "gguf-conversion.json").write_text(result.stdout.strip().splitlines()[-1])
        work.chmod(0o755)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        work.rename(out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out_dir


def build_options(architecture: str, all_logits: bool = False) -> dict[str, str]:
    """Model builder options per architecture. Gemma 3: one full-length KV buffer per layer (the builder's
    default windowed cache for its sliding layers does not fit the builder-graph runner, which gives every layer
    the same [slots, heads, max_length, head_dim] buffer; the attention still keeps to its 512-token window),
    and logits of the last position only (prune_lm_head: its 262,144-entry vocabulary makes a 1,000-token
    prefill's logits 1 GiB otherwise; engine/builder_runner.py serves such graphs). `all_logits` keeps every
    position's logits (teacher-forced fidelity checks)."""
    if architecture != "gemma3":
        return {}
    return {"windowed_kv_cache": "false", **({} if all_logits else {"prune_lm_head": "true"})}


def uses_own_blocks(precision: str, device: str) -> bool:
    """Whether the graph gets the file's own blocks (gguf_blocks.py): CPU int4 only; the builder's CUDA graphs
    have fp16 scales the rewrite does not write, int8 and fp32 are within 0.5% of the file already."""
    return precision == "int4" and device == "cpu"


def gguf_recipe(precision: str, device: str) -> str:
    """How import_gguf makes a graph, for the marker that decides whether a cached one is still current."""
    return f"gguf-{graph_recipe(precision, device)}" + ("-blocks" if uses_own_blocks(precision, device) else "")


def import_gguf(gguf_file: str | Path, dst: str | Path, precision: str = "int8", device: str = "cpu",
                builder_python: str | None = None, provenance: dict[str, Any] | None = None,
                all_logits: bool = False) -> Path:
    """The serving graph of `gguf_file` at `dst` (made once: a folder made from the same file by the same recipe
    is returned as is). `provenance` (e.g. the package the file came from) is merged into provenance.json.
    `all_logits`: a graph whose prefill returns every position's logits (see build_options)."""
    gguf_file, dst = Path(gguf_file), Path(dst)
    if not gguf_file.is_file():
        raise GGUFError(f"{gguf_file}: no such GGUF file")
    architecture = check_architecture(gguf_file)
    digest = file_sha256(gguf_file)
    options = build_options(architecture, all_logits)
    blocks = uses_own_blocks(precision, device)
    recipe = gguf_recipe(precision, device) + ("-all-logits" if all_logits and options else "")
    meta = read_marker(dst)
    if meta.get("gguf_sha256") == digest and meta.get("recipe") == recipe and (dst / "model.onnx").exists():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dst.name}.gguf.", dir=dst.parent))
    try:
        checkpoint = gguf_to_checkpoint(gguf_file, work / "checkpoint", python=builder_python)
        conversion = json.loads((checkpoint / "gguf-conversion.json").read_text())
        graph = build_graph(checkpoint, work / "graph", precision, device, python=builder_python,
                            extra_options=options)
        steps = [_use_gguf_blocks(gguf_file, checkpoint, graph, builder_python)] if blocks else []
        write_marker(graph, {**read_marker(graph), "source": str(gguf_file.resolve()), "gguf_sha256": digest,
                             "recipe": recipe, "architecture": architecture})
        record = {
            **(provenance or {}),
            "source": {**(provenance or {}).get("source", {}), "gguf_file": gguf_file.name,
                       "bytes": gguf_file.stat().st_size, "sha256": digest, "architecture": architecture},
            "conversion": [*conversion["steps"],
                           f"built by the ONNX Runtime GenAI model builder: precision {precision}, device {device}, "
                           f"recipe {recipe}" + "".join(f", {k}={v}" for k, v in options.items()), *steps],
            "tools": {**conversion["tools"], **_builder_versions(builder_python)},
            "parameters": conversion["parameters"],
        }
        (graph / PROVENANCE).write_text(json.dumps(record, indent=2))
        if architecture.startswith("gemma"):
            from moltbot.export.licenses import write_gemma_licence

            write_gemma_licence(graph, gguf_file)
        if dst.exists():
            shutil.rmtree(dst)
        graph.rename(dst)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dst


def import_model(gguf_file: Path, models_dir: Path, name: str | None = None, precision: str = "int8",
                 device: str = "cpu", builder_python: str | None = None, force: bool = False) -> Path:
    """`moltbot models import`: the graph into models_dir/<name>/ and a model config models_dir/<name>.json that
    serves it; returns the config file. Refuses a name another config in models_dir already has (unless
    `force`, and only for the config this import wrote)."""
    from moltbot.engine.config import NAME_PATTERN, ModelConfig, read_model_configs

    architecture = check_architecture(gguf_file)
    name = name or default_name(gguf_file)
    if not NAME_PATTERN.match(name):
        raise GGUFError(f"model name {name!r} must be 1-128 letters, digits or ._:/- (choose one with --name)")
    folder_name = name.replace("/", "--").replace(":", "-")
    config_file = models_dir / f"{folder_name}.json"
    configs, _ = read_model_configs(models_dir) if models_dir.is_dir() else ([], [])
    clash = [c.file for c in configs if c.name == name or Path(c.file) == config_file]
    if clash and not force:
        raise GGUFError(f"a model named {name!r} (or its config file) is already in {clash[0]}: choose another "
                        "--name, or --force to replace it")
    meta = gguf_metadata(gguf_file, ("general.name", f"{architecture}.context_length"))
    graph = import_gguf(gguf_file, models_dir / folder_name, precision, device, builder_python)
    context = int(meta.get(f"{architecture}.context_length") or 2048)
    licence = " Gemma Terms of Use apply: see NOTICE in the model folder." if architecture.startswith("gemma") else ""
    config = {"name": name, "source": "local", "path": str(graph.resolve()), "quantize": precision,
              "device": device, "max_tokens": min(context, MAX_TOKENS),
              "description": f"{meta.get('general.name', gguf_file.stem)} ({architecture}), imported from "
                             f"{gguf_file.name} at {precision}.{licence}"}
    ModelConfig.from_dict(config, file=str(config_file))  # the same validation the server applies
    part = config_file.with_name(config_file.name + ".part")
    part.write_text(json.dumps(config, indent=2) + "\n")
    part.replace(config_file)
    return config_file


def default_name(gguf_file: Path) -> str:
    """The file's stem, lower-cased, with characters a model name cannot hold turned into '-'."""
    cleaned = re.sub(r"[^a-z0-9._-]+", "-", gguf_file.stem.lower()).strip("-.") or "gguf-model"
    return cleaned[:128]


def _use_gguf_blocks(gguf_file: Path, checkpoint: Path, graph: Path, builder_python: str | None) -> str:
    """Put the file's own blocks in the builder's int4 graph; returns the conversion step it took. A block type
    gguf_blocks.py does not cover (e.g. Q2_K, Q3_K, IQ*) leaves the builder's re-quantised graph, and says so."""
    script = Path(__file__).with_name("gguf_blocks.py")
    result = subprocess.run([find_builder_python(builder_python), "-P", str(script), str(gguf_file.resolve()),
                             str(checkpoint), str(graph)], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(graph.parent), "TMPDIR": str(graph.parent)})
    if result.returncode == NOT_COVERED_EXIT:
        reason = result.stderr.strip().splitlines()[-1:] or ["?"]
        return f"int4 weights re-quantised by the builder: the file's blocks were not used ({reason[0]})"
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"putting the GGUF's own blocks into the int4 graph failed: {tail[0]}")
    used = json.loads(result.stdout.strip().splitlines()[-1])["gguf_block_types"]
    return ("int4 weights: the file's own blocks as MatMulNBits (" + ", ".join(f"{k} x{v}" for k, v in used.items())
            + "; 5- to 8-bit types as 8-bit, block minimums added in the graph), not re-quantised")


def _builder_versions(python: str | None) -> dict[str, str]:
    result = subprocess.run([find_builder_python(python), "-c", "from importlib.metadata import version as v; "
                             "print(v('onnxruntime-genai'), v('onnxruntime'), v('onnx'))"],
                            capture_output=True, text=True)
    genai, ort, onnx = (result.stdout.split() + ["?", "?", "?"])[:3]
    return {"onnxruntime-genai": genai, "onnxruntime": ort, "onnx": onnx}


def _unpack(fh: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = fh.read(size)
    if len(data) != size:
        raise struct.error("unexpected end of file")
    return struct.unpack(fmt, data)[0]


def _read_string(fh: BinaryIO) -> str:
    length = _unpack(fh, "<Q")
    if length > 1 << 24:
        raise struct.error(f"implausible string length {length}")
    return fh.read(length).decode("utf-8")


def _read_value(fh: BinaryIO, kind: int) -> Any:
    if kind == _STRING:
        return _read_string(fh)
    if kind not in _SCALARS:
        raise struct.error(f"unknown metadata type {kind}")
    return _unpack(fh, _SCALARS[kind])


def _skip_value(fh: BinaryIO, kind: int) -> None:
    if kind == _STRING:
        fh.seek(_unpack(fh, "<Q"), 1)
    elif kind == _ARRAY:
        item, count = _unpack(fh, "<I"), _unpack(fh, "<Q")
        if item in _SCALARS:
            fh.seek(struct.calcsize(_SCALARS[item]) * count, 1)
        else:
            for _ in range(count):
                _skip_value(fh, item)
    elif kind in _SCALARS:
        fh.seek(struct.calcsize(_SCALARS[kind]), 1)
    else:
        raise struct.error(f"unknown metadata type {kind}")


__all__ = ["ARCHITECTURES", "PROVENANCE", "GGUFError", "check_architecture", "gguf_architecture",
           "gguf_metadata", "gguf_to_checkpoint", "import_gguf", "import_model"]
