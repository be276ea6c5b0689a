"""Thin routes: parse the request, hand it to the serving layer, send what it returns."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel
from sanic import Blueprint, Request, Websocket
from sanic.exceptions import SanicException
from sanic.response import HTTPResponse, raw
from sanic.response import json as json_response
from websockets.exceptions import ConnectionClosed

from moltbot import metrics
from moltbot.api.access import observe
from moltbot.api.anthropic import (
    CountTokensRequest,
    MessagesRequest,
    message_events,
    message_from_chat,
    to_chat_request,
)
from moltbot.api.errors import APIError, error_response, load_json
from moltbot.api.openapi import openapi_document
from moltbot.api.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, now
from moltbot.api.responses import (
    ResponseEvents,
    ResponsesRequest,
    ResponseStore,
    input_items,
    output_items,
    owner_of,
    response_object,
)
from moltbot.api.responses import (
    to_chat_request as responses_chat_request,
)
from moltbot.api.serving import Chunks, OpenAIServing, RequestStats
from moltbot.api.tokenization import DetokenizeRequest, TokenizeRequest, count_chat_tokens, detokenize, tokenize
from moltbot.api.tool_calls import chat_with_plugin_tools, names_plugins
from moltbot.logs import redact_urls

Schema = TypeVar("Schema", bound=BaseModel)
Item = TypeVar("Item")

bp = Blueprint("openai")


def parse(request: Request, schema: type[Schema]) -> Schema:
    """The JSON body validated against `schema` (400 otherwise; the app has answered a POST that is not
    application/json with a 415)."""
    body = load_json(request.body or b"")
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object", code="invalid_json")
    return schema.model_validate(body)  # a ValidationError is a 400 naming the field (api/errors.py)


def serving(request: Request) -> OpenAIServing:
    """The serving layer, once the models are loaded (and still while draining at shutdown)."""
    if request.app.ctx.state.status == "loading":
        raise APIError(503, "The models are still loading; retry shortly", code="not_ready",
                       headers={"Retry-After": "2"})
    serving: OpenAIServing = request.app.ctx.serving
    return serving


def stats(request: Request) -> RequestStats:
    request_stats: RequestStats = request.ctx.stats
    return request_stats


# ---- probes and metrics ----------------------------------------------------------------------------
@bp.get("/health", ctx_probe=True)
async def health(request: Request) -> HTTPResponse:
    """Liveness: 200 while every model makes progress; 503 naming those whose decode has stalled (a wedged graph
    call), so that probes see what a process that merely answers HTTP would hide."""
    stalled = request.app.ctx.registry.stalled(request.app.ctx.settings.stall_timeout)
    if stalled:
        return json_response({"status": "stalled", "stalled": stalled}, status=503)
    return json_response({"status": "ok"})


@bp.get("/ready", ctx_probe=True)
async def ready(request: Request) -> HTTPResponse:
    state = request.app.ctx.state
    registry = request.app.ctx.registry
    failures = [{**f, "error": redact_urls(f["error"])} for f in registry.failures]
    # Open route: counts and model names only. The errors (which name files and hosts) need a key, or no keys set
    # and a request addressed to this machine (one addressed to another name gets the short form).
    detailed = request.ctx.authorised or (not request.app.ctx.api_keys and request.ctx.host_allowed)
    body: dict[str, Any] = {"status": state.status, "models": registry.model_names(),
                            "failed": failures if detailed else [{"model": f["model"]} for f in failures],
                            "counts": {"loaded": len(registry.model_names()), "failed": len(failures)}}
    return json_response(body, status=200 if state.ready else 503)


@bp.get("/metrics", ctx_metrics=True)  # MOLTBOT_METRICS_REQUIRE_KEY, whatever the spelling of the path
async def metrics_route(request: Request) -> HTTPResponse:
    body, content_type = metrics.render()
    return raw(body, content_type=content_type)


@bp.get("/openapi.json")
async def openapi(request: Request) -> HTTPResponse:
    api_keys = bool(request.app.ctx.api_keys)
    return json_response(openapi_document(api_keys, request.app.ctx.serving.served()))


# ---- OpenAI API ------------------------------------------------------------------------------------
@bp.get("/v1/models")
async def list_models(request: Request) -> HTTPResponse:
    return json_response(serving(request).list_models())


@bp.get("/v1/models/<name:path>")
async def get_model(request: Request, name: str) -> HTTPResponse:
    for card in serving(request).list_models()["data"]:
        if card["id"] == name:
            return json_response(card)
    raise APIError(404, f"The model '{name}' does not exist", param="model", code="model_not_found")


@bp.post("/v1/chat/completions")
async def chat_completions(request: Request) -> HTTPResponse | None:
    req = parse(request, ChatCompletionRequest)
    srv = serving(request)
    plugins = request.app.ctx.plugins
    if names_plugins(req, plugins):
        reply = await chat_with_plugin_tools(srv, plugins, req, stats(request), request.ctx.request_id,
                                             admin=request.ctx.admin)
        if req.stream:
            await stream_sse(request, _as_chunks(reply))
            return None
        return json_response(reply)
    if req.stream:
        await stream_sse(request, await srv.chat_stream(req, stats(request)))
        return None
    return json_response(await srv.chat(req, stats(request)))


async def _as_chunks(reply: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
    """A finished chat.completion as one streamed chunk per choice (the plugin-tool path runs to the end). The
    first chunk carries the reply's `plugin_calls` (extension: the plugins run on the way, with their results)."""
    for number, choice in enumerate(reply["choices"]):
        delta = {"role": "assistant", "content": choice["message"].get("content") or ""}
        if choice["message"].get("tool_calls"):  # a chunk's tool calls say which of the choice's calls they are
            delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(choice["message"]["tool_calls"])]
        chunk = {"id": reply["id"], "object": "chat.completion.chunk", "created": reply["created"],
                 "model": reply["model"], "choices": [{"index": choice["index"], "delta": delta,
                                                       "logprobs": choice.get("logprobs"),
                                                       "finish_reason": choice["finish_reason"]}]}
        if number == 0 and reply.get("plugin_calls"):
            chunk["plugin_calls"] = reply["plugin_calls"]
        yield chunk


