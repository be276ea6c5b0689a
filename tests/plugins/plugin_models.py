"""The models the plugin tests run against, and a recorder that shows what a plugin asked the chat model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from moltbot.engine.registry import ModelRegistry
from moltbot.settings import Settings


def real_registry(models_dir: Path, defaults_dir: Path) -> ModelRegistry:
    """The service's registry serving the embedded defaults: tiny-chat and all-MiniLM-L6-v2 on ONNX Runtime."""
    settings = Settings(models_dir=models_dir, defaults_dir=defaults_dir, default_models="on",
                        plugins_dir=models_dir).validate()
    registry = ModelRegistry(settings)
    registry.load_all()
    assert sorted(registry.model_names()) == ["all-minilm-l6-v2", "tiny-chat"], registry.failures
    return registry


class RecordingModels:
    """Passes every call to the real registry and keeps the chat requests for the test to inspect."""

    def __init__(self, registry: Any):
        self.registry = registry
        self.chat_calls: list[dict[str, Any]] = []
        self.chat_replies: list[dict[str, Any]] = []
        self.embedded_texts = 0

    def model_names(self, task: str | None = None) -> list[str]:
        return self.registry.model_names(task)

    async def embed(self, texts: list[str], *, model: str | None = None) -> list[list[float]]:
        self.embedded_texts += len(texts)
        return await self.registry.embed(texts, model=model)

    async def chat(self, messages: list[dict], **kwargs: Any) -> dict:
        self.chat_calls.append({"messages": messages, **kwargs})
        reply = await self.registry.chat(messages, **kwargs)
        self.chat_replies.append(reply)
        return reply
