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
    Prompts,
    wrong_task,
)
from moltbot.engine.config import ModelConfig
from moltbot.engine.embedding import EmbeddingBatcher, EncoderModel
from moltbot.engine.sessions import admission_limits, device_options
from moltbot.engine.sources import onnx_folder
from moltbot.engine.validation import (
    ModelLimits,
    check_dimensions,
    check_embedding_inputs,
    check_known_fields,
    check_token_ids,
)
from moltbot.settings import Settings


class EncoderBackend:
    def __init__(self, info: ModelInfo, batcher: EmbeddingBatcher, truncate: bool = False):
        self.info = info
        self.batcher = batcher
        self.truncate = truncate
        self.dimensions = int(batcher.model.session.get_outputs()[0].shape[-1])
        tokenizer = batcher.model.tokenizer
        self.limits = ModelLimits(model=info.name, context_length=batcher.model.max_length, capacity=0,
                                  default_temperature=0.0, vocab_size=tokenizer.vocab_size)
        self.prefix, self.suffix = tokenizer.special_tokens_around()

    @classmethod
    def load(cls, config: ModelConfig, folder: Path | None, settings: Settings) -> EncoderBackend:
        if folder is None:
            raise ValueError(f"{config.name}: the onnxruntime backend needs model files")
        folder = onnx_folder(folder, config, settings)
        encoder = EncoderModel(folder, device_options(config, settings), settings.cache_dir)
        max_running, max_queued = admission_limits(config, settings)
        batcher = EmbeddingBatcher(config.name, encoder, settings.embedding_batch_size,
                                   settings.embedding_batch_wait_ms / 1000, max_pending=max_running + max_queued)
        return cls(ModelInfo.of(config, encoder.provider, encoder.max_length), batcher,
                   truncate=settings.embedding_truncate)

    def describe(self) -> ModelInfo:
        return self.info

    async def chat(self, request: ChatInput) -> Generation:
        raise wrong_task(self.info, "chat")

    async def complete(self, request: CompletionInput) -> Generation:
        raise wrong_task(self.info, "chat")

    async def embed(self, request: EmbeddingInput) -> Embeddings:
        check_known_fields(request.unknown_fields)
        check_dimensions(request.dimensions, self.dimensions, self.info.name)
        truncate = self.truncate if request.truncate is None else request.truncate
        inputs = await asyncio.to_thread(self._tokenise, request.texts, truncate)
        # Cancelling this (a timeout) cancels the future, so a batch not yet run leaves it out.
        vectors, token_counts = await asyncio.wrap_future(self.batcher.submit(inputs))
        return Embeddings(vectors, int(sum(token_counts)))

    def _tokenise(self, texts: Prompts, truncate: bool) -> list[list[int]]:
        """Each input's token ids with the model's special tokens around them, checked against its context.
        Token ids a client sent are taken as the model's own (check_token_ids refuses those that cannot be)."""
        tokenizer = self.batcher.model.tokenizer
        ids = [tokenizer.encode(t, add_special_tokens=False) if isinstance(t, str) else list(t) for t in texts]
        check_token_ids([i for t, i in zip(texts, ids, strict=True) if not isinstance(t, str)], self.limits, "input")
        ids = check_embedding_inputs(ids, self.limits, truncate,
                                     reserved=len(self.prefix) + len(self.suffix))
        return [[*self.prefix, *i, *self.suffix] for i in ids]

    async def close(self) -> None:
        await asyncio.to_thread(self.batcher.stop)