@bp.post("/v1/completions")
async def completions(request: Request) -> HTTPResponse | None:
    req = parse(request, CompletionRequest)
    srv = serving(request)
    if req.stream:
        await stream_sse(request, await srv.completion_stream(req, stats(request)))
        return None
    return json_response(await srv.completion(req, stats(request)))


@bp.post("/v1/embeddings")
async def embeddings(request: Request) -> HTTPResponse:
    req = parse(request, EmbeddingRequest)
    return json_response(await serving(request).embeddings(req, stats(request)))


async def stream_sse(request: Request, chunks: Chunks) -> None:
    """Server-sent events: one `data:` line per chunk, then `data: [DONE]`. An error after the first byte is
    sent as a last `data: {"error": ...}` event, since the status line is already out."""
    await _stream(request, chunks, chunks, lambda chunk: "data: " + _compact(chunk) + "\n\n",
                  error=lambda body: "data: " + json.dumps(body) + "\n\n", done="data: [DONE]\n\n")


async def stream_named_events(request: Request, events: AsyncIterator[tuple[str, dict[str, Any]]],
                              closing: Chunks) -> None:
    """Server-sent events with names (`event:` then `data:`), as Anthropic's stream has them; an error after the
    first byte is a last `error` event. Closing `closing` frees the model's sequences."""
    await _stream(request, events, closing, lambda item: f"event: {item[0]}\ndata: {_compact(item[1])}\n\n",
                  error=lambda body: f"event: error\ndata: {json.dumps(body)}\n\n", done="")


