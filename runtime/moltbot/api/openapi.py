"""The OpenAPI 3 document of the whole API, built from the pydantic schemas in protocol.py."""

from __future__ import annotations

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

_SCHEMAS = (ChatCompletionRequest, CompletionRequest, EmbeddingRequest, ModelList, ModelCard, ErrorResponse)


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}


def _responses(ok: dict[str, Any], *errors: int) -> dict[str, Any]:
    out = {"200": ok}
    for status in errors:
        out[str(status)] = {"description": "Error", "content": {"application/json": {"schema": _ref("ErrorResponse")}}}
    return out


_ANY_JSON = {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
_GEN_ERRORS = (400, 401, 404, 413, 415, 429, 503, 504)


@lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    _, defs = models_json_schema([(m, "validation") for m in _SCHEMAS], ref_template="#/components/schemas/{model}")
    stream_or_json = {"description": "A JSON object, or server-sent events when stream is true",
                      "content": {"application/json": {"schema": {"type": "object"}},
                                  "text/event-stream": {"schema": {"type": "string"}}}}
    paths = {
        "/health": {"get": {"summary": "Liveness", "security": [], "responses": {"200": _ANY_JSON}}},
        "/ready": {"get": {"summary": "Readiness: 503 while loading models or draining", "security": [],
                           "responses": {"200": _ANY_JSON, "503": _ANY_JSON}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "security": [],
                             "responses": {"200": {"description": "Prometheus text format",
                                                   "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {"200": _ANY_JSON}}},
        "/v1/models": {"get": {"summary": "List the served models",
                               "responses": _responses({"description": "OK", "content": {
                                   "application/json": {"schema": _ref("ModelList")}}}, 401, 503)}},
        "/v1/models/{model}": {"get": {
            "summary": "One served model",
            "parameters": [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": _responses({"description": "OK", "content": {
                "application/json": {"schema": _ref("ModelCard")}}}, 401, 404, 503)}},
        "/v1/chat/completions": {"post": {"summary": "Chat completion (OpenAI wire format)",
                                          "requestBody": _json_body("ChatCompletionRequest"),
                                          "responses": _responses(stream_or_json, *_GEN_ERRORS)}},
        "/v1/completions": {"post": {"summary": "Text completion (OpenAI wire format)",
                                     "requestBody": _json_body("CompletionRequest"),
                                     "responses": _responses(stream_or_json, *_GEN_ERRORS)}},
        "/v1/embeddings": {"post": {"summary": "Embeddings (OpenAI wire format)",
                                    "requestBody": _json_body("EmbeddingRequest"),
                                    "responses": _responses(_ANY_JSON, *_GEN_ERRORS)}},
        "/v1/ws": {"get": {"summary": "WebSocket: send chat-completion requests as JSON, receive "
                                      "{type: chunk} messages and one {type: done}",
                           "responses": {"101": {"description": "Switching protocols"}}}},
    }
    return {
        "openapi": "3.1.0",  # 3.1: its schemas are JSON Schema 2020-12, as pydantic writes them
        "info": {"title": "Moltbot API", "version": __version__,
                 "description": "OpenAI-compatible API of a self-hosted Moltbot runtime."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}, {"apiKey": []}],
        "paths": paths,
        "components": {
            "schemas": defs["$defs"],
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"}},
        },
    }


def add_paths(extra: dict[str, Any]) -> None:
    """Lets other blueprints (the plugin routes) document their paths here."""
    openapi_document()["paths"].update(extra)
