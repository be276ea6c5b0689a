"""The OpenAPI 3 document of the whole API, built from the pydantic schemas in protocol.py, as this server answers:
the request schemas carry the constraints the server enforces (fields it refuses are declared with the only values
it takes), responses are described by their schemas (server-sent events as the chunk objects each `data:` line
holds), security is declared only when API keys are set, and /v1/ws's 426 is documented."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pydantic.json_schema import models_json_schema

from moltbot import __version__
from moltbot.api.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ErrorResponse,
    ModelCard,
    ModelList,
)
from moltbot.engine.validation import MAX_BIAS, MAX_LOGIT_BIAS

_SCHEMAS = (ChatCompletionRequest, CompletionRequest, EmbeddingRequest, ModelList, ModelCard, ErrorResponse)
_EXTRA_PATHS: dict[str, Any] = {}  # other blueprints' paths (the plugin routes), see add_paths

_NULL = {"type": "null"}
# Fields OpenAI defines that this server refuses unless they ask for nothing (completions neither echo nor
# insert): declared with the only values taken, so that a body the document calls valid is served.
_ONLY_OFF = {
    "CompletionRequest": {
        "echo": {"const": False, "default": False, "description": "Not supported: false only."},
        "suffix": {"anyOf": [{"const": ""}, _NULL], "description": "Not supported: empty or null only."},
    },
}
_TOP_LOGPROBS_RULE = {  # top_logprobs needs logprobs: true
    "if": {"required": ["top_logprobs"], "properties": {"top_logprobs": {"not": _NULL}}},
    "then": {"required": ["logprobs"], "properties": {"logprobs": {"const": True}}}}

_USAGE = {"type": "object", "required": ["prompt_tokens", "total_tokens"], "properties": {
    "prompt_tokens": {"type": "integer"}, "completion_tokens": {"type": "integer"},
    "total_tokens": {"type": "integer"}}}
_TOOL_CALL = {"type": "object", "required": ["id", "type", "function"], "properties": {
    "id": {"type": "string"}, "type": {"const": "function"},
    "function": {"type": "object", "required": ["name", "arguments"],
                 "properties": {"name": {"type": "string"}, "arguments": {"type": "string"}}}}}
_FINISH = {"anyOf": [{"enum": ["stop", "length", "tool_calls", "cancelled"]}, _NULL]}
_BYTES = {"anyOf": [{"type": "array", "items": {"type": "integer"}}, _NULL]}
_TOP_FIELDS: dict[str, Any] = {"token": {"type": "string"}, "logprob": {"type": "number"}, "bytes": _BYTES}
_TOP_LOGPROB = {"type": "object", "required": ["token", "logprob", "bytes"], "properties": _TOP_FIELDS}
_TOKEN_LOGPROBS = {"type": "array", "items": {
    "type": "object", "required": ["token", "logprob", "bytes", "top_logprobs"], "properties": {
        **_TOP_FIELDS, "top_logprobs": {"type": "array", "items": _TOP_LOGPROB}}}}
_CHAT_LOGPROBS = {"anyOf": [_NULL, {
    "type": "object", "required": ["content", "refusal"],
    "description": "With logprobs: true. Of the model's raw distribution (before logit_bias, penalties, temperature "
                   "and top-k / top-p / min-p).",
    "properties": {"content": {"anyOf": [_TOKEN_LOGPROBS, _NULL]}, "refusal": {"anyOf": [_TOKEN_LOGPROBS, _NULL]}}}]}
_COMPLETION_LOGPROBS = {"anyOf": [_NULL, {
    "type": "object", "required": ["tokens", "token_logprobs", "top_logprobs", "text_offset"],
    "description": "With logprobs: n. Of the model's raw distribution; each position's top_logprobs has the n most "
                   "likely tokens and the sampled one.",
    "properties": {"tokens": {"type": "array", "items": {"type": "string"}},
                   "token_logprobs": {"type": "array", "items": {"type": ["number", "null"]}},
                   "top_logprobs": {"type": "array", "items": {"type": "object",
                                                               "additionalProperties": {"type": "number"}}},
                   "text_offset": {"type": "array", "items": {"type": "integer"}}}}]}
_RESPONSES: dict[str, Any] = {
    "ChatCompletion": {"type": "object", "required": ["id", "object", "created", "model", "choices"], "properties": {
        "id": {"type": "string"}, "object": {"const": "chat.completion"}, "created": {"type": "integer"},
        "model": {"type": "string"}, "usage": _USAGE,
        "choices": {"type": "array", "items": {"type": "object", "required": ["index", "message", "finish_reason"],
                                               "properties": {
            "index": {"type": "integer"}, "finish_reason": _FINISH, "logprobs": _CHAT_LOGPROBS,
            "message": {"type": "object", "required": ["role", "content", "refusal"], "properties": {
                "role": {"const": "assistant"}, "content": {"type": ["string", "null"]}, "refusal": _NULL,
                "tool_calls": {"type": "array", "items": _TOOL_CALL}}}}}},
        "plugin_calls": {"type": "array", "description": "Extension: the plugins run on the way to the answer."}}},
    "ChatCompletionChunk": {
        "type": "object", "required": ["id", "object", "created", "model", "choices"],
        "description": "One server-sent event `data: <chunk>`; the stream ends with `data: [DONE]`. An error after "
                       "the stream began comes as a last `data: {\"error\": ...}` event.",
        "properties": {
            "id": {"type": "string"}, "object": {"const": "chat.completion.chunk"}, "created": {"type": "integer"},
            "model": {"type": "string"}, "usage": _USAGE,
            "choices": {"type": "array", "items": {"type": "object", "required": ["index", "delta"], "properties": {
                "index": {"type": "integer"}, "finish_reason": _FINISH, "logprobs": _CHAT_LOGPROBS,
                "delta": {"type": "object", "properties": {
                    "role": {"const": "assistant"}, "content": {"type": "string"},
                    "tool_calls": {"type": "array", "items": {
                        "type": "object", "required": ["index", "function"], "properties": {
                            "index": {"type": "integer"}, "id": {"type": "string"}, "type": {"const": "function"},
                            "function": {"type": "object", "properties": {"name": {"type": "string"},
                                                                          "arguments": {"type": "string"}}}}}}}}}}}}},
    "Completion": {"type": "object", "required": ["id", "object", "created", "model", "choices"], "properties": {
        "id": {"type": "string"}, "object": {"const": "text_completion"}, "created": {"type": "integer"},
        "model": {"type": "string"}, "usage": _USAGE,
        "choices": {"type": "array", "items": {"type": "object", "required": ["index", "text", "finish_reason"],
                                               "properties": {"index": {"type": "integer"}, "text": {"type": "string"},
                                                              "finish_reason": _FINISH,
                                                              "logprobs": _COMPLETION_LOGPROBS}}}},
        "description": "Also one server-sent event `data: <completion chunk>` each when streamed (then [DONE])."},
    "EmbeddingList": {"type": "object", "required": ["object", "data", "model", "usage"], "properties": {
        "object": {"const": "list"}, "model": {"type": "string"}, "usage": _USAGE,
        "data": {"type": "array", "items": {"type": "object", "required": ["object", "index", "embedding"],
                                            "properties": {
            "object": {"const": "embedding"}, "index": {"type": "integer"},
            "embedding": {"anyOf": [{"type": "array", "items": {"type": "number"}},
                                    {"type": "string", "description": "base64 of little-endian float32"}]}}}}}},
}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}


def _json(name: str, description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


def _responses(ok: dict[str, Any], *errors: int) -> dict[str, Any]:
    out = {"200": ok}
    for status in errors:
        out[str(status)] = _json("ErrorResponse", "Error")
    return out


def _streamed(json_name: str, event_name: str) -> dict[str, Any]:
    """A JSON object, or with stream: true server-sent events: each event's data a JSON event_name, the last one
    `[DONE]` (an error after the stream began comes as a last event whose data is an ErrorResponse)."""
    data = {"type": "string", "anyOf": [
        {"contentMediaType": "application/json", "contentSchema": _ref(event_name)},
        {"contentMediaType": "application/json", "contentSchema": _ref("ErrorResponse")},
        {"const": "[DONE]"}]}
    event = {"type": "object", "required": ["data"], "properties": {"data": data, "event": {"const": "message"}},
             "description": f"One server-sent event: `data: <{event_name}>`, the last one `data: [DONE]`"}
    return {"description": f"A {json_name}; with stream: true, server-sent events, one {event_name} each, then "
                           "`data: [DONE]`",
            "content": {"application/json": {"schema": _ref(json_name)}, "text/event-stream": {"schema": event}}}


_ANY_JSON = {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
_GEN_ERRORS = (400, 404, 413, 415, 429, 503, 504)


@dataclass(frozen=True)
class Served:
    """What the document says of the served models: their names by task (as examples of `model`), and the
    dimensions the embedding models make (empty: not known, or a service model among them)."""

    chat: tuple[str, ...] = ()
    embeddings: tuple[str, ...] = ()
    dimensions: tuple[int, ...] = ()
    chat_vocab: int = 0  # the smallest vocabulary among the local chat models (0: not known)
    embedding_vocab: int = 0  # the same among the local embedding models
    capacity: int = 0  # the fewest sequences a chat model takes at once (prompts x n), 0: not known
    local_chat: bool = False  # every chat model is local: tool_choice none or auto only, no unknown fields
    local_embeddings: bool = False  # every embedding model is local: no unknown fields


def openapi_document(api_keys: bool = False, served: Served = Served()) -> dict[str, Any]:
    """The document for a server with (or without) API keys serving `served`."""
    return copy.deepcopy(_document(api_keys, served))


@lru_cache(maxsize=8)
def _document(api_keys: bool, served: Served) -> dict[str, Any]:
    _, defs = models_json_schema([(m, "validation") for m in _SCHEMAS], ref_template="#/components/schemas/{model}")
    schemas: dict[str, Any] = {**defs["$defs"], **copy.deepcopy(_RESPONSES)}
    for name, fields in _ONLY_OFF.items():
        schemas[name]["properties"].update(copy.deepcopy(fields))
    for name, models in (("ChatCompletionRequest", served.chat), ("CompletionRequest", served.chat),
                         ("EmbeddingRequest", served.embeddings)):
        if models:
            schemas[name]["properties"]["model"]["examples"] = list(models)
    for name, vocab in (("CompletionRequest", served.chat_vocab), ("EmbeddingRequest", served.embedding_vocab)):
        field = "prompt" if name == "CompletionRequest" else "input"
        if vocab or served.capacity:
            _limit_inputs(schemas[name]["properties"][field], vocab,
                          served.capacity if name == "CompletionRequest" else 0)
    chat = schemas["ChatCompletionRequest"]
    # tool_choice needs tools
    chat.setdefault("allOf", []).extend([{
        "if": {"required": ["tool_choice"], "properties": {"tool_choice": {"not": {"type": "null"}}}},
        "then": {"required": ["tools"], "properties": {"tools": {"type": "array", "minItems": 1}}}},
        copy.deepcopy(_TOP_LOGPROBS_RULE)])
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        schemas[name]["properties"]["logit_bias"] = _logit_bias(served.chat_vocab if served.local_chat else 0)
    # A local model refuses the fields the API does not know; a service model's upstream never gets them.
    for name, local in (("ChatCompletionRequest", served.local_chat), ("CompletionRequest", served.local_chat),
                        ("EmbeddingRequest", served.local_embeddings)):
        schemas[name]["additionalProperties"] = not local
    if served.local_chat:  # a local model keeps no completions; a service model takes store and keeps it from upstream
        chat["properties"]["store"] = {"anyOf": [{"const": False}, _NULL],
                                       "description": "This server keeps no completions: false or absent."}
    if served.dimensions:
        schemas["EmbeddingRequest"]["properties"]["dimensions"] = {
            "anyOf": [{"enum": sorted(set(served.dimensions))}, _NULL],
            "description": "The model's own number of dimensions only (no truncation here)."}
    auth = (401,) if api_keys else ()
    open_route: dict[str, Any] = {"security": []} if api_keys else {}
    paths: dict[str, Any] = {
        "/health": {"get": {"summary": "Liveness", **open_route, "responses": {"200": _ANY_JSON}}},
        "/ready": {"get": {"summary": "Readiness: 503 while loading models or draining", **open_route,
                           "responses": {"200": _ANY_JSON, "503": _ANY_JSON}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", **open_route,
                             "responses": {"200": {"description": "Prometheus text format",
                                                   "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/openapi.json": {"get": {"summary": "This document", **open_route, "responses": {"200": _ANY_JSON}}},
        "/v1/models": {"get": {"summary": "List the served models",
                               "responses": _responses(_json("ModelList"), *auth, 503)}},
        "/v1/models/{model}": {"get": {
            "summary": "One served model",
            "parameters": [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": _responses(_json("ModelCard"), *auth, 404, 503)}},
        "/v1/chat/completions": {"post": {"summary": "Chat completion (OpenAI wire format)",
                                          "requestBody": _json_body("ChatCompletionRequest"),
                                          "responses": _responses(_streamed("ChatCompletion", "ChatCompletionChunk"),
                                                                  *auth, *_GEN_ERRORS)}},
        "/v1/completions": {"post": {"summary": "Text completion (OpenAI wire format)",
                                     "requestBody": _json_body("CompletionRequest"),
                                     "responses": _responses(_streamed("Completion", "Completion"),
                                                             *auth, *_GEN_ERRORS)}},
        "/v1/embeddings": {"post": {"summary": "Embeddings (OpenAI wire format)",
                                    "requestBody": _json_body("EmbeddingRequest"),
                                    "responses": _responses(_json("EmbeddingList"), *auth, *_GEN_ERRORS)}},
        "/v1/ws": {"get": {"summary": "WebSocket: send chat-completion requests as JSON, receive "
                                      "{type: chunk} messages and one {type: done}",
                           "responses": {"101": {"description": "Switching protocols"},
                                         "403": _json("ErrorResponse", "A browser page of another origin "
                                                      "(not this server, not in cors_origins)"),
                                         "426": _json("ErrorResponse", "Not a WebSocket upgrade request"),
                                         **{str(s): _json("ErrorResponse", "Error") for s in auth}}}},
    }
    for path, item in copy.deepcopy(_EXTRA_PATHS).items():
        for operation in item.values():
            operation["responses"].pop("401", None)
            if api_keys:
                operation["responses"]["401"] = _json("ErrorResponse", "Error")
        paths[path] = item
    document: dict[str, Any] = {
        "openapi": "3.1.0",  # 3.1: its schemas are JSON Schema 2020-12, as pydantic writes them
        "info": {"title": "Moltbot API", "version": __version__,
                 "description": "OpenAI-compatible API of a self-hosted Moltbot runtime."},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {"schemas": schemas},
    }
    if api_keys:  # declared only where it holds: without keys every route is open
        document["security"] = [{"bearer": []}, {"apiKey": []}]
        document["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"}}
    return document


def _limit_inputs(schema: Any, vocab: int, capacity: int) -> None:
    """Token ids within the vocabulary; at most `capacity` prompts (with n=1) in a list of them."""
    if isinstance(schema, list):
        for item in schema:
            _limit_inputs(item, vocab, capacity)
        return
    if not isinstance(schema, dict):
        return
    if schema.get("type") == "integer" and vocab:
        schema.update(minimum=0, maximum=vocab - 1)
    if schema.get("type") == "array" and capacity and schema.get("items", {}).get("type") != "integer":
        schema["maxItems"] = min(schema.get("maxItems", capacity), capacity)
    for key in ("anyOf", "items"):
        if key in schema:
            _limit_inputs(schema[key], vocab, capacity)


def _logit_bias(vocab: int) -> dict[str, Any]:
    """logit_bias as the server takes it: token ids (within the vocabulary, where known) to biases."""
    ids = _ids_below(vocab) if vocab else r"^(0|[1-9][0-9]*)$"
    return {"anyOf": [{"type": "object", "maxProperties": MAX_LOGIT_BIAS, "propertyNames": {"pattern": ids},
                       "additionalProperties": {"type": "number", "minimum": -MAX_BIAS, "maximum": MAX_BIAS}},
                      _NULL], "default": None,
            "description": "Token ids (decimal strings) to a bias from -100 to 100, added to the logits."}


def _ids_below(vocab: int) -> str:
    """A regular expression of the token ids 0 to vocab - 1 as decimal strings (no leading zeros)."""
    top = str(vocab - 1)
    options = {"0", top}
    if len(top) > 1:
        options.add(f"[1-9][0-9]{{0,{len(top) - 2}}}")  # the shorter numbers
    for i, digit in enumerate(top):  # as long as the highest: its first i digits, then a lower one, then any
        low = 1 if i == 0 else 0
        if int(digit) > low:
            rest = len(top) - i - 1
            options.add(f"{top[:i]}[{low}-{int(digit) - 1}]" + (f"[0-9]{{{rest}}}" if rest else ""))
    return "^(" + "|".join(sorted(options)) + ")$"


def add_paths(extra: dict[str, Any]) -> None:
    """Lets other blueprints (the plugin routes) document their paths here."""
    _EXTRA_PATHS.update(extra)
    _document.cache_clear()
