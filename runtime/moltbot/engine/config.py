"""Model configs: `<models dir>/*.json`, one model each.

    {"name": "llama-7b", "source": "local", "path": "/app/models/llama-7b", "max_tokens": 2048, "temperature": 0.7}

Fields: name, task (chat | embeddings; default chat), max_tokens (the model's context length for chat models),
temperature (default when a request sets none), and two that say how the model is had:
- source, where its files come from: local (path: an Optimum ONNX export, a Hugging Face PyTorch checkpoint
  exported once and cached, or a .gguf file imported once and cached: export/gguf.py) or remote (url: an
  http/https archive of a model folder, .tar.gz, .tgz, .tar or .zip, or a .gguf file; sha256);
- backend, what serves it: onnxruntime (the default; needs a source) or service (a third-party OpenAI-compatible
  API, no files: base_url, model (the upstream name), api_key_env (variable holding the upstream key)).
The older `type` (local | remote | service) says both in one word and stays valid: local and remote are those
sources served by onnxruntime, service is the service backend.
Optional for remote: max_download_bytes (the largest archive taken, 16 GiB by default), allow_http (true to
accept a plain http:// URL or a redirect to one; refused by default).
Optional for service: max_completion_tokens (4096) and max_n (4), the most a request may ask the upstream for.
Optional for onnxruntime: device (cpu | cuda), max_running, max_queued (override the service settings),
quantize (the chat graph's precision, default fp32: `int8` or `int4` quantised weights, `fp16` on CUDA; a
checkpoint is built at that precision once, by the model builder where it covers the architecture, else exported
with Optimum (int8 there by dynamic quantisation; int4 needs the builder)).
Optional for chat models: tool_call_format (how the model writes tool calls in its text: engine/tool_calls.py's
FORMATS; default: what its chat template teaches; for service, calls an upstream returns as text).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from moltbot.engine.tool_calls import FORMATS

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
TASKS = ("chat", "embeddings")
SOURCES = ("local", "remote")
# Each backend, and whether it serves files from a source (True) or has none (False).
BACKENDS = {"onnxruntime": True, "service": False}
# The older `type` field: (source, backend) for each of its values.
TYPES = {"local": ("local", "onnxruntime"), "remote": ("remote", "onnxruntime"), "service": (None, "service")}
PRECISIONS = ("fp32", "fp16", "int8", "int4")
_NEEDS = {"local": ("path",), "remote": ("url", "sha256"), "service": ("base_url", "model")}


class ModelConfigError(ValueError):
    """A model config that cannot be served; the message says which file and which field."""


@dataclass(frozen=True)
class ModelConfig:
    name: str
    task: str = "chat"
    source: str | None = None  # local | remote; None for a backend without files
    backend: str = "onnxruntime"
    path: str | None = None
    url: str | None = None
    sha256: str | None = None
    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    max_tokens: int = 2048
    temperature: float = 0.7
    device: str | None = None
    max_running: int | None = None
    max_queued: int | None = None
    quantize: str | None = None
    tool_call_format: str | None = None  # None: the chat template's (engine/tool_calls.py format_for)
    # remote: the largest archive downloaded (bytes), and whether a plain http:// URL (or a redirect to one) is taken
    max_download_bytes: int = 16 * 1024**3
    allow_http: bool = False
    # service: the most tokens (max_tokens / max_completion_tokens) and choices (n) one request may ask upstream for
    max_completion_tokens: int = 4096
    max_n: int = 4
    description: str = ""
    file: str = ""  # the config file it came from, or "embedded default"

    @property
    def type(self) -> str:
        """The older single word for source and backend: local, remote or service."""
        return self.source or self.backend

    @classmethod
    def from_dict(cls, data: Any, file: str = "") -> ModelConfig:
        where = file or "model config"
        if not isinstance(data, dict):
            raise ModelConfigError(f"{where}: expected a JSON object")
        known = {f.name for f in fields(cls)} - {"file"} | {"type"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelConfigError(f"{where}: unknown field(s) {', '.join(unknown)}")
        if not isinstance(data.get("name"), str) or not data["name"]:
            raise ModelConfigError(f"{where}: 'name' is required and must be a string")
        if not NAME_PATTERN.match(data["name"]):
            raise ModelConfigError(f"{where}: name {data['name']!r} must be 1-128 letters, digits or ._:/-")
        data = {**data, **_source_and_backend(data, where)}
        data.pop("type", None)
        task = data.get("task", "chat")
        if task not in TASKS:
            raise ModelConfigError(f"{where}: task {task!r} is not one of {', '.join(TASKS)}")
        what = data["source"] or data["backend"]
        for field_name in _NEEDS.get(what, ()):
            if not isinstance(data.get(field_name), str) or not data[field_name]:
                raise ModelConfigError(f"{where}: {what} needs '{field_name}' (a string)")
        if data["source"] == "remote":
            if not re.match(r"^https?://", data["url"]):
                raise ModelConfigError(f"{where}: url must be http:// or https://")
            if not re.fullmatch(r"[0-9a-fA-F]{64}", data["sha256"]):
                raise ModelConfigError(f"{where}: sha256 must be 64 hexadecimal digits")
        if data["source"] == "remote" and data["url"].startswith("http://") and data.get("allow_http") is not True:
            raise ModelConfigError(f"{where}: url is plain http://, which anyone on the path can read and change; "
                                   'use https://, or set "allow_http": true to accept it')
        if not isinstance(data.get("allow_http", False), bool):
            raise ModelConfigError(f"{where}: 'allow_http' must be true or false")
        for int_field, least in (("max_tokens", 1), ("max_running", 1), ("max_queued", 0),
                                 ("max_download_bytes", 1), ("max_completion_tokens", 1), ("max_n", 1)):
            value = data.get(int_field)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
                raise ModelConfigError(f"{where}: '{int_field}' must be an integer of at least {least}")
        temperature = data.get("temperature", 0.7)
        if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not 0 <= temperature <= 2:
            raise ModelConfigError(f"{where}: 'temperature' must be a number from 0 to 2")
        if data.get("quantize") not in (None, *PRECISIONS):
            raise ModelConfigError(f"{where}: quantize must be one of {', '.join(PRECISIONS)} (or left out)")
        if data.get("quantize") not in (None, "int8") and task == "embeddings":
            raise ModelConfigError(f"{where}: embedding models take quantize int8 (dynamic) or none")
        if task != "chat" and any(str(data.get(key) or "").lower().split("?")[0].endswith(".gguf")
                                  for key in ("path", "url")):
            raise ModelConfigError(f"{where}: a .gguf file is imported as a chat model (task chat), not {task}")
        if data.get("quantize") and data["backend"] == "service":
            raise ModelConfigError(f"{where}: a service model cannot be quantised here")
        tool_format = data.get("tool_call_format")
        if tool_format is not None and tool_format not in FORMATS:
            raise ModelConfigError(f"{where}: tool_call_format {tool_format!r} is not one of {', '.join(FORMATS)}")
        if tool_format is not None and task != "chat":
            raise ModelConfigError(f"{where}: tool_call_format is for chat models")
        if data.get("device") not in (None, "cpu", "cuda"):
            raise ModelConfigError(f"{where}: device must be cpu or cuda")
        return cls(**{**data, "temperature": float(temperature), "task": task}, file=file)


def _source_and_backend(data: dict[str, Any], where: str) -> dict[str, Any]:
    """source and backend, from those fields or from the older `type`."""
    if "type" in data:
        if "source" in data or "backend" in data:
            raise ModelConfigError(f"{where}: 'type' is the older spelling of 'source' and 'backend': give one or "
                                   "the other")
        if data["type"] not in TYPES:
            raise ModelConfigError(f"{where}: type {data['type']!r} is not one of {', '.join(TYPES)}")
        source, backend = TYPES[data["type"]]
        return {"source": source, "backend": backend}
    backend = data.get("backend", "onnxruntime")
    if backend not in BACKENDS:
        raise ModelConfigError(f"{where}: backend {backend!r} is not one of {', '.join(BACKENDS)}")
    source = data.get("source")
    if BACKENDS[backend] and source not in SOURCES:
        raise ModelConfigError(f"{where}: backend {backend} needs 'source' ({' or '.join(SOURCES)}; or the "
                               f"older 'type'), not {source!r}")
    if not BACKENDS[backend] and source is not None:
        raise ModelConfigError(f"{where}: backend {backend} serves no files: leave 'source' out")
    return {"source": source, "backend": backend}


def read_model_configs(models_dir: Path) -> tuple[list[ModelConfig], list[tuple[str, str]]]:
    """The valid configs in models_dir, and (file, error) for each one that is not."""
    configs: list[ModelConfig] = []
    errors: list[tuple[str, str]] = []
    names: set[str] = set()
    for path in sorted(Path(models_dir).glob("*.json")):
        try:
            config = ModelConfig.from_dict(json.loads(path.read_text()), file=str(path))
        except json.JSONDecodeError as exc:
            errors.append((str(path), f"{path}: not valid JSON: {exc}"))
            continue
        except (ModelConfigError, OSError) as exc:
            errors.append((str(path), str(exc)))
            continue
        if config.name in names:
            errors.append((str(path), f"{path}: a model named {config.name!r} is already configured"))
            continue
        names.add(config.name)
        configs.append(config)
    return configs, errors
