"""A plugin's config.json: what the plugin is, its settings (secrets from the environment), its input schema."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonschema import exceptions as schema_exceptions
from jsonschema import validators

from .errors import PluginLoadError

# Plugin names double as OpenAI function names for tool calling, hence the same alphabet and length.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DEFAULT_INPUT_SCHEMA: dict[str, Any] = {"type": "object"}
# Keys describing the plugin itself; any other top-level key is a setting, like those under "settings".
META_KEYS = {"name", "version", "description", "class", "enabled", "timeout", "settings", "input_schema", "admin",
             "isolation", "memory_mb", "environment", "tool"}
ISOLATIONS = ("process", "thread")
DEFAULT_MEMORY_MB = 2048
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass
class PluginConfig:
    name: str
    version: str = "0.0.0"
    description: str = ""
    class_name: str | None = None
    enabled: bool = True
    timeout: float | None = None
    settings: dict[str, Any] = field(default_factory=dict, repr=False)
    input_schema: dict[str, Any] | None = None
    # Calls that change server state, which need an admin key when admin keys are set: true (every call), or
    # {"input field": [values]} (a call whose input has one of those values there, e.g. {"action": ["ingest"]}).
    admin: bool | dict[str, list[Any]] = False
    # "process": a worker process of its own, killed and restarted on a timeout or crash, with an address-space
    # limit of memory_mb; "thread": in the service's process (the built-in plugins say so); None: the service's
    # plugin_isolation setting ("process" unless changed).
    isolation: str | None = None
    memory_mb: int = DEFAULT_MEMORY_MB
    # Environment variables an isolated plugin's worker gets from the service's besides the few every worker gets
    # (isolation.ENV_ALLOWED), e.g. a library's own settings; never the service's MOLTBOT_* ones.
    environment: list[str] = field(default_factory=list)
    # Whether a chat request may offer the plugin to a model as a tool (false: only explicit calls run it, through
    # /v1/plugins/{name}/execute or the WebSocket; a model's call of that name goes back to the client).
    tool: bool = True

    def needs_admin(self, payload: Any) -> bool:
        if isinstance(self.admin, bool):
            return self.admin
        return isinstance(payload, dict) and any(payload.get(key) in values for key, values in self.admin.items())


def read_config(folder: Path, environ: Mapping[str, str] | None = None) -> PluginConfig:
    """Parse `folder/config.json`; raises PluginLoadError naming the bad key."""
    path = folder / "config.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PluginLoadError("config.json is missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PluginLoadError(f"config.json cannot be read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise PluginLoadError(f"config.json is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") \
            from None
    if not isinstance(raw, dict):
        raise PluginLoadError("config.json must hold a JSON object")
    return parse_config(raw, default_name=folder.name, environ=os.environ if environ is None else environ)


def parse_config(raw: dict[str, Any], *, default_name: str, environ: Mapping[str, str]) -> PluginConfig:
    name = raw.get("name", default_name)
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise PluginLoadError(f"config.json: name {name!r} must be 1-64 letters, digits, '_' or '-'")
    version = raw.get("version", "0.0.0")
    if not isinstance(version, str):
        raise PluginLoadError("config.json: version must be a string")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise PluginLoadError("config.json: description must be a string")
    class_name = raw.get("class")
    if class_name is not None and (not isinstance(class_name, str) or not class_name.isidentifier()):
        raise PluginLoadError("config.json: class must be the name of a class in plugin.py")
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise PluginLoadError("config.json: enabled must be true or false")
    timeout = raw.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise PluginLoadError("config.json: timeout must be a positive number of seconds")
    settings = raw.get("settings", {})
    if not isinstance(settings, dict):
        raise PluginLoadError("config.json: settings must be an object")
    merged = {k: v for k, v in raw.items() if k not in META_KEYS}
    merged.update(settings)
    schema = raw.get("input_schema")
    if schema is not None:
        check_schema(schema)
    admin = raw.get("admin", False)
    if not isinstance(admin, bool) and not (isinstance(admin, dict) and all(
            isinstance(k, str) and isinstance(v, list) for k, v in admin.items())):
        raise PluginLoadError('config.json: admin must be true, false or {"input field": [values, ...]}')
    isolation = raw.get("isolation")
    if isolation is not None and isolation not in ISOLATIONS:
        raise PluginLoadError(f"config.json: isolation must be one of {', '.join(ISOLATIONS)}, not {isolation!r}")
    memory_mb = raw.get("memory_mb", DEFAULT_MEMORY_MB)
    if isinstance(memory_mb, bool) or not isinstance(memory_mb, int) or memory_mb < 64:
        raise PluginLoadError("config.json: memory_mb must be a whole number of MiB, at least 64")
    environment = raw.get("environment", [])
    if not isinstance(environment, list) or not all(
            isinstance(v, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v) and not v.startswith("MOLTBOT_")
            for v in environment):
        raise PluginLoadError("config.json: environment must be a list of environment variable names "
                              "(not MOLTBOT_* ones)")
    tool = raw.get("tool", True)
    if not isinstance(tool, bool):
        raise PluginLoadError("config.json: tool must be true or false")
    return PluginConfig(
        name=name, version=version, description=description, class_name=class_name, enabled=enabled,
        timeout=float(timeout) if timeout is not None else None,
        settings=resolve_secrets(merged, environ, "settings"), input_schema=schema, admin=admin,
        isolation=isolation, memory_mb=memory_mb, environment=environment, tool=tool,
    )


def check_schema(schema: Any) -> None:
    if not isinstance(schema, dict):
        raise PluginLoadError("input_schema must be a JSON Schema object")
    try:
        validators.validator_for(schema).check_schema(schema)
    except schema_exceptions.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        raise PluginLoadError(f"input_schema is not a valid JSON Schema{' at ' + where if where else ''}: "
                              f"{exc.message}") from None


def resolve_secrets(value: Any, environ: Mapping[str, str], where: str) -> Any:
    """Replace {"env": "NAME"} (optionally with "default") and "${NAME}" / "${NAME:-default}" with values
    from the environment. A reference to an unset variable without a default is a load error."""
    if isinstance(value, dict):
        if set(value) <= {"env", "default"} and isinstance(value.get("env"), str):
            variable = value["env"]
            if variable in environ:
                return environ[variable]
            if "default" in value:
                return value["default"]
            raise PluginLoadError(f"{where}: environment variable {variable} is not set")
        return {k: resolve_secrets(v, environ, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_secrets(v, environ, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str) and "${" in value:
        def substitute(match: re.Match[str]) -> str:
            variable, default = match.group(1), match.group(2)
            if variable in environ:
                return environ[variable]
            if default is not None:
                return default
            raise PluginLoadError(f"{where}: environment variable {variable} is not set")
        return _ENV_REFERENCE.sub(substitute, value)
    return value
