"""The serving layer: hands requests to a model's backend (which validates them) and turns its typed events into
OpenAI responses and chunks, whatever the backend. Owns the request's deadline and the access-log stats.

Routes (routes.py) only parse, call one of these, and send what they return. Nothing here knows Sanic.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Any

from moltbot.api.errors import APIError
from moltbot.api.openapi import Served
from moltbot.api.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ModelCard,
    ModelList,
    new_id,
    now,
)
from moltbot.engine.backend import Event, Generation, ModelBackend, TokenLogprob, Usage, collect
from moltbot.engine.registry import ModelRegistry
from moltbot.engine.tool_calls import ToolCallDelta
from moltbot.engine.validation import ModelLimits
from moltbot.settings import Settings


@dataclass
class RequestStats:
    """What the access log records about a request's model work."""

    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    started: float = field(default_factory=time.monotonic)
    prompt: str | None = None  # only with the log_prompts setting
    output: str | None = None


class ChunkStream:
    """Response chunks made from a generation; closing it closes the generation, even before the first chunk."""

    def __init__(self, chunks: AsyncGenerator[dict[str, Any], None], generation: Generation):
        self._chunks = chunks
        self._generation = generation

    def __aiter__(self) -> ChunkStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        return await anext(self._chunks)

    async def aclose(self) -> None:
        await self._chunks.aclose()
        await self._generation.aclose()


# What a streamed response is made of: chunks from a generation, or a finished reply's (the plugin-tool path).
Chunks = ChunkStream | AsyncGenerator[dict[str, Any], None]