async def _stream(request: Request, items: AsyncIterator[Item], closing: Chunks, frame: Callable[[Item], str], *,
                  error: Callable[[dict[str, Any]], str], done: str) -> None:
    status = 499  # unless the stream ends: the client went away
    try:
        async with contextlib.aclosing(closing):  # closing the stream frees the model's sequences
            response = await request.respond(content_type="text/event-stream",
                                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
            while True:
                try:
                    item = await anext(items)
                except StopAsyncIteration:
                    status = 200
                    break
                except Exception as exc:  # the model's side failed; failures to send are not caught here
                    status, body, _ = error_response(exc, request)
                    await response.send(error(body))
                    break
                await response.send(frame(item))
            if done:
                await response.send(done)
            await response.eof()
    finally:
        observe(request, status)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


# ---- Anthropic Messages -------------------------------------------------------------------------------
@bp.post("/v1/messages")
async def anthropic_messages(request: Request) -> HTTPResponse | None:
    req = parse(request, MessagesRequest)
    chat = to_chat_request(req)
    srv, request_stats = serving(request), stats(request)
    if req.stream:
        chunks = await srv.chat_stream(chat, request_stats)
        await stream_named_events(request, message_events(chunks, request_stats.model or req.model,
                                                          request_stats.prompt_tokens), chunks)
        return None
    return json_response(message_from_chat(await srv.chat(chat, request_stats)))


@bp.post("/v1/messages/count_tokens")
async def anthropic_count_tokens(request: Request) -> HTTPResponse:
    req = parse(request, CountTokensRequest)
    backend = serving(request).registry.backend(req.model)
    return json_response({"input_tokens": await count_chat_tokens(backend, to_chat_request(req))})


# ---- OpenAI Responses ------------------------------------------------------------------------------------
@bp.post("/v1/responses")
async def create_response(request: Request) -> HTTPResponse | None:
    req = parse(request, ResponsesRequest)
    store: ResponseStore | None = request.app.ctx.responses
    owner = owner_of(request.ctx.api_key)
    conversation: list[dict[str, Any]] = []
    if req.previous_response_id is not None:
        if store is None:
            raise APIError(400, "previous_response_id: this server stores no responses (its data_dir is empty)",
                           param="previous_response_id")
        _, conversation = await store.get(owner, req.previous_response_id, param="previous_response_id")
    conversation += input_items(req)
    chat = responses_chat_request(req, conversation)
    stored = store if req.store else None
    response_id = f"resp_{uuid.uuid4().hex}"
    srv, plugins = serving(request), request.app.ctx.plugins
    if names_plugins(chat, plugins):  # the server's plugins as tools: run to the answer, as on chat completions
        reply = await chat_with_plugin_tools(srv, plugins, chat.model_copy(update={"stream": False}),
                                             stats(request), request.ctx.request_id, admin=request.ctx.admin)
        chunks: Chunks = _as_chunks(reply)
    elif req.stream:
        chunks = await srv.chat_stream(chat, stats(request))
    else:
        reply = await srv.chat(chat, stats(request))
    if not req.stream:
        output, status = output_items(reply)
        response = response_object(req, response_id, now(), output, status, reply["usage"], stored is not None)
        if stored is not None:
            await stored.put(owner, response, conversation + output)
        return json_response(response)
    events = ResponseEvents(req, response_id, stored is not None)

    async def streamed_then_stored() -> AsyncGenerator[tuple[str, dict[str, Any]], None]:
        async for event in events.events(chunks):
            yield event
        if stored is not None and events.response is not None:
            await stored.put(owner, events.response, conversation + events.response["output"])

    await stream_named_events(request, streamed_then_stored(), chunks)
    return None


@bp.get("/v1/responses/<response_id>")
async def get_response(request: Request, response_id: str) -> HTTPResponse:
    response, _ = await _store(request).get(owner_of(request.ctx.api_key), response_id)
    return json_response(response)


@bp.delete("/v1/responses/<response_id>")
async def delete_response(request: Request, response_id: str) -> HTTPResponse:
    await _store(request).delete(owner_of(request.ctx.api_key), response_id)
    return json_response({"id": response_id, "object": "response", "deleted": True})


def _store(request: Request) -> ResponseStore:
    store: ResponseStore | None = request.app.ctx.responses
    if store is None:
        raise APIError(404, "This server stores no responses (its data_dir is empty)", code="response_not_found")
    return store


# ---- tokenizers (as vLLM serves them; outside /v1, so they say they need a key) -------------------------------
@bp.post("/tokenize", ctx_needs_key=True)
async def tokenize_route(request: Request) -> HTTPResponse:
    req = parse(request, TokenizeRequest)
    return json_response(await tokenize(serving(request).registry.backend(req.model), req))


@bp.post("/detokenize", ctx_needs_key=True)
async def detokenize_route(request: Request) -> HTTPResponse:
    req = parse(request, DetokenizeRequest)
    return json_response(await detokenize(serving(request).registry.backend(req.model), req))


# ---- WebSocket ---------------------------------------------------------------------------------------
async def websocket(request: Request, ws: Websocket) -> None:
    """Each text message is a chat-completion request (JSON); the answer is a series of
    {"type": "chunk", "data": <chat.completion.chunk>} messages and one {"type": "done", "data":
    <chat.completion>}; failures are {"type": "error", "error": {...}}. A plugin call,
    {"type": "plugin", "name": ..., "input": {...}}, gets {"type": "plugin_result", "plugin": ..., "result": {...}}.
    The socket stays open for more."""
    busy = request.app.ctx.busy_websockets
    async for message in ws:
        busy.add(ws)
        try:
            await _ws_handle(request, ws, message)
        except ConnectionClosed:
            raise
        except Exception as exc:
            status, body, _ = error_response(exc, request)
            await ws.send(json.dumps({"type": "error", **body, "status": status}))
        finally:
            busy.discard(ws)


class _Subprotocols(Sequence[str]):
    """The subprotocols the handshake may pick: `moltbot` when the client offers it (the chat page does, with its
    key beside it, see app._websocket_key: a browser must get one of its offered subprotocols back), none for a
    client that offers none (the websockets library refuses those when the server names any). Read from the
    request being upgraded, as Sanic hands the route's list to the handshake unchanged."""

    NAME = "moltbot"

    def _names(self) -> list[str]:
        try:
            offered = Request.get_current().headers.get("sec-websocket-protocol", "")
        except SanicException:
            return []
        return [self.NAME] if self.NAME in (p.strip() for p in offered.split(",")) else []

    def __getitem__(self, index: int) -> str:  # type: ignore[override]
        return self._names()[index]

    def __len__(self) -> int:
        return len(self._names())


bp.add_websocket_route(websocket, "/v1/ws", subprotocols=_Subprotocols(), ctx_key_subprotocol=True)


async def _ws_handle(request: Request, ws: Websocket, message: str | bytes) -> None:
    body = load_json(message, "The message")
    if not isinstance(body, dict):
        raise APIError(400, "The message must be a JSON object", code="invalid_json")
    request_id = f"{request.ctx.request_id}-{uuid.uuid4().hex[:8]}"
    plugins = request.app.ctx.plugins
    if body.get("type") == "plugin":
        name, payload = body.get("name"), body.get("input", {})
        if not isinstance(name, str):
            raise APIError(400, "A plugin message needs 'name' (a string)", param="name")
        result = await plugins.execute(name, payload, request_id=request_id, admin=request.ctx.admin)
        await ws.send(json.dumps({"type": "plugin_result", "plugin": name, "request_id": request_id,
                                  "result": result}))
        return
    req = ChatCompletionRequest.model_validate(body)
    srv = serving(request)
    chunks: Chunks
    if names_plugins(req, plugins):
        chunks = _as_chunks(await chat_with_plugin_tools(srv, plugins, req, RequestStats(), request_id,
                                                         admin=request.ctx.admin))
    else:
        chunks = await srv.chat_stream(req, RequestStats())
    content: dict[int, str] = {}
    reasons: dict[int, str] = {}
    calls: dict[int, dict[int, dict[str, Any]]] = {}  # choice -> the tool calls streamed, joined
    logprobs: dict[int, list[dict[str, Any]]] = {}  # choice -> its tokens' log probabilities (where asked for)
    model, usage, chunk_id = req.model, None, None
    async with contextlib.aclosing(chunks):  # a client gone mid-stream frees the model's sequences
        async for chunk in chunks:
            await ws.send(json.dumps({"type": "chunk", "data": chunk}))
            chunk_id, model = chunk.get("id", chunk_id), chunk.get("model", model)
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices", []):
                content[choice["index"]] = content.get(choice["index"], "") + (choice["delta"].get("content") or "")
                if choice.get("logprobs"):
                    logprobs.setdefault(choice["index"], []).extend(choice["logprobs"]["content"] or [])
                for piece in choice["delta"].get("tool_calls") or []:
                    call = calls.setdefault(choice["index"], {}).setdefault(piece["index"], {
                        "id": None, "type": "function", "function": {"name": "", "arguments": ""}})
                    call["id"] = piece.get("id") or call["id"]
                    call["function"]["name"] += piece["function"].get("name") or ""
                    call["function"]["arguments"] += piece["function"].get("arguments") or ""
                if choice.get("finish_reason"):
                    reasons[choice["index"]] = choice["finish_reason"]
    final: dict[str, Any] = {"id": chunk_id, "object": "chat.completion", "model": model, "choices": []}
    for i in sorted(content):
        reply: dict[str, Any] = {"role": "assistant", "content": content[i], "refusal": None}
        if calls.get(i):
            reply.update(content=content[i] or None, tool_calls=[calls[i][k] for k in sorted(calls[i])])
        sent = {"content": logprobs.get(i, []), "refusal": None} if req.logprobs else None
        final["choices"].append({"index": i, "message": reply, "finish_reason": reasons.get(i), "logprobs": sent})
    if usage:
        final["usage"] = usage
    await ws.send(json.dumps({"type": "done", "data": final}))
