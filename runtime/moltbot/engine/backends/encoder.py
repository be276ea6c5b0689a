"""Local embedding models: an ONNX encoder on ONNX Runtime, behind the dynamic batcher (embedding.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from moltbot.engine.backend import (
    ChatInput,
    CompletionInput,
    EmbeddingInput,
    Embeddings,
    Generation,
    ModelInfo,
    wrong_task,
)
from moltbot.engine.config import ModelConfig
from moltbot.engine.embedding import EmbeddingBatcher, EncoderModel
from moltbot.engine.sessions import admission_limits, device_options
from moltbot.engine.sources import onnx_folder
from moltbot.engine.validation import check_dimensions
from moltbot.settings import Settings


class EncoderBackend:
    def __init__(self, info: ModelInfo, batcher: EmbeddingBatcher):
        self.info = info
        self.batcher = batcher
        self.dimensions = int(batcher.model.session.get_outputs()[0].shape[-1])

    @classmethod
    def load(cls, config: ModelConfig, folder: Path | None, settings: Settings) -> EncoderBackend:
        if folder is None:
            raise ValueError(f"{config.name}: the onnxruntime backend needs model files")
        folder = onnx_folder(folder, config, settings)
        encoder = EncoderModel(folder, device_options(config, settings), settings.cache_dir)
        max_running, max_queued = admission_limits(config, settings)
        batcher = EmbeddingBatcher(config.name, encoder, settings.embedding_batch_size,
                                   settings.embedding_batch_wait_ms / 1000, max_pending=max_running + max_queued)
        return cls(ModelInfo.of(config, encoder.provider, encoder.max_length), batcher)

    def describe(self) -> ModelInfo:
        return self.info

    async def chat(self, request: ChatInput) -> Generation:
        raise wrong_task(self.info, "chat")

    async def complete(self, request: CompletionInput) -> Generation:
        raise wrong_task(self.info, "chat")

    async def embed(self, request: EmbeddingInput) -> Embeddings:
        check_dimensions(request.dimensions, self.dimensions, self.info.name)
        # Cancelling this (a timeout) cancels the future, so a batch not yet run leaves it out.
        vectors, token_counts = await asyncio.wrap_future(self.batcher.submit(list(request.texts)))
        return Embeddings(vectors, int(sum(token_counts)))

    async def close(self) -> None:
        await asyncio.to_thread(self.batcher.stop)