class OpenAIServing:
    def __init__(self, registry: ModelRegistry, settings: Settings):
        self.registry = registry
        self.settings = settings

    # ---- models ---------------------------------------------------------------------------------
    def list_models(self) -> dict[str, Any]:
        cards = []
        for backend in self.registry.models.values():
            info = backend.describe()
            cards.append(ModelCard(id=info.name, created=info.created, task=info.task, type=info.type,
                                   source=info.source, backend=info.backend, provider=info.provider,
                                   context_length=info.context_length or None, graph=info.graph,
                                   precision=info.precision, description=info.description))
        return ModelList(data=cards).model_dump()

    def served(self) -> Served:
        """The served models as the OpenAPI document tells of them (a local model's limits, where every model of
        the task is local: a service model's upstream has its own)."""
        names: dict[str, list[str]] = {"chat": [], "embeddings": []}
        limits: dict[str, list[ModelLimits | None]] = {"chat": [], "embeddings": []}
        dimensions: list[int | None] = []
        for backend in self.registry.models.values():
            info = backend.describe()
            task = "embeddings" if info.task == "embeddings" else "chat"
            names[task].append(info.name)
            limit = getattr(backend, "limits", None)
            limits[task].append(limit if isinstance(limit, ModelLimits) else None)
            if task == "embeddings":
                native = getattr(backend, "dimensions", None)
                dimensions.append(native if isinstance(native, int) else None)

        def least(task: str, field: str) -> int:
            known = limits[task]
            if not known or any(limit is None for limit in known):
                return 0
            return min(int(getattr(limit, field)) for limit in known)

        return Served(tuple(names["chat"]), tuple(names["embeddings"]),
                      tuple(d for d in dimensions if d is not None) if None not in dimensions else (),
                      chat_vocab=least("chat", "vocab_size"), embedding_vocab=least("embeddings", "vocab_size"),
                      capacity=least("chat", "capacity"), local_chat=bool(least("chat", "capacity")),
                      local_embeddings=bool(limits["embeddings"]) and None not in limits["embeddings"])

    def _backend(self, name: str, stats: RequestStats) -> ModelBackend:
        backend = self.registry.backend(name)
        stats.model = backend.describe().name
        return backend

    def _started(self, generation: Generation, stats: RequestStats) -> Generation:
        stats.prompt_tokens = generation.prompt_tokens
        if self.settings.log_prompts and generation.prompt is not None:
            stats.prompt, stats.output = generation.prompt, ""
        return generation

    async def _events(self, generation: Generation, stats: RequestStats) -> AsyncGenerator[Event, None]:
        """The generation's events, with the request's deadline on each wait for the model (counted from the
        request's start; a slow client reading the stream does not count) and the stats kept up to date."""
        deadline = stats.started + self.settings.request_timeout
        while True:
            try:
                event = await asyncio.wait_for(anext(generation), max(0.0, deadline - time.monotonic()))
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise self.timeout_error() from None
            if isinstance(event, Usage):
                stats.prompt_tokens, stats.completion_tokens = event.prompt_tokens, event.completion_tokens
            else:
                stats.completion_tokens += event.tokens
                if stats.output is not None:
                    stats.output += event.text
            yield event

    def timeout_error(self) -> APIError:
        return APIError(504, f"The request took longer than {self.settings.request_timeout:g} s",
                        code="request_timeout")

    # ---- chat -------------------------------------------------------------------------------------
    async def chat(self, req: ChatCompletionRequest, stats: RequestStats) -> dict[str, Any]:
        backend = self._backend(req.model, stats)
        generation = self._started(await backend.chat(req.to_input()), stats)
        try:
            result = await collect(self._events(generation, stats))
        finally:
            await generation.aclose()
        choices = []
        for i, choice in enumerate(result.choices):
            content, calls = choice.text, [call.as_openai() for call in choice.tool_calls]
            reason = choice.finish_reason or "stop"
            message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
            if calls:  # a local model's reader said tool_calls already; an upstream may say stop
                message = {"role": "assistant", "content": content or None, "refusal": None, "tool_calls": calls}
                reason = "tool_calls" if reason == "stop" else reason
            choices.append({"index": i, "message": message, "logprobs": _chat_logprobs(req, choice.logprobs),
                            "finish_reason": reason})
        if stats.output is not None:
            stats.output = "\n".join(c.text for c in result.choices)
        return {"id": new_id("chatcmpl"), "object": "chat.completion", "created": now(), "model": stats.model,
                "choices": choices, "usage": _usage(result.usage, stats)}

    async def chat_stream(self, req: ChatCompletionRequest, stats: RequestStats) -> ChunkStream:
        """chat.completion.chunk objects; every check, and the start of the work, happen before the first one."""
        backend = self._backend(req.model, stats)
        generation = self._started(await backend.chat(req.to_input()), stats)
        return ChunkStream(self._chat_chunks(generation, req, stats), generation)

    async def _chat_chunks(self, generation: Generation, req: ChatCompletionRequest, stats: RequestStats
                           ) -> AsyncGenerator[dict[str, Any], None]:
        base = {"id": new_id("chatcmpl"), "object": "chat.completion.chunk", "created": now(), "model": stats.model}
        for i in range(req.n):
            yield {**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                        "logprobs": None, "finish_reason": None}]}
        usage = None
        called: set[int] = set()
        async for event in self._events(generation, stats):
            if isinstance(event, Usage):
                usage = event
                continue
            text, pieces = event.text, event.tool_calls
            called |= {event.index} if pieces else set()
            reason = event.finish_reason
            if reason == "stop" and event.index in called:
                reason = "tool_calls"
            if text or pieces or reason or event.logprobs:
                yield {**base, "choices": [{"index": event.index, "delta": _chat_delta(text, pieces),
                                            "logprobs": _chat_logprobs(req, event.logprobs),
                                            "finish_reason": reason}]}
        if req.stream_options and req.stream_options.include_usage and usage is not None:
            yield {**base, "choices": [], "usage": _usage(usage, stats)}

    # ---- completions ------------------------------------------------------------------------------
    async def completion(self, req: CompletionRequest, stats: RequestStats) -> dict[str, Any]:
        backend = self._backend(req.model, stats)
        generation = self._started(await backend.complete(req.to_input()), stats)
        try:
            result = await collect(self._events(generation, stats))
        finally:
            await generation.aclose()
        if stats.output is not None:
            stats.output = "\n".join(c.text for c in result.choices)
        return {
            "id": new_id("cmpl"), "object": "text_completion", "created": now(), "model": stats.model,
            "choices": [{"index": i, "text": choice.text, "logprobs": _completion_logprobs(req, choice.logprobs),
                         "finish_reason": choice.finish_reason or "stop"} for i, choice in enumerate(result.choices)],
            "usage": _usage(result.usage, stats),
        }

    async def completion_stream(self, req: CompletionRequest, stats: RequestStats) -> ChunkStream:
        backend = self._backend(req.model, stats)
        generation = self._started(await backend.complete(req.to_input()), stats)
        return ChunkStream(self._completion_chunks(generation, req, stats), generation)

    async def _completion_chunks(self, generation: Generation, req: CompletionRequest, stats: RequestStats
                                 ) -> AsyncGenerator[dict[str, Any], None]:
        base = {"id": new_id("cmpl"), "object": "text_completion", "created": now(), "model": stats.model}
        usage = None
        async for event in self._events(generation, stats):
            if isinstance(event, Usage):
                usage = event
            elif event.text or event.finish_reason or event.logprobs:
                yield {**base, "choices": [{"index": event.index, "text": event.text,
                                            "logprobs": _completion_logprobs(req, event.logprobs),
                                            "finish_reason": event.finish_reason}]}
        if req.stream_options and req.stream_options.include_usage and usage is not None:
            yield {**base, "choices": [], "usage": _usage(usage, stats)}

    # ---- embeddings -------------------------------------------------------------------------------
    async def embeddings(self, req: EmbeddingRequest, stats: RequestStats) -> dict[str, Any]:
        backend = self._backend(req.model, stats)
        try:
            result = await asyncio.wait_for(backend.embed(req.to_input()), self.settings.request_timeout)
        except TimeoutError:
            raise self.timeout_error() from None
        stats.prompt_tokens = result.prompt_tokens
        data = []
        for i, vec in enumerate(result.vectors):
            embedding: str | list[float]
            if req.encoding_format == "base64":
                embedding = base64.b64encode(vec.astype("<f4").tobytes()).decode("ascii")
            else:
                embedding = vec.astype(float).tolist()
            data.append({"object": "embedding", "index": i, "embedding": embedding})
        return {"object": "list", "data": data, "model": stats.model,
                "usage": {"prompt_tokens": stats.prompt_tokens, "total_tokens": stats.prompt_tokens}}


