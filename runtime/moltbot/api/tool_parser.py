"""Tool calls in a local model's text.

Local models announce tool calls the way Qwen2.5 / Hermes-style chat templates teach them:
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`; `service` models return OpenAI `tool_calls` themselves.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
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


_OPEN, _CLOSE = "<tool_call>", "</tool_call>"
_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*(?=\S)')


@dataclass
class ToolCallPiece:
    """A piece of a streamed tool call, as OpenAI's `delta.tool_calls` entries: the first piece has the id and the
    name, then the arguments come in parts."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""

    def as_openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index}
        if self.id is not None:
            out.update(id=self.id, type="function")
        function: dict[str, Any] = {"arguments": self.arguments}
        if self.name is not None:
            function["name"] = self.name
        out["function"] = function
        return out


class StreamingToolCallParser:
    """parse_tool_calls for a stream: text in as the model writes it; out, the text that is plain content and the
    tool-call pieces. A call's name goes out as soon as it is written, its arguments as they come (holding back
    only what may be the block's closing `}`); text that may be the start of a `<tool_call>` waits until it is
    known not to be. A block that turns out malformed is handed back as content, as parse_tool_calls does."""

    def __init__(self) -> None:
        self.buffer = ""  # outside a block: text held back; inside: the block's text after <tool_call>
        self.inside = False
        self.calls = 0  # tool calls begun
        self.sent_arguments = 0  # inside a block whose head is out: characters of its arguments sent
        self.head_end: int | None = None  # inside: where the arguments start in the buffer, once the head is out

    def push(self, text: str) -> tuple[str, list[ToolCallPiece]]:
        self.buffer += text
        content, pieces = "", list[ToolCallPiece]()
        while True:
            if not self.inside:
                start = self.buffer.find(_OPEN)
                if start < 0:
                    keep = _partial_suffix(self.buffer, _OPEN)
                    content += self.buffer[:len(self.buffer) - keep]
                    self.buffer = self.buffer[len(self.buffer) - keep:]
                    return content, pieces
                content += self.buffer[:start]
                self.buffer = self.buffer[start + len(_OPEN):]
                self.inside, self.head_end, self.sent_arguments = True, None, 0
                continue
            end = self.buffer.find(_CLOSE)
            if self.head_end is None:
                head = _HEAD.match(self.buffer)
                name = _json_string(head.group(1)) if head else None
                if head and name is not None:  # a name that is no JSON string: the block is parsed whole
                    self.head_end = head.end()
                    pieces.append(ToolCallPiece(self.calls, f"call_{uuid.uuid4().hex[:16]}", name))
                    self.calls += 1
            if end < 0:
                if self.head_end is not None:
                    pieces += self._arguments(self.buffer[self.head_end:], final=False)
                return content, pieces
            block, self.buffer, self.inside = self.buffer[:end], self.buffer[end + len(_CLOSE):], False
            if self.head_end is not None:
                pieces += self._arguments(block[self.head_end:], final=True)
            else:  # not written name first: parsed whole, or handed back as text
                rest, calls = parse_tool_calls(_OPEN + block + _CLOSE)
                content += rest
                for call in calls:
                    pieces.append(ToolCallPiece(self.calls, call["id"], call["function"]["name"],
                                                call["function"]["arguments"]))
                    self.calls += 1

    def finish(self) -> tuple[str, list[ToolCallPiece]]:
        """At the end of the output: what is still held back (an unclosed block's head-less text as content)."""
        if not self.inside:
            content, self.buffer = self.buffer, ""
            return content, []
        self.inside = False
        if self.head_end is not None:
            return "", self._arguments(self.buffer[self.head_end:], final=True)
        content, self.buffer = _OPEN + self.buffer, ""
        return content, []

    def _arguments(self, text: str, *, final: bool) -> list[ToolCallPiece]:
        """The next part of the arguments of the call being written (the last one begun)."""
        if final:
            text = text.rstrip()
            text = text[:-1].rstrip() if text.endswith("}") else text  # the block's own closing brace
            end = len(text)
        else:  # hold back what may be the end of the block: a last `}`, whitespace, the start of </tool_call>
            text = text[:len(text) - _partial_suffix(text, _CLOSE)].rstrip()
            end = max(self.sent_arguments, len(text) - 1 if text.endswith("}") else len(text))
        part, self.sent_arguments = text[self.sent_arguments:end], max(self.sent_arguments, end)
        return [ToolCallPiece(self.calls - 1, arguments=part)] if part else []


def _partial_suffix(text: str, marker: str) -> int:
    """How many of the last characters of `text` are the start of `marker`."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


def _json_string(body: str) -> str | None:
    """The JSON string literal with this body, decoded; None when the model wrote no valid one (a raw control
    character, a bad escape): model output must never end a stream with an error."""
    try:
        value = json.loads(f'"{body}"')
    except ValueError:
        return None
    return value if isinstance(value, str) else None
