"""Tool calls in a local model's text, read in the engine so that every caller (the HTTP API, the plugins'
`context.models`) gets them parsed, in OpenAI's shape.

How calls appear in the text is a property of the model (the format its chat template and training teach), so a
format is one object with the three things that depend on it: `parse` (a whole text), `stream` (text as it comes,
calls out in pieces) and `grammar` (the llguidance grammar that holds forced calls, and calls under auto, to the
offered functions' schemas). The model config's `tool_call_format` names one; without it, the chat template's text
says which (DEFAULT_FORMAT where it teaches none).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import llguidance

from moltbot.engine.errors import InvalidRequest
from moltbot.engine.grammar import JSON_OPTIONS, Grammar, GrammarCompiler, bounded_numbers

log = logging.getLogger("moltbot.engine")


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of a tool call the model makes: its first piece has the id and name, the arguments come in parts."""

    index: int  # which of the choice's tool calls
    id: str | None = None
    name: str | None = None
    arguments: str = ""

    def as_openai(self) -> dict[str, Any]:
        """As a streamed chunk's `delta.tool_calls` entry."""
        out: dict[str, Any] = {"index": self.index}
        if self.id is not None:
            out.update(id=self.id, type="function")
        function: dict[str, Any] = {"arguments": self.arguments}
        if self.name is not None:
            function["name"] = self.name
        out["function"] = function
        return out


@dataclass
class ToolCall:
    """A whole tool call (a choice's pieces joined)."""

    id: str
    name: str
    arguments: str

    def as_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:16]}"


def _call(data: Any, arguments_keys: tuple[str, ...]) -> ToolCall | None:
    """A call written as a JSON object with a string `name` and its arguments under one of `arguments_keys`
    (an object, or a string of JSON); None where it is not one."""
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None
    key = next((k for k in arguments_keys if k in data), None)
    arguments = data[key] if key else {}
    if not isinstance(arguments, dict | str):
        return None
    return ToolCall(new_call_id(), data["name"], arguments if isinstance(arguments, str) else json.dumps(arguments))


class ToolCallStream(Protocol):
    """A format's reader of one choice's text as it comes: out, the plain content and the calls' pieces."""

    def push(self, text: str) -> tuple[str, list[ToolCallDelta]]: ...

    def finish(self) -> tuple[str, list[ToolCallDelta]]: ...


class ToolCallFormat(ABC):
    """How one family of models writes tool calls."""

    name: ClassVar[str]
    markers: ClassVar[tuple[str, ...]]  # text of a chat template that teaches this format
    arguments_key: ClassVar[str]  # where the grammar has a call's arguments written

    @abstractmethod
    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        """The text less its well-formed calls (all of it where there are none), and those calls. Malformed call
        text stays in the content, where the client sees it."""

    @abstractmethod
    def stream(self) -> ToolCallStream:
        """A reader for one streamed choice, which hands out what it parses as soon as it knows it."""

    @abstractmethod
    def lark(self, call: str, *, forced: bool, parallel: bool) -> str:
        """The Lark grammar of the output, with `call` (a rule defining `call_json`: one call's JSON object)."""

    def grammar(self, tools: list[dict[str, Any]], name: str | None, *, forced: bool, parallel: bool,
                lenient: bool = False) -> str:
        """llguidance's grammar of the calls: the name one of the offered functions' (or `name`), the arguments
        valid against that function's parameters. `forced` (tool_choice required or named): the output is calls
        only; otherwise (auto) the text is free until the model opens a call, which must then be valid. Parallel
        false: one call at most. `lenient`: keywords llguidance does not implement (if / then, ...) are left out
        and oneOf is taken as anyOf."""
        calls = []
        for tool in tools:
            function = tool.get("function") or {}
            if name is not None and function.get("name") != name:
                continue
            parameters = bounded_numbers(function.get("parameters") or {"type": "object"})
            calls.append({"type": "object", "additionalProperties": False, "required": ["name", self.arguments_key],
                          "properties": {"name": {"const": function.get("name")}, self.arguments_key: parameters}})
        options = {**JSON_OPTIONS, "lenient": True, "coerce_one_of": True} if lenient else JSON_OPTIONS
        schema = {**(calls[0] if len(calls) == 1 else {"anyOf": calls}), "x-guidance": options}
        return llguidance.LLMatcher.grammar_from_lark(
            self.lark(f"call_json: %json {json.dumps(schema)}\n", forced=forced, parallel=parallel))