def _chat_delta(text: str, pieces: Sequence[ToolCallDelta]) -> dict[str, Any]:
    delta: dict[str, Any] = {"content": text} if text else {}
    if pieces:
        delta["tool_calls"] = [piece.as_openai() for piece in pieces]
    return delta


def _chat_logprobs(req: ChatCompletionRequest, logprobs: Sequence[TokenLogprob]) -> dict[str, Any] | None:
    """A chat choice's (or chunk's) `logprobs`, where the request asked for them."""
    return {"content": [lp.as_openai() for lp in logprobs], "refusal": None} if req.logprobs else None


def _completion_logprobs(req: CompletionRequest, logprobs: Sequence[TokenLogprob]) -> dict[str, Any] | None:
    """A completion choice's (or chunk's) `logprobs`, where the request asked for them: parallel lists, each
    position's alternatives as {token: logprob} with the sampled token among them (as OpenAI has it: up to
    logprobs + 1 entries)."""
    if req.logprobs is None:
        return None
    tops = []
    for lp in logprobs:
        top: dict[str, float | None] = {}
        for alternative in (*lp.top, lp):
            top.setdefault(alternative.token, alternative.logprob)  # tokens of the same text: the likelier one
        tops.append(top)
    offsets, at = [], 0
    for lp in logprobs:  # a backend that does not place its tokens: each after the one before
        offsets.append(at if lp.offset is None else lp.offset)
        at = offsets[-1] + len(lp.token)
    return {"tokens": [lp.token for lp in logprobs], "token_logprobs": [lp.logprob for lp in logprobs],
            "top_logprobs": tops, "text_offset": offsets}


def _usage(usage: Usage | None, stats: RequestStats) -> dict[str, int]:
    """The usage the backend reported; where it reported none, what the stats counted."""
    prompt, completion = (usage.prompt_tokens, usage.completion_tokens) if usage else (
        stats.prompt_tokens, stats.completion_tokens)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

