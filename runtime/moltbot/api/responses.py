"""OpenAI's Responses API (`/v1/responses`) over the chat serving layer, and its store of responses.

A request (instructions, input as text or items, function tools, text.format, ...) becomes the chat-completion
request it means and runs as one; the reply or its chunks become a `response` object or OpenAI's event sequence
(`response.created` ... `response.completed`). With `store` (the default, as OpenAI has it) and a data dir, the
response and the conversation that led to it are kept in SQLite, bounded by count and age, visible only to the
API key that made them, so that `previous_response_id` continues a conversation without resending it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from moltbot.api.errors import APIError
from moltbot.api.protocol import ChatCompletionRequest, Metadata, PositiveInt, now
from moltbot.engine.validation import MAX_TEMPERATURE


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class InputText(_Strict):
    type: Literal["input_text", "output_text"]
    text: str
    annotations: list[Any] | None = None  # output_text sent back as it came
    logprobs: list[Any] | None = None


class MessageItem(_Strict):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputText]
    id: str | None = None
    status: str | None = None


class FunctionCallItem(_Strict):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(_Strict):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str
    id: str | None = None
    status: str | None = None


InputItem = Annotated[MessageItem | FunctionCallItem | FunctionCallOutputItem, Field(union_mode="left_to_right")]


class FunctionTool(_Strict):
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedFunctionChoice(_Strict):
    type: Literal["function"]
    name: str = Field(min_length=1)


class TextFormatText(_Strict):
    type: Literal["text"]


class TextFormatJsonObject(_Strict):
    type: Literal["json_object"]


class TextFormatJsonSchema(_Strict):
    type: Literal["json_schema"]
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextConfig(_Strict):
    format: Annotated[TextFormatText | TextFormatJsonObject | TextFormatJsonSchema, Field(discriminator="type")] | \
        None = None
    verbosity: Literal["medium"] | None = None  # the only one a model without that training has


class Reasoning(_Strict):
    effort: Literal["none"] | None = None  # these models do not reason first: anything else is a 400
    summary: None = None


class StreamOptions(_Strict):
    include_obfuscation: bool | None = None  # padding against length side channels: nothing to pad here


class ResponsesRequest(_Strict):
    model: str = Field(min_length=1)
    input: str | Annotated[list[InputItem], Field(min_length=1)]
    instructions: str | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    max_output_tokens: PositiveInt | None = None
    temperature: float | None = Field(default=None, ge=0, le=MAX_TEMPERATURE)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    store: bool = True
    previous_response_id: str | None = Field(default=None, min_length=1)
    metadata: Metadata | None = None
    user: str | None = None  # metadata: taken, changes nothing
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    truncation: Literal["disabled"] | None = None  # "auto" would drop turns silently: not offered
    include: Annotated[list[str], Field(max_length=0)] | None = None  # no extra output data to include
    reasoning: Reasoning | None = None


# ---- the request as a chat request ----------------------------------------------------------------------------
def input_items(req: ResponsesRequest) -> list[dict[str, Any]]:
    """This request's input as items (a string input is one user message)."""
    if isinstance(req.input, str):
        return [{"type": "message", "role": "user", "content": req.input}]
    return [item.model_dump(exclude_none=True) for item in req.input]


def to_chat_request(req: ResponsesRequest, conversation: list[dict[str, Any]]) -> ChatCompletionRequest:
    """The chat request for `conversation` (a stored one's items, then this request's) under this request's
    instructions, tools and sampling."""
    messages = [{"role": "system", "content": req.instructions}] if req.instructions else []
    messages += chat_messages(conversation)
    body: dict[str, Any] = {"model": req.model, "messages": messages, "stream": req.stream}
    if req.stream:
        body["stream_options"] = {"include_usage": True}
    if req.tools:
        body["tools"] = [{"type": "function", "function": tool.model_dump(exclude_none=True, exclude={"type"})}
                         for tool in req.tools]
    if isinstance(req.tool_choice, NamedFunctionChoice):
        body["tool_choice"] = {"type": "function", "function": {"name": req.tool_choice.name}}
    elif req.tool_choice is not None:
        body["tool_choice"] = req.tool_choice
    fmt = req.text.format if req.text else None
    if isinstance(fmt, TextFormatJsonSchema):
        body["response_format"] = {"type": "json_schema", "json_schema": {
            "name": fmt.name, "schema": fmt.schema_, **({"strict": fmt.strict} if fmt.strict is not None else {}),
            **({"description": fmt.description} if fmt.description else {})}}
    elif isinstance(fmt, TextFormatJsonObject):
        body["response_format"] = {"type": "json_object"}
    for field, value in (("max_tokens", req.max_output_tokens), ("temperature", req.temperature),
                         ("top_p", req.top_p), ("parallel_tool_calls", req.parallel_tool_calls)):
        if value is not None:
            body[field] = value
    return ChatCompletionRequest.model_validate(body)