class HermesFormat(ToolCallFormat):
    """Qwen2.5 / Hermes: `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, one block per call. A
    block holding a JSON list of calls (as SmolLM2 was trained to write them) is read as those calls."""

    name = "hermes"
    markers = ("<tool_call>",)
    arguments_key = "arguments"

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        calls: list[ToolCall] = []

        def take(match: re.Match[str]) -> str:
            try:
                data = json.loads(match.group(1))
            except ValueError:
                return match.group(0)
            found = [_call(item, ("arguments",)) for item in (data if isinstance(data, list) else [data])]
            if not found or None in found:
                return match.group(0)
            calls.extend(call for call in found if call is not None)
            return ""

        remaining = _HERMES_BLOCK.sub(take, text or "")
        return (remaining.strip(), calls) if calls else (text, [])

    def stream(self) -> ToolCallStream:
        return HermesStream(self)

    def lark(self, call: str, *, forced: bool, parallel: bool) -> str:
        block = 'call: "<tool_call>\\n" call_json "\\n</tool_call>"\n'
        if forced:
            repeat = ' ("\\n" call)*' if parallel else ""
            return f"start: call{repeat}\n{block}{call}"
        # Lazy: free text until the model writes <tool_call> (as llama.cpp's lazy grammars and llguidance's
        # StructTag); after one call with parallel false, nothing more.
        start = "call* TEXT" if parallel else "TEXT | call"
        return (f'%llguidance {{}}\nstart: {start}\ncall: trigger "\\n" call_json "\\n</tool_call>"\n'
                f'trigger[lazy]: TEXT "<tool_call>"\nTEXT: /(.|\\n)*/\n{call}')


class JsonFormat(ToolCallFormat):
    """Llama 3.1 / 3.2 (and SmolLM-style templates that ask for bare JSON): the whole reply is the call,
    `{"name": ..., "parameters": {...}}` (`arguments` is read too), several separated by `;`. As vLLM's
    llama3_json reader, only a reply that starts with `{` is a call."""

    name = "llama3_json"
    markers = ("<|python_tag|>", '"parameters": dictionary of argument name')
    arguments_key = "parameters"

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        if not text.startswith("{"):
            return text, []
        decoder, calls, at = json.JSONDecoder(), list[ToolCall](), 0
        while at < len(text):
            try:
                data, at = decoder.raw_decode(text, at)
            except ValueError:
                return text, []
            call = _call(data, ("parameters", "arguments"))
            if call is None:
                return text, []
            calls.append(call)
            rest = text[at:].lstrip()
            if rest and not rest.startswith(";"):
                return text, []
            at = len(text) - len(rest.removeprefix(";").lstrip())
        return "", calls

    def stream(self) -> ToolCallStream:
        return JsonStream(self)

    def lark(self, call: str, *, forced: bool, parallel: bool) -> str:
        calls = 'calls: call_json ("; " call_json)*\n' if parallel else "calls: call_json\n"
        # Under auto, a reply that does not start with `{` is free text; one that does is a call.
        return (f"start: calls\n{calls}{call}" if forced
                else f"start: TEXT | calls\nTEXT: /([^{{](.|\\n)*)?/\n{calls}{call}")


_HERMES_BLOCK = re.compile(r"<tool_call>\s*(\{.*?\}|\[.*?\])\s*</tool_call>", re.S)
FORMATS: dict[str, ToolCallFormat] = {f.name: f for f in (HermesFormat(), JsonFormat())}
# Where a model's config names none and its chat template teaches none (the embedded default SmolLM2's template
# mentions no tools; it was trained on <tool_call> blocks): the format most open models use.
DEFAULT_FORMAT = "hermes"


def format_for(name: str | None, chat_template: str | None) -> ToolCallFormat:
    """The model's format: the one its config names (checked at load: ModelConfig), else the first whose markers
    its chat template holds, else DEFAULT_FORMAT."""
    if name is not None:
        return FORMATS[name]
    for candidate in FORMATS.values():
        if chat_template and any(marker in chat_template for marker in candidate.markers):
            return candidate
    return FORMATS[DEFAULT_FORMAT]


