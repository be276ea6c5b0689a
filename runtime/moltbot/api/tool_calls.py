"""Plugins as OpenAI tools: a chat request whose `tools` name plugins gets the model's tool calls answered by
running those plugins, for at most `max_tool_rounds` rounds, and the final answer back.

Local models announce tool calls in their text the way Qwen2.5 / Hermes-style chat templates teach them:
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`. `service` models return OpenAI `tool_calls`.
"""

from __future__ import annotations

import json
import re
import uuid

from moltbot.api.protocol import ChatCompletionRequest
from moltbot.api.serving import OpenAIServing, RequestStats
from moltbot.plugins.manager import PluginManager
from moltbot.plugins.tools import run_tool_calls

_TOOL_CALL = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.S)


def parse_tool_calls(text: str) -> tuple[str, list[dict]]:
    """The text without its <tool_call> blocks, and the calls in OpenAI's shape."""
    calls = []
    for block in _TOOL_CALL.findall(text or ""):
        try:
            data = json.loads(block)
        except ValueError:
            continue
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            continue
        arguments = data.get("arguments", {})
        calls.append({"id": f"call_{uuid.uuid4().hex[:16]}", "type": "function",
                      "function": {"name": data["name"],
                                   "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments)}})
    return _TOOL_CALL.sub("", text or "").strip(), calls


def names_plugins(req: ChatCompletionRequest, plugins: PluginManager | None) -> bool:
    if not req.tools or plugins is None:
        return False
    runnable = set(plugins.runnable_names())
    return any(tool.function.name in runnable for tool in req.tools)


async def chat_with_plugin_tools(serving: OpenAIServing, plugins: PluginManager, req: ChatCompletionRequest,
                                 stats: RequestStats, request_id: str) -> dict:
    runnable = set(plugins.runnable_names())
    messages = [m.model_dump(exclude_none=True) for m in req.messages]
    executed: list[dict] = []
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    reply: dict = {}
    for _ in range(req.max_tool_rounds):
        round_req = req.model_copy(update={"messages": req.model_validate({**req.model_dump(), "messages": messages})
                                           .messages, "stream": False, "n": 1})
        reply = await serving.chat(round_req, stats)
        for key in usage:
            usage[key] += reply.get("usage", {}).get(key, 0)
        message = reply["choices"][0]["message"]
        calls = message.get("tool_calls")
        if not calls:
            message["content"], calls = parse_tool_calls(message.get("content") or "")
        if not calls:
            break
        if not all(call["function"]["name"] in runnable for call in calls):
            # A tool the client handles itself: hand the calls back, as OpenAI does.
            message["tool_calls"] = calls
            reply["choices"][0]["finish_reason"] = "tool_calls"
            break
        results = await run_tool_calls(plugins, calls, request_id)
        executed += [{"tool_call": call, "result": json.loads(result["content"])}
                     for call, result in zip(calls, results)]
        messages += [{"role": "assistant", "content": message.get("content") or None, "tool_calls": calls},
                     *[{"role": "tool", "tool_call_id": r["tool_call_id"], "content": r["content"]} for r in results]]
    reply["usage"] = usage
    reply["plugin_calls"] = executed  # extension: what ran on the way to the answer
    return reply
