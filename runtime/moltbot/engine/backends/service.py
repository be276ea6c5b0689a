"""Service models: a third-party OpenAI-compatible API. Requests are forwarded on the operator's upstream key, so
only the OpenAI fields in FORWARDED go (anything else a client sends, e.g. store, service_tier, metadata, is
dropped), and max_tokens / max_completion_tokens and n are capped per model (max_completion_tokens, max_n in the
model config: a 400 beyond; a request that sets no length is sent with the cap). The upstream's replies, streamed
or not, come back as the same typed events as a local model's, and its errors as UpstreamError (status and body
passed through, except a 401/403: the upstream refusing the operator's key is a 502 that quotes nothing of it).
Messages are rebuilt from OpenAI's message fields alone."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from moltbot.engine.backend import (
    ChatInput,
    ChoiceDelta,
    CompletionInput,
    EmbeddingInput,
    Embeddings,
    Event,
    Generation,
    ModelInfo,
    TokenLogprob,
    TopLogprob,
    Usage,
    wrong_task,
)
from moltbot.engine.config import ModelConfig
from moltbot.engine.errors import InvalidRequest, UpstreamError, upstream_error_body
from moltbot.engine.tool_calls import ToolCallDelta, ToolCallFormat, ToolCallReader, format_for
from moltbot.engine.validation import SamplingRequest, check_sampling, check_tool_choice
from moltbot.settings import Settings

# The request fields forwarded upstream, per endpoint: what the reply depends on, nothing that bills, stores or
# routes differently on the operator's account (store, service_tier, metadata, prediction, audio, best_of, ...).
# top_k, min_p and repetition_penalty are not OpenAI's (vLLM's, llama.cpp's): a client that sends them gets them
# honoured by such an upstream, or refused by a strict one, never dropped on the way.
_SAMPLING = {"max_tokens", "temperature", "top_p", "n", "stop", "seed", "stream", "stream_options",
             "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "user", "top_k", "min_p",
             "repetition_penalty"}
FORWARDED = {
    "chat/completions": _SAMPLING | {"messages", "max_completion_tokens", "tools", "tool_choice",
                                     "parallel_tool_calls", "response_format", "top_logprobs"},
    "completions": _SAMPLING | {"prompt", "echo", "suffix"},
    "embeddings": {"input", "dimensions", "encoding_format", "user"},
}

# A chat message's fields, and a tool call's, as OpenAI defines them: messages are rebuilt from these alone (a
# client's other per-message fields never reach the upstream).
_MESSAGE_FIELDS = ("role", "content", "name", "tool_calls", "tool_call_id")
_TOOL_CALL_FIELDS = ("id", "type", "function")

# The field that carries the model's token cap when a request sets none, per generating endpoint.
_CAPPED_FIELD = {"chat/completions": "max_completion_tokens", "completions": "max_tokens"}

# One upstream choice (a non-streamed `choices` entry, or a streamed chunk's) as our event.
ChoiceParser = Callable[[dict[str, Any]], ChoiceDelta]


class ServiceBackend:
    def __init__(self, info: ModelInfo, client: ServiceClient, tool_format: ToolCallFormat):
        self.info = info
        self.client = client
        self.tool_format = tool_format  # how the upstream writes calls it returns as text (it has no parser)

    @classmethod
    def load(cls, config: ModelConfig, folder: Path | None, settings: Settings) -> ServiceBackend:
        return cls(ModelInfo.of(config, "remote-api"), ServiceClient(config, timeout=settings.request_timeout),
                   format_for(config.tool_call_format, None))

    def describe(self) -> ModelInfo:
        return self.info

    async def chat(self, request: ChatInput) -> Generation:
        if self.info.task != "chat":
            raise wrong_task(self.info, "chat")
        check_sampling(request.sampling)
        _no_structured_outputs(request.sampling)
        reads_calls = check_tool_choice(request.tool_choice, request.tools)  # the upstream honours it
        generation = await self._generate("chat/completions", request.openai_body, request.stream, _chat_choice)
        if not (reads_calls and request.tools):
            return generation
        reader = ToolCallReader(self.tool_format, stream=request.stream)
        return Generation(_text_calls(generation, reader), release=generation.aclose)

    async def complete(self, request: CompletionInput) -> Generation:
        if self.info.task != "chat":
            raise wrong_task(self.info, "chat")
        check_sampling(request.sampling)
        _no_structured_outputs(request.sampling)
        return await self._generate("completions", request.openai_body, request.stream, _completion_choice)

    async def embed(self, request: EmbeddingInput) -> Embeddings:
        if self.info.task != "embeddings":
            raise wrong_task(self.info, "embeddings")
        # Floats from the upstream whatever the client asked for: the API layer encodes them as the client wants.
        body = await self.client.post("embeddings", {**request.openai_body, "encoding_format": "float"})
        with _unexpected_body():
            data = sorted(body["data"], key=lambda item: item["index"])
            vectors = np.asarray([item["embedding"] for item in data], dtype=np.float64)
            return Embeddings(vectors, int((body.get("usage") or {}).get("prompt_tokens", 0)))

    async def close(self) -> None:
        await self.client.close()

    async def _generate(self, path: str, body: Mapping[str, Any], stream: bool, parse: ChoiceParser) -> Generation:
        if not stream:
            reply = await self.client.post(path, dict(body))
            with _unexpected_body():
                events = [parse(choice) for choice in reply["choices"]] + _usage(reply)
            return Generation(_replay(events))
        response = await self.client.open_stream(path, {**body, "stream": True})
        return Generation(_streamed_events(response, parse), release=response.aclose)


def _no_structured_outputs(sampling: SamplingRequest) -> None:
    """structured_outputs is this server's extension, enforced by local models: an upstream would not honour it
    (response_format, OpenAI's own, is forwarded)."""
    if sampling.structured_outputs is not None:
        raise InvalidRequest("structured_outputs is not supported by a service model: send response_format",
                             param="structured_outputs", code="unsupported_parameter")


class ServiceClient:
    """HTTP to the upstream, with its key; every failure is an UpstreamError."""

    def __init__(self, config: ModelConfig, timeout: float):
        if not config.base_url:
            raise ValueError(f"{config.file or config.name}: a service model needs base_url")
        self.upstream_model = config.model
        self.max_completion_tokens = config.max_completion_tokens
        self.max_n = config.max_n
        headers = {}
        if config.api_key_env:
            key = os.environ.get(config.api_key_env)
            if not key:
                raise ValueError(f"{config.file or config.name}: api_key_env {config.api_key_env} is not set")
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.AsyncClient(base_url=config.base_url.rstrip("/") + "/", headers=headers,
                                         timeout=httpx.Timeout(timeout, connect=10.0))

    def _payload(self, path: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        """The allowed fields of the request (FORWARDED), within the model's caps, with the upstream's model."""
        for field in ("max_tokens", "max_completion_tokens"):
            value = payload.get(field)
            if isinstance(value, int) and value > self.max_completion_tokens:
                raise InvalidRequest(f"{field} is at most {self.max_completion_tokens} for this model",
                                     param=field, code="max_tokens_too_large")
        n = payload.get("n")
        if isinstance(n, int) and n > self.max_n:
            raise InvalidRequest(f"n is at most {self.max_n} for this model", param="n", code="n_too_large")
        allowed = FORWARDED[path]
        body = {**{k: v for k, v in payload.items() if k in allowed}, "model": self.upstream_model}
        if isinstance(body.get("messages"), list):
            body["messages"] = [_known_message(m) for m in body["messages"]]
        # A request that leaves the length open would get the upstream's own limit, on the operator's key: the
        # model's cap goes in its place (chat: max_completion_tokens, as OpenAI has deprecated max_tokens there).
        capped = _CAPPED_FIELD.get(path)
        if capped and body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
            body.pop("max_tokens", None)  # sent as null
            body.pop("max_completion_tokens", None)
            body[capped] = self.max_completion_tokens
        return body

    async def post(self, path: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        body = self._payload(path, payload)
        try:
            response = await self._client.post(path.lstrip("/"), json=body)
        except httpx.HTTPError as exc:
            raise UpstreamError(502, upstream_error_body(f"upstream unreachable: {type(exc).__name__}")) from exc
        return _json_or_error(response)

    async def open_stream(self, path: str, payload: Mapping[str, Any]) -> httpx.Response:
        """The upstream's streamed response, once its status says it streams (an error status raises here)."""
        request = self._client.build_request("POST", path.lstrip("/"), json=self._payload(path, payload))
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise UpstreamError(502, upstream_error_body(f"upstream unreachable: {type(exc).__name__}")) from exc
        if response.status_code >= 400:
            try:
                await response.aread()
            finally:
                await response.aclose()
            _json_or_error(response)
        return response

    async def close(self) -> None:
        await self._client.aclose()


async def _replay(events: list[Event]) -> AsyncGenerator[Event, None]:
    for event in events:
        yield event


async def _streamed_events(response: httpx.Response, parse: ChoiceParser) -> AsyncGenerator[Event, None]:
    """Server-sent events `data: {chunk}` up to `data: [DONE]`, as our events."""
    try:
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[len("data:"):].strip()
            if data == "[DONE]":
                return
            try:
                chunk = json.loads(data)
            except ValueError:
                raise UpstreamError(502, upstream_error_body("upstream sent an event that is not JSON")) from None
            if not isinstance(chunk, dict):
                raise UpstreamError(502, upstream_error_body("upstream sent an event that is not a JSON object"))
            if "error" in chunk:  # an error after the upstream's stream had begun
                raise UpstreamError(502, chunk)
            with _unexpected_body():
                events = [parse(choice) for choice in chunk.get("choices") or []] + _usage(chunk)
            for event in events:
                if isinstance(event, Usage) or event.text or event.tool_calls or event.finish_reason:
                    yield event  # not the empty deltas (the upstream's role announcement)
    except httpx.HTTPError as exc:
        raise UpstreamError(502, upstream_error_body(f"upstream stream broke: {type(exc).__name__}")) from exc
    finally:
        await response.aclose()


async def _text_calls(events: Generation, reader: ToolCallReader) -> AsyncGenerator[Event, None]:
    """An upstream without a tool-call parser of its own (a raw vLLM, llama.cpp without --jinja) writes its calls
    into the text: they are read as a local model's are; calls the upstream parsed pass as they came."""
    async for event in events:
        if isinstance(event, ChoiceDelta) and not event.tool_calls:
            text, calls, reason = reader.read(event.index, event.text, event.finish_reason)
            event = replace(event, text=text, tool_calls=calls, finish_reason=reason)
        yield event


def _chat_choice(choice: dict[str, Any]) -> ChoiceDelta:
    """A chat choice: `message` when not streamed, `delta` when streamed (tool calls then come in pieces)."""
    message = choice.get("message") or choice.get("delta") or {}
    calls = tuple(
        ToolCallDelta(index=call.get("index", position), id=call.get("id"),
                      name=(call.get("function") or {}).get("name"),
                      arguments=(call.get("function") or {}).get("arguments") or "")
        for position, call in enumerate(message.get("tool_calls") or []))
    return ChoiceDelta(int(choice.get("index", 0)), message.get("content") or "", tool_calls=calls,
                       finish_reason=choice.get("finish_reason"),
                       logprobs=tuple(_chat_logprob(e) for e in (choice.get("logprobs") or {}).get("content") or []))


def _completion_choice(choice: dict[str, Any]) -> ChoiceDelta:
    return ChoiceDelta(int(choice.get("index", 0)), choice.get("text") or "", finish_reason=choice.get("finish_reason"),
                       logprobs=_completion_logprobs(choice.get("logprobs") or {}))


def _chat_logprob(entry: dict[str, Any]) -> TokenLogprob:
    """One entry of a chat choice's `logprobs.content`."""
    top = tuple(TopLogprob(t["token"], float(t["logprob"]), _bytes(t.get("bytes"))) for t in entry.get("top_logprobs")
                or [])
    return TokenLogprob(entry["token"], float(entry["logprob"]), _bytes(entry.get("bytes")), top=top)


def _completion_logprobs(logprobs: dict[str, Any]) -> tuple[TokenLogprob, ...]:
    """A completion choice's `logprobs` (parallel lists; top_logprobs as {token: logprob} per position)."""
    tokens = logprobs.get("tokens") or []
    values = logprobs.get("token_logprobs") or [None] * len(tokens)
    tops = logprobs.get("top_logprobs") or [None] * len(tokens)
    offsets = logprobs.get("text_offset") or [None] * len(tokens)
    return tuple(TokenLogprob(token, None if value is None else float(value),
                              top=tuple(TopLogprob(t, float(v)) for t, v in (top or {}).items()), offset=offset)
                 for token, value, top, offset in zip(tokens, values, tops, offsets, strict=True))


def _bytes(value: Any) -> tuple[int, ...] | None:
    return None if value is None else tuple(int(b) for b in value)


def _usage(body: dict[str, Any]) -> list[Event]:
    usage = body.get("usage")
    if not usage:
        return []
    return [Usage(int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))]


@contextmanager
def _unexpected_body() -> Iterator[None]:
    """An upstream body without the fields OpenAI's format has: a 502, not a crash."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UpstreamError(502, upstream_error_body(
            f"upstream answered in an unexpected shape ({type(exc).__name__}: {exc})")) from exc


def _known_message(message: Any) -> Any:
    """A message with only OpenAI's fields (the request was validated: messages are objects)."""
    if not isinstance(message, dict):
        return message
    known = {k: message[k] for k in _MESSAGE_FIELDS if k in message}
    if isinstance(known.get("tool_calls"), list):
        known["tool_calls"] = [{k: call[k] for k in _TOOL_CALL_FIELDS if k in call} if isinstance(call, dict)
                               else call for call in known["tool_calls"]]
    return known


def _json_or_error(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = upstream_error_body(f"upstream answered {response.status_code} with a body that is not JSON")
        if response.status_code < 400:
            raise UpstreamError(502, body) from None
    if response.status_code in (401, 403):
        # The upstream refused the operator's key: the client's request is not at fault, and the upstream's body may
        # quote part of that key. Neither the status nor the body is passed on.
        raise UpstreamError(502, upstream_error_body(
            f"the upstream refused this server's credentials ({response.status_code}): the operator must check the "
            "model's api_key_env"))
    if response.status_code >= 400:
        if not isinstance(body, dict) or "error" not in body:
            body = upstream_error_body(f"upstream answered {response.status_code}")
        raise UpstreamError(response.status_code, body)
    if not isinstance(body, dict):
        raise UpstreamError(502, upstream_error_body("upstream answered with JSON that is not an object"))
    return body
