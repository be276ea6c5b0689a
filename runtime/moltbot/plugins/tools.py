"""Plugins as OpenAI tools: the `tools` entries a chat request names, and running the model's tool calls."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from moltbot.logs import redact_urls

from .errors import PluginAPIError, PluginForbidden, PluginInputError, PluginNotATool
from .manager import PluginManager


def plugin_tool_specs(manager: PluginManager, names: list[str]) -> list[dict[str, Any]]:
    """OpenAI `tools` entries for the named plugins; PluginNotFound / PluginUnavailable for one that cannot run,
    PluginNotATool for one whose config.json says `"tool": false` (the chat route would never run it as a tool)."""
    specs = []
    for name in names:
        plugin = manager.get(name)
        if not plugin.config.tool:
            raise PluginNotATool(f"plugin {name!r} is not offered to models (its config.json says \"tool\": false)",
                                 param="tools")
        specs.append({
            "type": "function",
            "function": {
                "name": name,
                "description": plugin.config.description or f"Run the {name} plugin.",
                "parameters": plugin.input_schema,
            },
        })
    return specs


def tool_plugins(manager: PluginManager) -> set[str]:
    """The loaded plugins a chat request may offer a model as tools: all but those whose config.json says
    `"tool": false`."""
    return {name for name in manager.runnable_names() if manager.get(name).config.tool}


async def run_tool_calls(manager: PluginManager, tool_calls: list[dict[str, Any]],
                         request_id: str, admin: bool = False, admin_calls: bool = False) -> list[dict[str, Any]]:
    """Run the model's tool calls (concurrently) and return one `role: tool` message per call, in order.

    A failing call does not fail the others: its message carries {"error": {...}} for the model to read. Calls
    that need an admin key (with admin keys set) are refused unless `admin`. Calls a plugin's config.json marks
    admin are refused unless `admin_calls` too (the request opted in): a model's call may come from a document.
    """
    return list(await asyncio.gather(*(_run_one(manager, call, request_id, admin, admin_calls)
                                       for call in tool_calls)))


async def _run_one(manager: PluginManager, call: dict[str, Any], request_id: str, admin: bool,
                   admin_calls: bool) -> dict[str, Any]:
    call_id = call.get("id", "")
    function = call.get("function") or {}
    name = function.get("name", "")
    try:
        arguments = _arguments(function.get("arguments"))
        if not admin_calls and manager.get(name).config.needs_admin(arguments):
            raise PluginForbidden(f"this call of plugin {name!r} changes server state: a model's tool call runs it "
                                  'only when the request sets "allow_admin_tool_calls": true',
                                  code="admin_tool_call_not_allowed")
        content: dict[str, Any] = await manager.execute(name, arguments, request_id=request_id, admin=admin)
    except PluginAPIError as exc:
        content = {"error": {"message": redact_urls(exc.message), "type": exc.type, "param": exc.param,
                             "code": exc.code}}
    return {"role": "tool", "tool_call_id": call_id, "name": name, "content": json.dumps(content)}


def _arguments(raw: Any) -> Any:
    """Tool call arguments arrive as a JSON string (OpenAI) or already decoded."""
    if raw is None or raw == "":
        return {}
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise PluginInputError(f"tool call arguments are not valid JSON: {exc.msg}", param="arguments") from None
    return raw
