"""Model configs: `<models dir>/*.json`, one model each.

    {"name": "llama-7b", "type": "local", "path": "/app/models/llama-7b", "max_tokens": 2048, "temperature": 0.7}

Fields: name, type (local | remote | service), task (chat | embeddings; default chat), max_tokens (the model's
context length for chat models), temperature (default when a request sets none), and per type:
- local: path (an Optimum ONNX export, or a Hugging Face PyTorch checkpoint exported once and cached);
- remote: url (http/https archive of a model folder: .tar.gz, .tgz, .tar or .zip) and sha256;
- service: base_url, model (the upstream name), api_key_env (variable holding the upstream key).
Optional for local and remote: device (cpu | cuda), max_running, max_queued (override the service settings),
quantize (`int8`: ONNX Runtime dynamic quantisation of the MatMul weights, made once and cached; CPU).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
TYPES = ("local", "remote", "service")
TASKS = ("chat", "embeddings")


class ModelConfigError(ValueError):
    """A model config that cannot be served; the message says which file and which field."""


@dataclass(frozen=True)
class ModelConfig:
    name: str
    type: str
    task: str = "chat"
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
    description: str = ""
    source: str = ""  # the file it came from

    @classmethod
    def from_dict(cls, data: Any, source: str = "") -> "ModelConfig":
        where = source or "model config"
        if not isinstance(data, dict):
            raise ModelConfigError(f"{where}: expected a JSON object")
        known = set(cls.__dataclass_fields__) - {"source"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelConfigError(f"{where}: unknown field(s) {', '.join(unknown)}")
        for required in ("name", "type"):
            if not isinstance(data.get(required), str) or not data[required]:
                raise ModelConfigError(f"{where}: '{required}' is required and must be a string")
        if not NAME_PATTERN.match(data["name"]):
            raise ModelConfigError(f"{where}: name {data['name']!r} must be 1-128 letters, digits or ._:/-")
        if data["type"] not in TYPES:
            raise ModelConfigError(f"{where}: type {data['type']!r} is not one of {', '.join(TYPES)}")
        task = data.get("task", "chat")
        if task not in TASKS:
            raise ModelConfigError(f"{where}: task {task!r} is not one of {', '.join(TASKS)}")
        needs = {"local": ("path",), "remote": ("url", "sha256"), "service": ("base_url", "model")}
        for field_name in needs[data["type"]]:
            if not isinstance(data.get(field_name), str) or not data[field_name]:
                raise ModelConfigError(f"{where}: type {data['type']} needs '{field_name}' (a string)")
        if data["type"] == "remote":
            if not re.match(r"^https?://", data["url"]):
                raise ModelConfigError(f"{where}: url must be http:// or https://")
            if not re.fullmatch(r"[0-9a-fA-F]{64}", data["sha256"]):
                raise ModelConfigError(f"{where}: sha256 must be 64 hexadecimal digits")
        for int_field, least in (("max_tokens", 1), ("max_running", 1), ("max_queued", 0)):
            value = data.get(int_field)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
                raise ModelConfigError(f"{where}: '{int_field}' must be an integer of at least {least}")
        temperature = data.get("temperature", 0.7)
        if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not 0 <= temperature <= 2:
            raise ModelConfigError(f"{where}: 'temperature' must be a number from 0 to 2")
        if data.get("quantize") not in (None, "int8"):
            raise ModelConfigError(f"{where}: quantize must be int8 (or left out)")
        if data.get("quantize") and data["type"] == "service":
            raise ModelConfigError(f"{where}: a service model cannot be quantised here")
        if data.get("device") not in (None, "cpu", "cuda"):
            raise ModelConfigError(f"{where}: device must be cpu or cuda")
        return cls(**{**data, "temperature": float(temperature), "task": task}, source=source)


def read_model_configs(models_dir: Path) -> tuple[list[ModelConfig], list[tuple[str, str]]]:
    """The valid configs in models_dir, and (file, error) for each one that is not."""
    configs, errors, names = [], [], set()
    for path in sorted(Path(models_dir).glob("*.json")):
        try:
            config = ModelConfig.from_dict(json.loads(path.read_text()), source=str(path))
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
