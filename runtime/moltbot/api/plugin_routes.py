"""HTTP routes of the plugin system: list, execute, reload. The app puts a PluginManager in `app.ctx.plugins`."""

from __future__ import annotations

import json
import time
from typing import Any

from sanic import Blueprint, Request, response
from sanic.exceptions import BadRequest

from moltbot.plugins.errors import PluginAPIError
from moltbot.plugins.manager import PluginManager

bp = Blueprint("plugins")


def _error(status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
           code: str | None = None) -> response.HTTPResponse:
    return response.json({"error": {"message": message, "type": type, "param": param, "code": code}}, status=status)


def _from_exception(exc: PluginAPIError) -> response.HTTPResponse:
    return _error(exc.status, exc.message, type=exc.type, param=exc.param, code=exc.code)


def _request_id(request: Request) -> str:
    return getattr(request.ctx, "request_id", None) or str(request.id)


def _manager(request: Request) -> PluginManager:
    return request.app.ctx.plugins


def _json_body(request: Request) -> tuple[Any, response.HTTPResponse | None]:
    if not request.body:
        return {}, None
    try:
        return json.loads(request.body), None
    except (ValueError, UnicodeDecodeError) as exc:
        return None, _error(400, f"request body is not valid JSON: {exc}", code="invalid_json")


@bp.get("/v1/plugins")
async def list_plugins(request: Request) -> response.HTTPResponse:
    return response.json({"object": "list", "data": _manager(request).describe()})


@bp.post("/v1/plugins/reload")
async def reload_plugins(request: Request) -> response.HTTPResponse:
    """Body (optional): {"names": ["plugin", ...]} to reload only those; otherwise every folder is loaded again."""
    body, problem = _json_body(request)
    if problem:
        return problem
    names = body.get("names") if isinstance(body, dict) else None
    if not isinstance(body, dict) or (names is not None and not (
            isinstance(names, list) and all(isinstance(n, str) for n in names))):
        return _error(400, "body must be an object with an optional list of plugin names in 'names'", param="names")
    try:
        outcomes = await _manager(request).reload(names)
    except PluginAPIError as exc:
        return _from_exception(exc)
    return response.json({"object": "plugin.reload", "results": outcomes, "data": _manager(request).describe()})


@bp.post("/v1/plugins/<name:str>/execute")
async def execute_plugin(request: Request, name: str) -> response.HTTPResponse:
    """Body: the plugin's input, a JSON object validated against its input_schema."""
    body, problem = _json_body(request)
    if problem:
        return problem
    request_id = _request_id(request)
    manager = _manager(request)
    started = time.perf_counter()
    try:
        version = manager.get(name).config.version
        result = await manager.execute(name, body, request_id=request_id)
    except PluginAPIError as exc:
        return _from_exception(exc)
    return response.json({
        "object": "plugin.result",
        "plugin": name,
        "version": version,
        "request_id": request_id,
        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
        "result": result,
    })