class HermesStream:
    """HermesFormat.parse for a stream. A call's name goes out as soon as it is written, its arguments as they
    come (holding back only what may be the block's closing `}`); text that may be the start of a `<tool_call>`
    waits until it is known not to be. A block that turns out malformed is handed back as content, as parse does;
    one not written name first (a list of calls) is parsed whole at its close."""

    def __init__(self, fmt: HermesFormat) -> None:
        self.format = fmt
        self.buffer = ""  # outside a block: text held back; inside: the block's text after <tool_call>
        self.inside = False
        self.calls = 0  # tool calls begun
        self.sent_arguments = 0  # inside a block whose head is out: characters of its arguments sent
        self.head_end: int | None = None  # inside: where the arguments start in the buffer, once the head is out

    def push(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        self.buffer += text
        content, pieces = "", list[ToolCallDelta]()
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
                    pieces.append(ToolCallDelta(self.calls, new_call_id(), name))
                    self.calls += 1
            if end < 0:
                if self.head_end is not None:
                    pieces += self._arguments(self.buffer[self.head_end:], final=False)
                return content, pieces
            block, self.buffer, self.inside = self.buffer[:end], self.buffer[end + len(_CLOSE):], False
            if self.head_end is not None:
                pieces += self._arguments(block[self.head_end:], final=True)
            else:
                whole = _OPEN + block + _CLOSE
                rest, calls = self.format.parse(whole)
                content += rest if calls else whole
                for call in calls:
                    pieces.append(ToolCallDelta(self.calls, call.id, call.name, call.arguments))
                    self.calls += 1

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        """At the end of the output: what is still held back (an unclosed block's head-less text as content)."""
        if not self.inside:
            content, self.buffer = self.buffer, ""
            return content, []
        self.inside = False
        if self.head_end is not None:
            return "", self._arguments(self.buffer[self.head_end:], final=True)
        content, self.buffer = _OPEN + self.buffer, ""
        return content, []

    def _arguments(self, text: str, *, final: bool) -> list[ToolCallDelta]:
        """The next part of the arguments of the call being written (the last one begun)."""
        if final:
            text = text.rstrip()
            text = text[:-1].rstrip() if text.endswith("}") else text  # the block's own closing brace
            end = len(text)
        else:  # hold back what may be the end of the block: a last `}`, whitespace, the start of </tool_call>
            text = text[:len(text) - _partial_suffix(text, _CLOSE)].rstrip()
            end = max(self.sent_arguments, len(text) - 1 if text.endswith("}") else len(text))
        part, self.sent_arguments = text[self.sent_arguments:end], max(self.sent_arguments, end)
        return [ToolCallDelta(self.calls - 1, arguments=part)] if part else []


_OPEN, _CLOSE = "<tool_call>", "</tool_call>"
_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*(?=\S)')


class JsonStream:
    """JsonFormat.parse for a stream: a reply that does not start with `{` goes out as it comes; one that does is
    held and parsed whole at its end (content where it is no call)."""

    def __init__(self, fmt: JsonFormat) -> None:
        self.format = fmt
        self.held: str | None = ""  # None: known to be plain text

    def push(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        if self.held is None:
            return text, []
        self.held += text
        if not self.held or self.held.startswith("{"):
            return "", []
        content, self.held = self.held, None
        return content, []

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        if not self.held:
            return "", []
        content, calls = self.format.parse(self.held)
        self.held = None
        return content, [ToolCallDelta(i, call.id, call.name, call.arguments) for i, call in enumerate(calls)]


class WholeText:
    """A choice that is not streamed: its text held to its end and parsed whole (the content then stripped of
    the space around the calls)."""

    def __init__(self, fmt: ToolCallFormat) -> None:
        self.format = fmt
        self.text = ""

    def push(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        self.text += text
        return "", []

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        content, calls = self.format.parse(self.text)
        return content, [ToolCallDelta(i, call.id, call.name, call.arguments) for i, call in enumerate(calls)]


class ToolCallReader:
    """A generation's choices read for calls: each choice's text less its calls, the calls as pieces, and
    finish_reason tool_calls for a choice that stopped having called."""

    def __init__(self, fmt: ToolCallFormat, *, stream: bool) -> None:
        self.format = fmt
        self.streamed = stream
        self.readers: dict[int, ToolCallStream] = {}
        self.called: set[int] = set()

    def read(self, index: int, text: str, finish_reason: str | None
             ) -> tuple[str, tuple[ToolCallDelta, ...], str | None]:
        reader = self.readers.get(index)
        if reader is None:
            reader = self.readers[index] = self.format.stream() if self.streamed else WholeText(self.format)
        content, pieces = reader.push(text)
        if finish_reason:
            rest, more = reader.finish()
            content, pieces = content + rest, pieces + more
        if pieces:
            self.called.add(index)
        if finish_reason == "stop" and index in self.called:
            finish_reason = "tool_calls"
        return content, tuple(pieces), finish_reason


def compile_tools(compiler: GrammarCompiler, fmt: ToolCallFormat, tools: list[dict[str, Any]], name: str | None,
                  *, forced: bool, parallel: bool) -> Grammar | None:
    """The format's tool-call grammar, compiled: strictly where every tool's parameters compile, otherwise
    leniently (the built-in plugins' schemas use if / then and oneOf, which llguidance does not implement: the
    calls are then held to the rest of each schema). Where even that fails, a forced call is a 400 naming `tools`;
    under auto the output is read as written, as without a grammar."""
    try:
        return compiler.compile(fmt.grammar(tools, name, forced=forced, parallel=parallel), "tools")
    except InvalidRequest as strict:
        try:
            grammar = compiler.compile(fmt.grammar(tools, name, forced=forced, parallel=parallel, lenient=True),
                                       "tools")
        except InvalidRequest:
            if forced:
                raise strict from None
            log.info("tool calls not held to a grammar: %s", strict.message)
            return None
        log.info("tool calls held to a lenient grammar: %s", strict.message)
        return grammar


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