def chat_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Items as chat messages: function calls join the assistant message before them (one assistant turn with
    its text and calls, as chat templates expect), their outputs are `tool` messages."""
    messages: list[dict[str, Any]] = []
    for item in items:
        kind = item.get("type", "message")
        if kind == "message":
            content = item["content"]
            text = content if isinstance(content, str) else "".join(part["text"] for part in content)
            messages.append({"role": item["role"], "content": text})
        elif kind == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
                last["content"] = last.get("content") or None
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        else:
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]})
    return messages


# ---- the reply as a response ----------------------------------------------------------------------------------
def _item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def response_object(req: ResponsesRequest, response_id: str, created: int, output: list[dict[str, Any]],
                    status: str, usage: dict[str, int] | None, stored: bool) -> dict[str, Any]:
    """A `response` object: this request's settings echoed, the output items and the usage."""
    fmt = req.text.format.model_dump(by_alias=True, exclude_none=True) if req.text and req.text.format else \
        {"type": "text"}
    choice: Any = req.tool_choice.model_dump() if isinstance(req.tool_choice, BaseModel) else \
        req.tool_choice or "auto"
    prompt, completion = (usage or {}).get("prompt_tokens", 0), (usage or {}).get("completion_tokens", 0)
    return {
        "id": response_id, "object": "response", "created_at": created, "status": status, "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": req.instructions, "max_output_tokens": req.max_output_tokens, "model": req.model,
        "output": output, "parallel_tool_calls": req.parallel_tool_calls is not False,
        "previous_response_id": req.previous_response_id, "reasoning": {"effort": None, "summary": None},
        "store": stored, "temperature": req.temperature, "top_p": req.top_p, "text": {"format": fmt},
        "tool_choice": choice, "tools": [tool.model_dump(exclude_none=True) for tool in req.tools or []],
        "truncation": "disabled", "metadata": req.metadata or {}, **({"user": req.user} if req.user else {}),
        **({} if usage is None else {"usage": {  # absent until known, as OpenAI's in-progress events have it
            "input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": prompt + completion}}),
    }


