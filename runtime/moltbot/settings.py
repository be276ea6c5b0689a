"""Service settings: one typed object, read from defaults < config file < MOLTBOT_* environment < CLI flags.

Every field maps to the environment variable MOLTBOT_<FIELD NAME IN CAPITALS> and to the CLI flag
--<field-name-with-dashes>. The config file (MOLTBOT_CONFIG or --config) is JSON or TOML with the same
field names. The README's settings table is generated from the field docs below (`moltbot settings`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

ENV_PREFIX = "MOLTBOT_"


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names the setting."""


def _doc(text: str, **kwargs: Any) -> Any:
    return field(metadata={"doc": text}, **kwargs)


@dataclass
class Settings:
    # Network
    host: str = _doc("Address the HTTP (and HTTPS) listeners bind to. `make run` uses 127.0.0.1.", default="0.0.0.0")
    port: int = _doc("HTTP port.", default=8080)
    https_port: int = _doc("HTTPS port, served when tls_cert and tls_key are both set.", default=8443)
    tls_cert: str | None = _doc("PEM certificate (chain) for HTTPS.", default=None)
    tls_key: str | None = _doc("PEM private key for HTTPS.", default=None)
    ui: bool = _doc("Serve the chat page at / and /ui/ (off: those paths answer 404).", default=True)

    # Folders
    models_dir: Path = _doc("Model configs (`*.json`) and downloaded models.", default=Path("./data/models"))
    plugins_dir: Path = _doc("Plugins, one folder each.", default=Path("./plugins"))
    logs_dir: Path = _doc("JSON log file `moltbot.log` (size-rotated).", default=Path("./data/logs"))
    defaults_dir: Path = _doc(
        "Where the embedded default models are made once and cached (baked into the image).",
        default=Path("./data/defaults"),
    )
    cache_dir: Path = _doc("ONNX exports of Hugging Face checkpoints, made once and cached.",
                           default=Path("./data/cache"))
    data_dir: Path | None = _doc(
        "State the server keeps: stored Responses-API responses (responses.sqlite3). Empty: stateless (no response "
        "is stored; previous_response_id is refused).", default=Path("./data/state"))
    responses_max_stored: int = _doc("Stored responses kept at most (the oldest go first).", default=10000)
    responses_max_age_hours: float = _doc("Hours a stored response is kept (OpenAI keeps them 30 days).",
                                          default=720.0)
    default_models: str = _doc(
        "`auto`: serve the embedded defaults when no model config is found; `on`: always; `off`: never.",
        default="auto",
    )
    default_chat_precision: str = _doc(
        "Weights of the embedded default chat model (smollm2-135m-instruct): `auto` (int8 on the CPU, fp16 on "
        "CUDA), `int8`, `int4` (the file's own Q4_1 blocks: a smaller graph, a little less exact, and on a 2-core "
        "CPU slower than int8, docs/engine.md) or `fp32`; another precision is made once "
        "from the packaged GGUF with the model builder (builder_python).", default="auto",
    )

    # Security
    api_keys: list[str] = _doc("Comma-separated API keys; when any key is set, /v1 routes need one.",
                               default_factory=list)
    api_keys_file: Path | None = _doc("File with one API key per line (added to api_keys).", default=None)
    metrics_require_key: bool = _doc("Protect /metrics with the API keys too.", default=False)
    admin_api_keys: list[str] = _doc(
        "Comma-separated admin keys; when any is set, routes that change server state (plugin reload, knowledge "
        "base ingest) need one (403 for an ordinary key); an admin key also works on every other /v1 route.",
        default_factory=list)
    admin_api_keys_file: Path | None = _doc("File with one admin key per line (added to admin_api_keys).",
                                            default=None)
    cors_origins: list[str] = _doc(
        "Comma-separated origins (`https://app.example.com`, or `*`) whose browser pages may call the API (CORS, "
        "preflight answered); empty: off.", default_factory=list)
    allow_unauthenticated: bool = _doc(
        "Serve without API keys on an address other than loopback (`host` 0.0.0.0, a LAN address); off: "
        "`moltbot serve` refuses to start that way, as anyone who reaches the port could use the models and plugins.",
        default=False)
    allowed_hosts: list[str] = _doc(
        "Without API keys, the names a request's `Host` may carry besides localhost (and `*.localhost`) and IP "
        "addresses such as 127.0.0.1 or [::1] (any port), comma-separated, no port (`*`: any); another name is refused "
        "with a 421, so that a website cannot reach the server through DNS rebinding. Probes and /metrics are not "
        "checked.", default_factory=list)

    # Limits
    max_body_bytes: int = _doc("Largest request body accepted (413 beyond).", default=4 * 1024 * 1024)
    max_running: int = _doc("Per model: requests decoded together in one batch.", default=32)
    max_queued: int = _doc("Per model: requests waiting for a batch slot; beyond it 429 with Retry-After.",
                           default=128)
    prefill_stall_ms: float = _doc(
        "Per model: while streams run, the most a long newcomer's prompt holds up their next token (ms), or one "
        "decode step where that is longer. Such a prompt is prefilled a chunk per decode step, each chunk as many "
        "tokens as the measured prefill rate fits in this time (16 to 256). Lower: smoother streams; higher: a "
        "sooner first token for long prompts.",
        default=40.0)
    stall_timeout: float = _doc(
        "Seconds a model's scheduler pass (its graph calls of one step) may run before /health answers 503 naming "
        "the model: the decode is wedged.", default=60.0)
    stall_exit_after: float = _doc(
        "Seconds of such a stall after which the process exits (code 70) so that its supervisor (Docker's restart "
        "policy, Kubernetes) starts it again; 0: never exit.", default=180.0)
    request_timeout: float = _doc("Seconds a request may take in all before it fails with a timeout error.",
                                  default=300.0)
    shutdown_timeout: float = _doc("Seconds in-flight requests get to finish after SIGTERM.", default=30.0)
    shutdown_delay: float = _doc(
        "Seconds after SIGTERM during which /ready answers 503 while new connections are still accepted "
        "(lets a load balancer take the instance out first).", default=0.0)

    # Inference
    device: str = _doc("`cpu` or `cuda` (CUDA execution provider when present, else a warning and the CPU).",
                       default="cpu")
    cuda_device_id: int = _doc("GPU index for the CUDA provider.", default=0)
    gpu_mem_limit: int = _doc("CUDA arena limit in bytes (0: no limit).", default=0)
    arena_extend_strategy: str = _doc("CUDA arena growth: `kNextPowerOfTwo` or `kSameAsRequested`.",
                                      default="kNextPowerOfTwo")
    intra_op_threads: int = _doc("ONNX Runtime threads per session (0: one per CPU the process may use: its "
                                 "cpuset, capped by its cgroup's CPU quota, e.g. docker run --cpus).", default=0)
    builder_python: str | None = _doc(
        "Python of the ONNX Runtime GenAI model builder's venv (`make builder-venv`: build/builder-venv/bin/python), "
        "used to make builder graphs (int4, int8, fp32, fp16) of Hugging Face checkpoints.", default=None)
    embedding_batch_size: int = _doc("Most inputs embedded in one batch.", default=64)
    embedding_batch_wait_ms: float = _doc("How long an embedding batch waits to fill.", default=3.0)
    embedding_truncate: bool = _doc(
        "Cut embedding inputs longer than the model's context to fit (off: refused with a 400, as OpenAI does).",
        default=False)

    # Plugins
    plugin_timeout: float = _doc("Default seconds a plugin call may take (504 beyond).", default=30.0)
    plugin_workers: int = _doc("Threads running blocking plugin code.", default=4)
    plugin_isolation: str = _doc(
        "How plugins whose config.json sets no `isolation` run: `process` (a worker process each, killed and "
        "restarted on a timeout or crash, with a memory limit) or `thread` (in the service's process). The "
        "built-in plugins set `thread`. Isolation bounds crashes, hangs and memory, not access: a worker runs as "
        "the service's user and can read the server's files.", default="process")
    plugin_watch_interval: float = _doc(
        "Seconds between checks of the plugins dir for changed plugins, reloaded on their own (0: off; "
        "POST /v1/plugins/reload always works).", default=0.0)

    # Logging
    log_level: str = _doc("DEBUG, INFO, WARNING or ERROR.", default="INFO")
    log_prompts: bool = _doc("Log prompts and outputs (off: only sizes and token counts).", default=False)
    log_max_bytes: int = _doc("Size at which the log file rotates.", default=10 * 1024 * 1024)
    log_backups: int = _doc("Rotated log files kept.", default=5)

    @property
    def tls_enabled(self) -> bool:
        return bool(self.tls_cert and self.tls_key)

    def all_api_keys(self) -> list[str]:
        return _keys(self.api_keys, self.api_keys_file, "api_keys_file")

    def all_admin_api_keys(self) -> list[str]:
        return _keys(self.admin_api_keys, self.admin_api_keys_file, "admin_api_keys_file")

    def validate(self) -> Settings:
        for name in ("port", "https_port"):
            value = getattr(self, name)
            if not 0 < value < 65536:
                raise SettingsError(f"{name}: {value} is not a TCP port")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise SettingsError("tls_cert and tls_key must be set together")
        if self.default_models not in ("auto", "on", "off"):
            raise SettingsError(f"default_models: {self.default_models!r} is not auto, on or off")
        if self.device not in ("cpu", "cuda"):
            raise SettingsError(f"device: {self.device!r} is not cpu or cuda")
        if self.default_chat_precision not in ("auto", "int8", "int4", "fp32", "fp16"):
            raise SettingsError(f"default_chat_precision: {self.default_chat_precision!r} is not auto, int8, int4, "
                                "fp32 or fp16")
        for name in ("max_running", "max_body_bytes", "embedding_batch_size", "plugin_workers",
                     "responses_max_stored"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name}: must be at least 1")
        if self.max_queued < 0:
            raise SettingsError("max_queued: must be 0 or more")
        if self.stall_exit_after and self.stall_exit_after < self.stall_timeout:
            raise SettingsError("stall_exit_after: must be 0 or at least stall_timeout (/health fails first)")
        for name in ("request_timeout", "plugin_timeout", "responses_max_age_hours", "stall_timeout"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name}: must be more than 0 seconds")
        for name in ("shutdown_timeout", "shutdown_delay", "embedding_batch_wait_ms", "plugin_watch_interval",
                     "prefill_stall_ms", "stall_exit_after"):
            if getattr(self, name) < 0:
                raise SettingsError(f"{name}: must be 0 or more")
        if self.arena_extend_strategy not in ("kNextPowerOfTwo", "kSameAsRequested"):
            raise SettingsError(f"arena_extend_strategy: {self.arena_extend_strategy!r} is not kNextPowerOfTwo "
                                "or kSameAsRequested")
        if (self.api_keys or self.api_keys_file) and not self.all_api_keys():
            # Keys were asked for but none was found: refuse to start rather than serve without keys.
            raise SettingsError("api_keys / api_keys_file are set but hold no key")
        if (self.admin_api_keys or self.admin_api_keys_file) and not self.all_admin_api_keys():
            raise SettingsError("admin_api_keys / admin_api_keys_file are set but hold no key")
        if set(self.all_admin_api_keys()) & set(self.all_api_keys()):
            raise SettingsError("a key is both in api_keys and admin_api_keys: keep admin keys separate")
        if self.plugin_isolation not in ("process", "thread"):
            raise SettingsError(f"plugin_isolation: {self.plugin_isolation!r} is not process or thread")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise SettingsError(f"log_level: {self.log_level!r} is not DEBUG, INFO, WARNING or ERROR")
        self.log_level = self.log_level.upper()
        return self

    @classmethod
    def load(cls, overrides: dict[str, Any] | None = None, environ: dict[str, str] | None = None) -> Settings:
        """Defaults, then the config file, then MOLTBOT_* variables, then `overrides` (CLI flags)."""
        environ = dict(os.environ if environ is None else environ)
        overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        values: dict[str, Any] = {}
        config_path = overrides.pop("config", None) or environ.get(ENV_PREFIX + "CONFIG")
        if config_path:
            values.update(_read_config_file(Path(config_path)))
        for f in dataclasses.fields(cls):
            env_value = environ.get(ENV_PREFIX + f.name.upper())
            if env_value is not None:
                values[f.name] = env_value
        values.update(overrides)
        hints = get_type_hints(cls)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SettingsError(f"unknown setting(s): {', '.join(unknown)}")
        return cls(**{k: _coerce(k, v, hints[k]) for k, v in values.items()}).validate()

    @classmethod
    def documentation(cls) -> list[tuple[str, str, str]]:
        """(environment variable, default, description) for each field."""
        rows = []
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if isinstance(default, list):
                default = ",".join(default)
            rows.append((ENV_PREFIX + f.name.upper(), "" if default is None else str(default), f.metadata["doc"]))
        return rows


def _keys(inline: list[str], file: Path | None, name: str) -> list[str]:
    keys = [k for k in inline if k]
    if file:
        try:
            lines = Path(file).read_text().splitlines()
        except OSError as exc:
            raise SettingsError(f"{name}: cannot read {file}: {exc.strerror}") from exc
        keys += [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    return keys


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise SettingsError(f"config file {path}: {exc.strerror}") from exc
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        kind = "TOML" if path.suffix == ".toml" else "JSON"
        raise SettingsError(f"config file {path}: not valid {kind}: {exc}") from exc
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path}: expected an object of settings")
    return data


def _coerce(name: str, value: Any, hint: Any) -> Any:
    text_hint = str(hint)
    try:
        if value is None:
            return None
        if "list" in text_hint:
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            return [str(v) for v in value]
        if "Path" in text_hint:  # an empty optional path is none (Path("") would be the working directory)
            return None if value == "" and "None" in text_hint else Path(value)
        if hint is bool or text_hint == "bool":
            if isinstance(value, bool):
                return value
            lowered = str(value).strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if hint is int or text_hint == "int":
            return int(value)
        if hint is float or text_hint == "float":
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{name}: {value!r} is not a valid {getattr(hint, '__name__', text_hint)}") from None
