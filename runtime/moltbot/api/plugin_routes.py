"""HTTP routes of the plugin system: list, execute, reload. The app puts a PluginManager in `app.ctx.plugins`."""

from __future__ import annotations

import time
from typing import Any

from sanic import Blueprint, Request, response

from moltbot.api.errors import APIError, error_json, load_json
from moltbot.api.openapi import add_paths
from moltbot.logs import redact_urls
from moltbot.plugins.errors import PluginAPIError
from moltbot.plugins.manager import PluginManager

# The routes answer their own errors (api/errors.py's mapping), so the blueprint works on any Sanic app.
bp = Blueprint("plugins")


def _request_id(request: Request) -> str:
    return getattr(request.ctx, "request_id", None) or str(request.id)


def _manager(request: Request) -> PluginManager:
    manager: PluginManager = request.app.ctx.plugins
    return manager


def _described(manager: PluginManager) -> list[dict[str, Any]]:
    """The plugins as GET /v1/plugins lists them, load errors redacted as the log has them (a plugin's failing
    download or DSN URL loses its user info and query string)."""
    return [_redacted(entry) for entry in manager.describe()]


def _redacted(entry: dict[str, Any]) -> dict[str, Any]:
    return {**entry, "error": redact_urls(entry["error"])} if entry.get("error") else entry


def _json_body(request: Request) -> Any:
    if not request.body:
        return {}
    return load_json(request.body)


@bp.get("/v1/plugins")
async def list_plugins(request: Request) -> response.HTTPResponse:
    return response.json({"object": "list", "data": _described(_manager(request))})


@bp.post("/v1/plugins/reload", ctx_admin=True)  # changes server state: an admin key where they are set (app.py)
async def reload_plugins(request: Request) -> response.HTTPResponse:
    """Body: {} to load every folder again, or {"names": ["plugin", ...]} for only those (JSON, as every POST)."""
    try:
        body = _json_body(request)
        names = body.get("names") if isinstance(body, dict) else None
        if not isinstance(body, dict) or ("names" in body and not (
                isinstance(names, list) and all(isinstance(n, str) for n in names))):
            raise APIError(400, "body must be an object with an optional list of plugin names in 'names'",
                           param="names")
        outcomes = await _manager(request).reload(names)
    except (APIError, PluginAPIError) as exc:
        return error_json(exc, request)
    return response.json({"object": "plugin.reload", "results": [_redacted(o) for o in outcomes],
                          "data": _described(_manager(request))})


@bp.post("/v1/plugins/<name:str>/execute")
async def execute_plugin(request: Request, name: str) -> response.HTTPResponse:
    """Body: the plugin's input, a JSON object validated against its input_schema."""
    request_id = _request_id(request)
    manager = _manager(request)
    started = time.perf_counter()
    try:
        body = _json_body(request)
        version = manager.get(name).config.version
        result = await manager.execute(name, body, request_id=request_id,
                                       admin=getattr(request.ctx, "admin", not manager.admin_required))
    except (APIError, PluginAPIError) as exc:
        return error_json(exc, request)
    return response.json({
        "object": "plugin.result",
        "plugin": name,
        "version": version,
        "request_id": request_id,
        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
        "result": result,
    })


_ERROR = {"description": "Error",
          "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
_OBJECT = {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
add_paths({
    "/v1/plugins": {"get": {
        "summary": "List the plugins: name, version, description, enabled, status (loaded, error, disabled), "
                   "load error, timeout, input schema, admin, tool (offered to models), isolation",
        "responses": {"200": _OBJECT, "401": _ERROR}}},
    "/v1/plugins/reload": {"post": {
        "summary": "Load the plugin folders again (all, or {\"names\": [...]}); a failed reload keeps the "
                   "previous version serving",
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "properties": {"names": {"type": "array", "items": {"type": "string"}}}}}}},
        "responses": {"200": _OBJECT, **{str(s): _ERROR for s in (400, 401, 403, 404, 415)}}}},
    "/v1/plugins/{name}/execute": {"post": {
        "summary": "Run a plugin; the body is its input, validated against its input_schema",
        "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
        "responses": {"200": _OBJECT, **{str(s): _ERROR for s in (400, 401, 403, 404, 409, 415, 422, 500, 504)}}}},
})
