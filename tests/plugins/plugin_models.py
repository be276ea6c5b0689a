"""The models the plugin tests run against, and a recorder that shows what a plugin asked the chat model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from moltbot.engine.embedding import EncoderModel
from moltbot.engine.sessions import DeviceOptions
from moltbot.export.defaults import ensure_defaults

REPO = Path(__file__).resolve().parents[2]


def defaults_dir() -> Path:
    """The embedded default models, made once (about 20 s) and cached like the service does."""
    folder = Path(os.environ.get("MOLTBOT_DEFAULTS_DIR") or REPO / "data" / "defaults")
    ensure_defaults(folder, log=lambda message: None)
    return folder


class InterimRegistry:
    """Real all-MiniLM-L6-v2 embeddings through the engine's ONNX encoder; chat answers come from `replies`."""

    def __init__(self, folder: Path):
        self.encoder = EncoderModel(folder / "all-minilm-l6-v2", DeviceOptions())
        self.replies: list[str] = []

    def model_names(self, task: str | None = None) -> list[str]:
        names = {"chat": ["tiny-chat"], "embeddings": ["all-minilm-l6-v2"]}
        return names[task] if task else names["chat"] + names["embeddings"]

    async def embed(self, texts: list[str], *, model: str | None = None) -> list[list[float]]:
        return self.encoder.embed(texts).tolist()

    async def chat(self, messages: list[dict], *, model: str | None = None, max_tokens: int = 256,
                   temperature: float = 0.0, tools: list | None = None, **kw: Any) -> dict:
        content = self.replies.pop(0) if self.replies else "no scripted reply"
        return {"content": content, "finish_reason": "stop", "model": model or "tiny-chat",
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


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
