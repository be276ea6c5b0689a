"""The served models: reads the configs, loads each model (a bad one never stops the others), and gives the
serving layer and the plugins one place to reach them."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from moltbot import metrics
from moltbot.engine.config import ModelConfig, read_model_configs
from moltbot.engine.embedding import EmbeddingBatcher, EncoderModel
from moltbot.engine.generation import DecoderModel, GenerationScheduler, SamplingParams
from moltbot.engine.service import ServiceClient
from moltbot.engine.sessions import DeviceOptions
from moltbot.engine.sources import ModelSourceError, fetch_remote, quantized, resolve_local
from moltbot.engine.tokenizer import TextTokenizer
from moltbot.settings import Settings

log = logging.getLogger("moltbot.engine")

DEFAULT_MODELS = {
    "tiny-chat": dict(task="chat", max_tokens=2048, temperature=0.7,
                      description="Smoke-test model with random weights: its replies mean nothing. "
                                  "Configure a real instruct model to get answers."),
    "all-minilm-l6-v2": dict(task="embeddings", max_tokens=256, temperature=0.0,
                             description="sentence-transformers/all-MiniLM-L6-v2, 384-dimensional embeddings."),
}


class ModelNotFound(KeyError):
    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


@dataclass
class ServedModel:
    config: ModelConfig
    provider: str = "remote-api"
    load_seconds: float = 0.0
    scheduler: GenerationScheduler | None = None
    tokenizer: TextTokenizer | None = None
    context_length: int = 0
    embedder: EmbeddingBatcher | None = None
    encoder: EncoderModel | None = None
    service: ServiceClient | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def task(self) -> str:
        return self.config.task


class ModelRegistry:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.models: dict[str, ServedModel] = {}
        self.failures: list[dict] = []  # {"source", "model", "error"}
        self.stopping = threading.Event()  # set at shutdown: loading stops between models

    # ---- loading ---------------------------------------------------------------------------------
    def configs(self) -> list[ModelConfig]:
        configs, errors = read_model_configs(self.settings.models_dir)
        for source, error in errors:
            self._fail(source, Path(source).stem, error)
        mode = self.settings.default_models
        if mode == "on" or (mode == "auto" and not configs and not errors):
            taken = {c.name for c in configs}
            defaults_dir = self.settings.defaults_dir
            configs += [ModelConfig(name=name, type="local", path=str(defaults_dir / name), source="embedded default",
                                    **spec) for name, spec in DEFAULT_MODELS.items() if name not in taken]
        return configs

    def ensure_default_models(self) -> None:
        """Make the embedded defaults once (in a child process: the export path imports torch)."""
        folder = self.settings.defaults_dir
        if all((folder / name / "model.onnx").exists() for name in DEFAULT_MODELS):
            return
        log.info("making the embedded default models in %s (once; needs the export extra)", folder)
        result = subprocess.run([sys.executable, "-m", "moltbot.export.defaults", str(folder)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            tail = " / ".join((result.stderr or "").strip().splitlines()[-2:])
            raise ModelSourceError(f"could not make the default models in {folder}: {tail}")

    def load_all(self) -> None:
        """Load every configured model; blocking (call it off the event loop)."""
        configs = self.configs()
        if any(c.source == "embedded default" for c in configs):
            try:
                self.ensure_default_models()
            except ModelSourceError as exc:
                for c in configs:
                    if c.source == "embedded default":
                        self._fail(c.source, c.name, str(exc))
                configs = [c for c in configs if c.source != "embedded default"]
        for config in configs:
            if self.stopping.is_set():
                return
            started = time.monotonic()
            try:
                served = self._load(config)
            except Exception as exc:  # any failure is this model's alone
                self._fail(config.source, config.name, f"{type(exc).__name__}: {exc}"
                           if not isinstance(exc, (ModelSourceError, ValueError)) else str(exc))
                continue
            served.load_seconds = time.monotonic() - started
            self.models[config.name] = served
            metrics.MODEL_LOAD_SECONDS.labels(config.name).set(served.load_seconds)
            metrics.MODEL_INFO.labels(config.name, config.task, config.type, served.provider).set(1)
            log.info("model %s loaded in %.3f s on %s", config.name, served.load_seconds, served.provider,
                     extra={"model": config.name, "load_seconds": round(served.load_seconds, 4),
                            "provider": served.provider, "task": config.task})

    def _fail(self, source: str, name: str, error: str) -> None:
        self.failures.append({"source": source, "model": name, "error": error})
        metrics.MODEL_LOAD_FAILURES.labels(name).inc()
        log.error("model %s not loaded: %s", name, error, extra={"model": name})

    def _device_options(self, config: ModelConfig) -> DeviceOptions:
        s = self.settings
        return DeviceOptions(device=config.device or s.device, cuda_device_id=s.cuda_device_id,
                             gpu_mem_limit=s.gpu_mem_limit, arena_extend_strategy=s.arena_extend_strategy,
                             intra_op_threads=s.intra_op_threads)

    def _load(self, config: ModelConfig) -> ServedModel:
        if config.type == "service":
            return ServedModel(config, service=ServiceClient(config, timeout=self.settings.request_timeout))
        if config.type == "remote":
            folder = fetch_remote(config, self.settings.models_dir, cancel=self.stopping)
        else:
            folder = Path(config.path)
        folder = resolve_local(folder, config.task, self.settings.cache_dir)
        if config.quantize == "int8":
            folder = quantized(folder, self.settings.cache_dir)
        options = self._device_options(config)
        if config.task == "embeddings":
            encoder = EncoderModel(folder, options, self.settings.cache_dir)
            max_queued = self.settings.max_queued if config.max_queued is None else config.max_queued
            batcher = EmbeddingBatcher(config.name, encoder, self.settings.embedding_batch_size,
                                       self.settings.embedding_batch_wait_ms / 1000,
                                       max_pending=(config.max_running or self.settings.max_running) + max_queued)
            return ServedModel(config, provider=encoder.provider, embedder=batcher, encoder=encoder,
                               context_length=encoder.max_length)
        decoder = DecoderModel(folder, options, self.settings.cache_dir)
        tokenizer = TextTokenizer(folder)
        model_limit = _model_context_limit(folder)
        context = min(config.max_tokens, model_limit) if model_limit else config.max_tokens
        scheduler = GenerationScheduler(
            config.name, decoder, tokenizer, context_length=context,
            max_running=config.max_running or self.settings.max_running,
            max_queued=self.settings.max_queued if config.max_queued is None else config.max_queued)
        return ServedModel(config, provider=decoder.provider, scheduler=scheduler, tokenizer=tokenizer,
                           context_length=context)

    async def close(self) -> None:
        for served in list(self.models.values()):
            if served.scheduler:
                await asyncio.to_thread(served.scheduler.stop)
            if served.embedder:
                await asyncio.to_thread(served.embedder.stop)
            if served.service:
                await served.service.close()

    # ---- lookups ---------------------------------------------------------------------------------
    def get(self, name: str | None, task: str | None = None) -> ServedModel:
        if name is None:
            for served in self.models.values():
                if task is None or served.task == task:
                    return served
            raise ModelNotFound(f"<any {task or ''} model>")
        served = self.models.get(name)
        if served is None:
            raise ModelNotFound(name)
        return served

    def model_names(self, task: str | None = None) -> list[str]:
        return [n for n, m in self.models.items() if task is None or m.task == task]

    # ---- convenience for plugins and tools (the HTTP serving layer has its own paths) -------------
    async def chat(self, messages: list[dict], *, model: str | None = None, max_tokens: int = 256,
                   temperature: float = 0.0, tools: list | None = None, **kwargs) -> dict:
        served = self.get(model, task="chat")
        if served.service:
            body = await served.service.post("chat/completions", {
                "messages": messages, "max_tokens": max_tokens, "temperature": temperature,
                **({"tools": tools} if tools else {}), **kwargs})
            choice = body["choices"][0]
            return {"content": choice["message"].get("content") or "", "finish_reason": choice.get("finish_reason"),
                    "usage": body.get("usage", {}), "model": served.name,
                    "tool_calls": choice["message"].get("tool_calls")}
        prompt = served.tokenizer.render_chat(messages, tools=tools)
        ids = served.tokenizer.encode(prompt, add_special_tokens=False)
        max_tokens = max(1, min(max_tokens, served.context_length - len(ids)))
        if len(ids) >= served.context_length:
            raise ValueError(f"the prompt has {len(ids)} tokens; model {served.name} takes {served.context_length}")
        params = SamplingParams(max_tokens=max_tokens, temperature=temperature,
                                seed=kwargs.get("seed"), stop=tuple(kwargs.get("stop") or ()))
        text, finish, completion = await collect(served.scheduler, ids, params)
        return {"content": text, "finish_reason": finish, "model": served.name,
                "usage": {"prompt_tokens": len(ids), "completion_tokens": completion,
                          "total_tokens": len(ids) + completion}}

    async def embed(self, texts: list[str], *, model: str | None = None) -> list[list[float]]:
        served = self.get(model, task="embeddings")
        if served.service:
            body = await served.service.post("embeddings", {"input": texts})
            return [item["embedding"] for item in sorted(body["data"], key=lambda d: d["index"])]
        vectors, _ = await asyncio.wrap_future(served.embedder.submit(list(texts)))
        return vectors.tolist()


async def collect(scheduler: GenerationScheduler, prompt_ids: list[int], params: SamplingParams
                  ) -> tuple[str, str, int]:
    """Run one sequence to the end: (text, finish_reason, generated token count)."""
    handle = scheduler.submit(prompt_ids, params, 1, asyncio.get_running_loop())
    parts, tokens = [], 0
    try:
        while True:
            event = await handle.next_event()
            if event.finish_reason == "error":
                raise RuntimeError(event.text)
            parts.append(event.text)
            tokens += event.tokens
            if event.finish_reason:
                return "".join(parts), event.finish_reason, tokens
    finally:
        handle.cancel()


def _model_context_limit(folder: Path) -> int | None:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config.get("max_position_embeddings") or config.get("n_positions")