def output_items(reply: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """A chat.completion's first choice as output items, and the response's status."""
    choice = reply["choices"][0]
    items: list[dict[str, Any]] = []
    if choice["message"].get("content"):
        items.append(_message_item(choice["message"]["content"], "completed"))
    for call in choice["message"].get("tool_calls") or []:
        items.append({"type": "function_call", "id": _item_id("fc"), "call_id": call["id"],
                      "name": call["function"]["name"], "arguments": call["function"]["arguments"],
                      "status": "completed"})
    return items, "incomplete" if choice["finish_reason"] == "length" else "completed"


def _message_item(text: str, status: str, item_id: str | None = None) -> dict[str, Any]:
    return {"type": "message", "id": item_id or _item_id("msg"), "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}] if text or
            status == "completed" else []}


class ResponseEvents:
    """OpenAI's Responses stream from a chat stream's chunks; `.response` is the finished response object (for
    the store) once the events are exhausted."""

    def __init__(self, req: ResponsesRequest, response_id: str, stored: bool):
        self.req, self.id, self.stored = req, response_id, stored
        self.created = now()
        self.response: dict[str, Any] | None = None
        self._sequence = 0

    def _event(self, kind: str, **data: Any) -> tuple[str, dict[str, Any]]:
        event = (kind, {"type": kind, "sequence_number": self._sequence, **data})
        self._sequence += 1
        return event

    def _snapshot(self, output: list[dict[str, Any]], status: str, usage: dict[str, int] | None = None
                  ) -> dict[str, Any]:
        return response_object(self.req, self.id, self.created, output, status, usage, self.stored)

    async def events(self, chunks: AsyncIterator[dict[str, Any]]) -> AsyncGenerator[tuple[str, dict[str, Any]], None]:
        yield self._event("response.created", response=self._snapshot([], "in_progress"))
        yield self._event("response.in_progress", response=self._snapshot([], "in_progress"))
        output: list[dict[str, Any]] = []
        open_item: dict[str, Any] | None = None  # the item being streamed: a message or a function call
        text = ""
        usage: dict[str, int] | None = None
        status = "completed"
        async for chunk in chunks:
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices", []):
                delta = choice.get("delta", {})
                if delta.get("content"):
                    if open_item is None or open_item["type"] != "message":
                        for event in self._close(open_item, text, output):
                            yield event
                        open_item, text = _message_item("", "in_progress"), ""
                        yield self._event("response.output_item.added", output_index=len(output), item=open_item)
                        yield self._event("response.content_part.added", item_id=open_item["id"],
                                          output_index=len(output), content_index=0,
                                          part={"type": "output_text", "text": "", "annotations": [], "logprobs": []})
                    text += delta["content"]
                    yield self._event("response.output_text.delta", item_id=open_item["id"],
                                      output_index=len(output), content_index=0, delta=delta["content"], logprobs=[])
                for piece in delta.get("tool_calls") or []:
                    if piece.get("id"):  # a new call
                        for event in self._close(open_item, text, output):
                            yield event
                        open_item = {"type": "function_call", "id": _item_id("fc"), "call_id": piece["id"],
                                     "name": piece["function"].get("name") or "", "arguments": "",
                                     "status": "in_progress"}
                        yield self._event("response.output_item.added", output_index=len(output), item=open_item)
                    arguments = piece["function"].get("arguments")
                    if arguments and open_item is not None and open_item["type"] == "function_call":
                        open_item["arguments"] += arguments
                        yield self._event("response.function_call_arguments.delta", item_id=open_item["id"],
                                          output_index=len(output), delta=arguments)
                if choice.get("finish_reason") == "length":
                    status = "incomplete"
        for event in self._close(open_item, text, output):
            yield event
        self.response = self._snapshot(output, status, usage)
        yield self._event("response.completed" if status == "completed" else "response.incomplete",
                          response=self.response)

    def _close(self, item: dict[str, Any] | None, text: str, output: list[dict[str, Any]]
               ) -> list[tuple[str, dict[str, Any]]]:
        """The events that finish the open item, which joins the output."""
        if item is None:
            return []
        index = len(output)
        if item["type"] == "message":
            done = _message_item(text, "completed", item["id"])
            events = [self._event("response.output_text.done", item_id=item["id"], output_index=index,
                                  content_index=0, text=text, logprobs=[]),
                      self._event("response.content_part.done", item_id=item["id"], output_index=index,
                                  content_index=0, part=done["content"][0])]
        else:
            done = {**item, "status": "completed"}
            events = [self._event("response.function_call_arguments.done", item_id=item["id"],
                                  output_index=index, name=item["name"], arguments=item["arguments"])]
        output.append(done)
        return [*events, self._event("response.output_item.done", output_index=index, item=done)]


# ---- the store --------------------------------------------------------------------------------------------------
def owner_of(api_key: str | None) -> str:
    """Whose a stored response is: a digest of the key that made it ("" where no keys are set)."""
    return hashlib.sha256(api_key.encode()).hexdigest() if api_key else ""


class ResponseStore:
    """Stored responses in one SQLite file: each with the conversation items that led to it (its previous
    response's, its input, its output), at most `max_stored`, none older than `max_age` seconds. Calls block:
    the async methods run them in a thread, one connection each."""

    def __init__(self, path: Path, max_stored: int, max_age: float):
        self.path, self.max_stored, self.max_age = path, max_stored, max_age
        path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db, db:
            db.execute("CREATE TABLE IF NOT EXISTS responses (id TEXT PRIMARY KEY, owner TEXT NOT NULL, "
                       "created REAL NOT NULL, response TEXT NOT NULL, items TEXT NOT NULL)")
            db.execute("CREATE INDEX IF NOT EXISTS responses_created ON responses (created)")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=10)

    def _put(self, owner: str, response: dict[str, Any], items: list[dict[str, Any]]) -> None:
        with closing(self._connect()) as db, db:
            db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?)",
                       (response["id"], owner, time.time(), json.dumps(response), json.dumps(items)))
            db.execute("DELETE FROM responses WHERE created < ?", (time.time() - self.max_age,))
            db.execute("DELETE FROM responses WHERE id NOT IN (SELECT id FROM responses ORDER BY created DESC "
                       "LIMIT ?)", (self.max_stored,))

    def _get(self, owner: str, response_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        with closing(self._connect()) as db:
            row = db.execute("SELECT response, items FROM responses WHERE id = ? AND owner = ? AND created >= ?",
                             (response_id, owner, time.time() - self.max_age)).fetchone()
        return None if row is None else (json.loads(row[0]), json.loads(row[1]))

    def _delete(self, owner: str, response_id: str) -> bool:
        with closing(self._connect()) as db, db:
            return db.execute("DELETE FROM responses WHERE id = ? AND owner = ?", (response_id, owner)).rowcount > 0

    async def put(self, owner: str, response: dict[str, Any], items: list[dict[str, Any]]) -> None:
        await asyncio.to_thread(self._put, owner, response, items)

    async def get(self, owner: str, response_id: str, param: str = "response_id"
                  ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The response and its conversation; 404 for one that is not there, expired, or another key's."""
        found = await asyncio.to_thread(self._get, owner, response_id)
        if found is None:
            raise not_found(response_id, param)
        return found

    async def delete(self, owner: str, response_id: str) -> None:
        if not await asyncio.to_thread(self._delete, owner, response_id):
            raise not_found(response_id)


def not_found(response_id: str, param: str = "response_id") -> APIError:
    return APIError(404, f"Response with id '{response_id}' not found.", param=param,
                    code="response_not_found")
