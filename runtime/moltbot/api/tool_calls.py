"""Plugins as OpenAI tools: a chat request whose `tools` name plugins gets the model's tool calls answered by
running those plugins, for at most `max_tool_rounds` rounds, and the final answer back."""

from __future__ import annotations

import json
from typing import Any

from moltbot.api.protocol import ChatCompletionRequest, ChatMessage
from moltbot.api.serving import OpenAIServing, RequestStats
from moltbot.plugins.manager import PluginManager
from moltbot.plugins.tools import run_tool_calls, tool_plugins


def offered_plugins(req: ChatCompletionRequest, plugins: PluginManager | None) -> set[str]:
    """The plugins this request offers the model: named in its `tools`, loaded, not `"tool": false`. Only these
    run; a call of any other name (a document may ask for one) goes back to the client, as OpenAI does."""
    if not req.tools or plugins is None:
        return set()
    return {tool.function.name for tool in req.tools} & tool_plugins(plugins)


def names_plugins(req: ChatCompletionRequest, plugins: PluginManager | None) -> bool:
    return bool(offered_plugins(req, plugins))


async def chat_with_plugin_tools(serving: OpenAIServing, plugins: PluginManager, req: ChatCompletionRequest,
                                 stats: RequestStats, request_id: str, admin: bool = False) -> dict[str, Any]:
    """`admin`: the caller holds an admin key (or none is configured); plugin calls marked admin need it, and
    the request's `allow_admin_tool_calls`."""
    runnable = offered_plugins(req, plugins)
    messages = [m.model_dump(exclude_none=True) for m in req.messages]
    executed: list[dict[str, Any]] = []
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    reply: dict[str, Any] = {}
    for _ in range(req.max_tool_rounds):
        round_req = req.model_copy(update={"messages": [ChatMessage.model_validate(m) for m in messages],
                                           "stream": False, "n": 1})
        reply = await serving.chat(round_req, stats)
        for key in usage:
            usage[key] += reply.get("usage", {}).get(key, 0)
        message = reply["choices"][0]["message"]
        calls = message.get("tool_calls")
        if not calls or not all(call["function"]["name"] in runnable for call in calls):
            break  # the answer, or calls of tools the client runs itself (handed back as OpenAI does)
        results = await run_tool_calls(plugins, calls, request_id, admin=admin,
                                       admin_calls=req.allow_admin_tool_calls)
        executed += [{"tool_call": call, "result": json.loads(result["content"])}
                     for call, result in zip(calls, results, strict=True)]
        messages += [{"role": "assistant", "content": message.get("content") or None, "tool_calls": calls},
                     *[{"role": "tool", "tool_call_id": r["tool_call_id"], "content": r["content"]} for r in results]]
    reply["usage"] = usage
    reply["plugin_calls"] = executed  # extension: what ran on the way to the answer
    return reply
