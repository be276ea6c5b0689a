"""Tool calls in a local model's text.

Local models announce tool calls the way Qwen2.5 / Hermes-style chat templates teach them:
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`; `service` models return OpenAI `tool_calls` themselves.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

_TOOL_CALL = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.S)


def parse_tool_calls(text: str) -> tuple[str, list[dict[str, Any]]]:
    """The text without its well-formed <tool_call> blocks, and those calls in OpenAI's shape.
    A malformed block stays in the text, where the client can see it."""
    calls: list[dict[str, Any]] = []

    def take(match: re.Match[str]) -> str:
        block = match.group(0)
        try:
            data = json.loads(match.group(1))
        except ValueError:
            return block
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            return block
        arguments = data.get("arguments", {})
        calls.append({"id": f"call_{uuid.uuid4().hex[:16]}", "type": "function",
                      "function": {"name": data["name"],
                                   "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments)}})
        return ""

    remaining = _TOOL_CALL.sub(take, text or "")
    return remaining.strip(), calls
