"""The serving layer: turns validated requests into engine work and engine events into OpenAI responses.

Routes (routes.py) only parse, call one of these, and send what they return. Nothing here knows Sanic.
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass, field
from typing import AsyncIterator

import numpy as np

from moltbot.api.errors import APIError
from moltbot.api.protocol import (ChatCompletionRequest, CompletionRequest, EmbeddingRequest, ModelCard, ModelList,
                                  new_id, now)
from moltbot.api.tool_parser import parse_tool_calls
from moltbot.engine.generation import EngineStopped, GenerationHandle, QueueFull, SamplingParams, TokenEvent
from moltbot.engine.registry import ModelNotFound, ModelRegistry, ServedModel
from moltbot.engine.service import UpstreamError
from moltbot.engine.tokenizer import TemplateError
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


class UpstreamResponse(Exception):
    """A `service` model's upstream error, passed through as it came (status and JSON body)."""

    def __init__(self, status: int, body: dict):
        super().__init__(status)
        self.status = status
        self.body = body


@dataclass
class Generation:
    """A planned local generation: the model, the tokenised prompts and the sampling parameters."""

    served: ServedModel
    prompts: list[list[int]]
    params: SamplingParams
    n: int

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)


class OpenAIServing:
    def __init__(self, registry: ModelRegistry, settings: Settings):
        self.registry = registry
        self.settings = settings

    # ---- models ---------------------------------------------------------------------------------
    def list_models(self) -> dict:
        cards = [ModelCard(id=m.name, created=m.created, task=m.task, type=m.config.type, provider=m.provider,
                           context_length=m.context_length or None, description=m.config.description)
                 for m in self.registry.models.values()]
        return ModelList(data=cards).model_dump()

    def model(self, name: str, task: str) -> ServedModel:
        try:
            served = self.registry.get(name)
        except ModelNotFound:
            raise APIError(404, f"The model '{name}' does not exist", param="model", code="model_not_found")
        if served.task != task:
            raise APIError(400, f"The model '{name}' serves {served.task}, not {task}", param="model",
                           code="wrong_model_task")
        return served

    # ---- planning (all checks that need the model, before any work starts) ------------------------
    def plan(self, served: ServedModel, prompts: list[str], req, limit: int | None, *,
             add_special_tokens: bool) -> Generation:
        if req.logprobs:
            raise APIError(400, "logprobs are not supported by this server", param="logprobs")
        for penalty in ("presence_penalty", "frequency_penalty"):
            if getattr(req, penalty):
                raise APIError(400, f"{penalty} is not supported by this server (send 0 or leave it out)",
                               param=penalty)
        ids = [served.tokenizer.encode(p, add_special_tokens=add_special_tokens) for p in prompts]
        context = served.context_length
        longest = max(len(i) for i in ids)
        if any(not i for i in ids):
            raise APIError(400, "the prompt is empty after tokenisation", param="prompt")
        if longest >= context:
            raise APIError(400, f"This model's maximum context length is {context} tokens; the prompt has "
                           f"{longest} tokens", param="messages", code="context_length_exceeded")
        if limit is None:
            limit = context - longest
        elif longest + limit > context:
            raise APIError(400, f"This model's maximum context length is {context} tokens. However, you "
                           f"requested {longest + limit} tokens ({longest} in the prompt, {limit} for the "
                           "completion). Please reduce max_tokens.", param="max_tokens",
                           code="context_length_exceeded")
        temperature = served.config.temperature if req.temperature is None else req.temperature
        params = SamplingParams(max_tokens=limit, temperature=temperature,
                                top_p=1.0 if req.top_p is None else req.top_p, stop=req.stop_list(),
                                seed=req.seed, ignore_eos=req.ignore_eos)
        return Generation(served, ids, params, req.n)

    def plan_chat(self, req: ChatCompletionRequest, served: ServedModel, stats: RequestStats,
                  tools: list[dict] | None = None) -> Generation:
        messages = [{**m.model_dump(exclude_none=True), "content": m.text()} for m in req.messages]
        try:
            prompt = served.tokenizer.render_chat(messages, add_generation_prompt=True, tools=tools)
        except TemplateError as exc:
            raise APIError(400, str(exc), param="messages")
        self._record_prompt(stats, [prompt])
        return self.plan(served, [prompt], req, req.token_limit, add_special_tokens=False)

    def plan_completion(self, req: CompletionRequest, served: ServedModel, stats: RequestStats) -> Generation:
        if req.echo or req.suffix:
            raise APIError(400, "echo and suffix are not supported by this server",
                           param="echo" if req.echo else "suffix")
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        self._record_prompt(stats, prompts)
        return self.plan(served, prompts, req, req.token_limit, add_special_tokens=True)

    def _record_prompt(self, stats: RequestStats, prompts: list[str]) -> None:
        if self.settings.log_prompts:
            stats.prompt = "\n".join(prompts)
            stats.output = ""

    # ---- running ----------------------------------------------------------------------------------
    def start(self, gen: Generation) -> GenerationHandle:
        loop = asyncio.get_running_loop()
        scheduler = gen.served.scheduler
        capacity = scheduler.max_running + scheduler.max_queued
        if len(gen.prompts) * gen.n > capacity:
            raise APIError(400, f"This request needs {len(gen.prompts) * gen.n} sequences (prompts x n); the "
                           f"model '{gen.served.name}' takes at most {capacity} at once", param="n",
                           code="too_many_sequences")
        handle = None
        try:
            for ids in gen.prompts:
                handle = scheduler.submit(ids, gen.params, gen.n, loop, handle=handle)
        except BaseException as exc:
            if handle:
                handle.cancel()
            if isinstance(exc, QueueFull):
                raise APIError(429, f"The model '{exc.model}' is busy: its queue is full. Retry after "
                               f"{exc.retry_after} s.", code="queue_full",
                               headers={"Retry-After": str(exc.retry_after)}) from None
            if isinstance(exc, EngineStopped):
                raise APIError(503, "The server is shutting down", code="shutting_down") from None
            raise
        return handle

    async def events(self, handle: GenerationHandle, count: int, started: float) -> AsyncIterator[TokenEvent]:
        """The handle's events until all `count` sequences finished. The deadline counts from `started` and
        covers only the waits for the model (not a slow client reading the stream). Cancels on any exit."""
        deadline = started + self.settings.request_timeout
        finished = 0
        try:
            while finished < count:
                try:
                    event = await asyncio.wait_for(handle.next_event(), max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    raise self.timeout_error() from None
                if event.finish_reason == "error":
                    raise APIError(500, "The model failed while generating; see the server log",
                                   type="server_error", code="generation_failed")
                if event.finish_reason:
                    finished += 1
                yield event
        finally:
            handle.cancel()

    def timeout_error(self) -> APIError:
        return APIError(504, f"The request took longer than {self.settings.request_timeout:g} s",
                        code="request_timeout")

    async def complete(self, gen: Generation, stats: RequestStats) -> tuple[list[str], list[str], int]:
        """Run to the end: texts and finish reasons per choice, and the generated token count."""
        total = len(gen.prompts) * gen.n
        texts, reasons, tokens = [""] * total, ["stop"] * total, 0
        stats.prompt_tokens = gen.prompt_tokens * gen.n
        async for event in self.events(self.start(gen), total, stats.started):
            texts[event.index] += event.text
            tokens += event.tokens
            if event.finish_reason:
                reasons[event.index] = event.finish_reason
        stats.completion_tokens = tokens
        if stats.output is not None:
            stats.output = "\n".join(texts)
        return texts, reasons, tokens

    # ---- chat -------------------------------------------------------------------------------------
    async def chat(self, req: ChatCompletionRequest, stats: RequestStats) -> dict:
        served = self.model(req.model, "chat")
        stats.model = served.name
        if served.service:
            return await self._forward(served, "chat/completions", req)
        gen = await asyncio.to_thread(self.plan_chat, req, served, stats, _tool_dicts(req))
        texts, reasons, tokens = await self.complete(gen, stats)
        choices = []
        for i, (text, reason) in enumerate(zip(texts, reasons)):
            message = {"role": "assistant", "content": text}
            if req.tools:
                content, calls = parse_tool_calls(text)
                if calls:
                    message, reason = {"role": "assistant", "content": content or None, "tool_calls": calls}, \
                        "tool_calls"
            choices.append({"index": i, "message": message, "logprobs": None, "finish_reason": reason})
        return {"id": new_id("chatcmpl"), "object": "chat.completion", "created": now(), "model": served.name,
                "choices": choices, "usage": _usage(stats.prompt_tokens, tokens)}

    async def chat_stream(self, req: ChatCompletionRequest, stats: RequestStats) -> AsyncIterator[dict]:
        """chat.completion.chunk objects; `served` checks and planning happen before the first one."""
        served = self.model(req.model, "chat")
        stats.model = served.name
        if served.service:
            return await self._forward_stream(served, "chat/completions", req)
        gen = await asyncio.to_thread(self.plan_chat, req, served, stats, _tool_dicts(req))
        handle = self.start(gen)
        return self._chat_chunks(gen, handle, req, stats)

    async def _chat_chunks(self, gen: Generation, handle: GenerationHandle, req: ChatCompletionRequest,
                           stats: RequestStats) -> AsyncIterator[dict]:
        base = {"id": new_id("chatcmpl"), "object": "chat.completion.chunk", "created": now(),
                "model": gen.served.name}
        stats.prompt_tokens = gen.prompt_tokens * gen.n
        try:  # whatever ends the stream (a client gone before the first token too) frees the sequences
            for i in range(gen.n):
                yield {**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                            "logprobs": None, "finish_reason": None}]}
            tokens = 0
            async for event in self.events(handle, gen.n, stats.started):
                tokens += event.tokens
                stats.completion_tokens = tokens
                if stats.output is not None:
                    stats.output += event.text
                if event.text or event.finish_reason:
                    delta = {"content": event.text} if event.text else {}
                    yield {**base, "choices": [{"index": event.index, "delta": delta, "logprobs": None,
                                                "finish_reason": event.finish_reason}]}
            if req.stream_options and req.stream_options.include_usage:
                yield {**base, "choices": [], "usage": _usage(stats.prompt_tokens, tokens)}
        finally:
            handle.cancel()

    # ---- completions ------------------------------------------------------------------------------
    async def completion(self, req: CompletionRequest, stats: RequestStats) -> dict:
        served = self.model(req.model, "chat")
        stats.model = served.name
        if served.service:
            return await self._forward(served, "completions", req)
        gen = await asyncio.to_thread(self.plan_completion, req, served, stats)
        texts, reasons, tokens = await self.complete(gen, stats)
        return {
            "id": new_id("cmpl"), "object": "text_completion", "created": now(), "model": served.name,
            "choices": [{"index": i, "text": text, "logprobs": None, "finish_reason": reason}
                        for i, (text, reason) in enumerate(zip(texts, reasons))],
            "usage": _usage(stats.prompt_tokens, tokens),
        }

    async def completion_stream(self, req: CompletionRequest, stats: RequestStats) -> AsyncIterator[dict]:
        served = self.model(req.model, "chat")
        stats.model = served.name
        if served.service:
            return await self._forward_stream(served, "completions", req)
        gen = await asyncio.to_thread(self.plan_completion, req, served, stats)
        handle = self.start(gen)
        return self._completion_chunks(gen, handle, req, stats)

    async def _completion_chunks(self, gen: Generation, handle: GenerationHandle, req: CompletionRequest,
                                 stats: RequestStats) -> AsyncIterator[dict]:
        base = {"id": new_id("cmpl"), "object": "text_completion", "created": now(), "model": gen.served.name}
        stats.prompt_tokens = gen.prompt_tokens * gen.n
        try:
            tokens = 0
            async for event in self.events(handle, len(gen.prompts) * gen.n, stats.started):
                tokens += event.tokens
                stats.completion_tokens = tokens
                if stats.output is not None:
                    stats.output += event.text
                if event.text or event.finish_reason:
                    yield {**base, "choices": [{"index": event.index, "text": event.text, "logprobs": None,
                                                "finish_reason": event.finish_reason}]}
            if req.stream_options and req.stream_options.include_usage:
                yield {**base, "choices": [], "usage": _usage(stats.prompt_tokens, tokens)}
        finally:
            handle.cancel()

    # ---- embeddings -------------------------------------------------------------------------------
    async def embeddings(self, req: EmbeddingRequest, stats: RequestStats) -> dict:
        served = self.model(req.model, "embeddings")
        stats.model = served.name
        if served.service:
            return await self._forward(served, "embeddings", req)
        texts = [req.input] if isinstance(req.input, str) else list(req.input)
        if req.dimensions is not None:
            native = served.encoder.session.get_outputs()[0].shape[-1]
            if req.dimensions != native:
                raise APIError(400, f"The model '{served.name}' makes {native}-dimensional embeddings only",
                               param="dimensions")
        try:
            future = served.embedder.submit(texts)
        except QueueFull as exc:
            raise APIError(429, f"The model '{exc.model}' is busy: its queue is full. Retry after "
                           f"{exc.retry_after} s.", code="queue_full",
                           headers={"Retry-After": str(exc.retry_after)}) from None
        try:
            vectors, token_counts = await asyncio.wait_for(asyncio.wrap_future(future),
                                                           self.settings.request_timeout)
        except TimeoutError:
            future.cancel()
            raise self.timeout_error() from None
        stats.prompt_tokens = int(sum(token_counts))
        data = []
        for i, vec in enumerate(vectors):
            if req.encoding_format == "base64":
                embedding = base64.b64encode(vec.astype("<f4").tobytes()).decode("ascii")
            else:
                embedding = vec.astype(float).tolist()
            data.append({"object": "embedding", "index": i, "embedding": embedding})
        return {"object": "list", "data": data, "model": served.name,
                "usage": {"prompt_tokens": stats.prompt_tokens, "total_tokens": stats.prompt_tokens}}

    # ---- service models ---------------------------------------------------------------------------
    async def _forward(self, served: ServedModel, path: str, req) -> dict:
        try:
            body = await served.service.post(path, _upstream_payload(req))
        except UpstreamError as exc:
            raise UpstreamResponse(exc.status, exc.body)
        if isinstance(body, dict) and "model" in body:
            body["model"] = served.name
        return body

    async def _forward_stream(self, served: ServedModel, path: str, req) -> AsyncIterator[str]:
        """The upstream's SSE `data:` lines, as they come (starts the upstream call before yielding)."""
        stream = served.service.stream(path, {**_upstream_payload(req), "stream": True})
        try:
            first = await stream.__anext__()
        except StopAsyncIteration:
            return _empty()
        except UpstreamError as exc:
            raise UpstreamResponse(exc.status, exc.body)
        return _prepend(first, stream)


def _upstream_payload(req) -> dict:
    """What the client sent, less our model name and our extensions (a strict upstream refuses unknown fields)."""
    return req.model_dump(exclude_unset=True, exclude={"model", "ignore_eos", "max_tool_rounds"})


def _tool_dicts(req: ChatCompletionRequest) -> list[dict] | None:
    """The request's tools as the chat template expects them (as transformers passes them)."""
    return [tool.model_dump(exclude_none=True) for tool in req.tools] if req.tools else None


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _empty():
    return
    yield  # pragma: no cover


async def _prepend(first, rest):
    yield first
    async for item in rest:
        yield item
