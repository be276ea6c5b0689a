"""Anthropic's Messages API (`POST /v1/messages`, `/v1/messages/count_tokens`) over the chat serving layer.

A Messages request becomes the chat-completion request it means (system, text, tool_use and tool_result blocks;
tools and tool_choice), runs as one, and its reply or chunks are put back in Anthropic's shapes, so that
Anthropic-SDK clients can use a self-hosted model (as llama.cpp, vLLM and Ollama serve it). Types are strict and
unknown fields refused, as Anthropic's own API does; what a text model cannot do (images, documents, extended
thinking, continuing a last assistant message) is a 400 naming it, never silently dropped.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from moltbot.api.errors import APIError
from moltbot.api.protocol import ChatCompletionRequest, PositiveInt, TopK, new_id
from moltbot.engine.validation import MAX_STOP_SEQUENCES

# Anthropic's stop reasons for the chat finish reasons (a stop string is told apart from the end of the turn in
# `stop_sequence`).
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class CacheControl(_Strict):
    # A hint for Anthropic's prompt cache: taken, changes nothing (the runtime decides what it keeps cached).
    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] | None = None


class TextBlock(_Strict):
    type: Literal["text"]
    text: str
    cache_control: CacheControl | None = None


class ToolUseBlock(_Strict):
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any]
    cache_control: CacheControl | None = None


class ToolResultBlock(_Strict):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[TextBlock] = ""
    is_error: bool = False
    cache_control: CacheControl | None = None


class UnsupportedBlock(BaseModel):
    """A block a text model cannot read: refused by name (see `_refuse_unsupported`)."""

    model_config = ConfigDict(extra="allow")
    type: Literal["image", "document", "search_result", "thinking", "redacted_thinking", "server_tool_use",
                  "web_search_tool_result", "container_upload"]


Block = Annotated[TextBlock | ToolUseBlock | ToolResultBlock | UnsupportedBlock, Field(discriminator="type")]


class Message(_Strict):
    role: Literal["user", "assistant"]
    content: str | Annotated[list[Block], Field(min_length=1)]


class Tool(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None
    cache_control: CacheControl | None = None


class ToolChoice(_Strict):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class MessagesMetadata(_Strict):
    user_id: str | None = Field(default=None, max_length=256)  # metadata: taken, changes nothing


class Thinking(_Strict):
    # "adaptive": the model decides whether to think (these do not); "enabled" asks for it, and is refused.
    type: Literal["enabled", "adaptive", "disabled"]
    budget_tokens: PositiveInt | None = None
    display: Literal["summarized", "omitted"] | None = None


class JsonOutputFormat(_Strict):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(_Strict):
    format: JsonOutputFormat | None = None  # held by the constrained decoding of response_format json_schema
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None  # refused: nothing here to spend it on


class CountTokensRequest(_Strict):
    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    cache_control: CacheControl | None = None
    output_config: OutputConfig | None = None


class MessagesRequest(CountTokensRequest):
    max_tokens: PositiveInt
    stop_sequences: Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=MAX_STOP_SEQUENCES)] | \
        None = None
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0, le=1)  # Anthropic's range
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: TopK | None = None
    metadata: MessagesMetadata | None = None


def to_chat_request(req: CountTokensRequest, *, max_tokens: int = 1) -> ChatCompletionRequest:
    """The chat-completion request a Messages request means. 400 (naming the field) for what a text model
    cannot do."""
    _refuse_unsupported(req)
    messages: list[dict[str, Any]] = []
    if req.system:
        messages.append({"role": "system", "content": _text(req.system)})
    for turn in req.messages:
        messages += _chat_messages(turn)
    if req.messages[-1].role == "assistant":
        raise APIError(400, "messages: a last assistant message (a prefill to continue) is not supported here; "
                            "end with a user message", param="messages")
    body: dict[str, Any] = {"model": req.model, "messages": messages, "max_tokens": max_tokens}
    if req.tools:
        body["tools"] = [{"type": "function", "function": {"name": t.name, "parameters": t.input_schema,
                                                           **({"description": t.description} if t.description
                                                              else {})}} for t in req.tools]
    if req.tool_choice is not None:
        body.update(_tool_choice(req.tool_choice, has_tools=bool(req.tools)))
    if req.output_config is not None and req.output_config.format is not None:
        body["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "output", "schema": req.output_config.format.schema_, "strict": True}}
    if isinstance(req, MessagesRequest):
        if req.stream:  # the output tokens for message_delta's usage
            body["stream_options"] = {"include_usage": True}
        body.update({"stream": req.stream, "max_tokens": req.max_tokens,
                     **{k: v for k, v in (("temperature", req.temperature), ("top_p", req.top_p),
                                          ("top_k", req.top_k), ("stop", req.stop_sequences)) if v is not None}})
    return ChatCompletionRequest.model_validate(body)


def _refuse_unsupported(req: CountTokensRequest) -> None:
    if req.thinking is not None and req.thinking.type == "enabled":
        raise APIError(400, "thinking: extended thinking is not supported by the models served here",
                       param="thinking")
    if req.output_config is not None and req.output_config.effort is not None:
        raise APIError(400, "output_config.effort: the models served here have no effort setting",
                       param="output_config.effort")
    for i, turn in enumerate(req.messages):
        for j, block in enumerate(turn.content if isinstance(turn.content, list) else []):
            if isinstance(block, UnsupportedBlock):
                raise APIError(400, f"messages.{i}.content.{j}: {block.type} blocks are not supported: the models "
                                    "served here read text", param=f"messages.{i}.content.{j}.type")
            if turn.role == "user" and isinstance(block, ToolUseBlock):
                raise APIError(400, f"messages.{i}.content.{j}: tool_use blocks belong to assistant messages",
                               param=f"messages.{i}.content.{j}.type")
            if turn.role == "assistant" and isinstance(block, ToolResultBlock):
                raise APIError(400, f"messages.{i}.content.{j}: tool_result blocks belong to user messages",
                               param=f"messages.{i}.content.{j}.type")


def _text(content: str | list[TextBlock]) -> str:
    return content if isinstance(content, str) else "\n".join(block.text for block in content)


def _chat_messages(turn: Message) -> list[dict[str, Any]]:
    """One Messages turn as chat messages: a user turn's tool results become `tool` messages (before its text, as
    Anthropic orders them), an assistant turn's tool_use blocks its `tool_calls`."""
    if isinstance(turn.content, str):
        return [{"role": turn.role, "content": turn.content}]
    texts = [block.text for block in turn.content if isinstance(block, TextBlock)]
    if turn.role == "assistant":
        calls = [{"id": b.id, "type": "function", "function": {"name": b.name, "arguments": json.dumps(b.input)}}
                 for b in turn.content if isinstance(b, ToolUseBlock)]
        return [{"role": "assistant", "content": "\n".join(texts) or None, **({"tool_calls": calls} if calls else {})}]
    out: list[dict[str, Any]] = [
        {"role": "tool", "tool_call_id": b.tool_use_id,
         "content": ("Error: " if b.is_error else "") + _text(b.content)}
        for b in turn.content if isinstance(b, ToolResultBlock)]
    if texts:
        out.append({"role": "user", "content": "\n".join(texts)})
    return out


def _tool_choice(choice: ToolChoice, *, has_tools: bool) -> dict[str, Any]:
    if choice.type != "tool" and choice.name is not None:
        raise APIError(400, "tool_choice.name: only a tool_choice of type tool names a tool", param="tool_choice.name")
    if choice.type != "none" and not has_tools:
        raise APIError(400, "tool_choice: no tools were given", param="tool_choice")
    if choice.type == "tool":
        if not choice.name:
            raise APIError(400, "tool_choice.name: field required", param="tool_choice.name")
        out: dict[str, Any] = {"tool_choice": {"type": "function", "function": {"name": choice.name}}}
    else:
        out = {"tool_choice": {"auto": "auto", "any": "required", "none": "none"}[choice.type]}
    if choice.disable_parallel_tool_use:
        out["parallel_tool_calls"] = False
    return out


def message_from_chat(reply: dict[str, Any]) -> dict[str, Any]:
    """A chat.completion (one choice) as an Anthropic message."""
    choice = reply["choices"][0]
    content: list[dict[str, Any]] = []
    if choice["message"].get("content"):
        content.append({"type": "text", "text": choice["message"]["content"]})
    for call in choice["message"].get("tool_calls") or []:
        content.append({"type": "tool_use", "id": call["id"], "name": call["function"]["name"],
                        "input": _arguments(call["function"]["arguments"])})
    usage = reply.get("usage") or {}
    return {"id": new_id("msg"), "type": "message", "role": "assistant", "model": reply["model"],
            "content": content, "stop_reason": STOP_REASONS.get(choice["finish_reason"], "end_turn"),
            "stop_sequence": None, "usage": {"input_tokens": usage.get("prompt_tokens", 0),
                                             "output_tokens": usage.get("completion_tokens", 0)}}


def _arguments(text: str) -> dict[str, Any]:
    """A call's arguments as the object Anthropic's `input` is (a call that is not an object: under `arguments`)."""
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {"arguments": text}
    return value if isinstance(value, dict) else {"arguments": value}


async def message_events(chunks: AsyncIterator[dict[str, Any]], model: str, input_tokens: int
                         ) -> AsyncGenerator[tuple[str, dict[str, Any]], None]:
    """Anthropic's stream, (event name, data), from a chat stream's chunks: message_start, ping, per content block
    content_block_start / _delta / _stop (text_delta; input_json_delta for a tool call's arguments), message_delta
    with the stop reason and usage, message_stop."""
    yield "message_start", {"type": "message_start", "message": {
        "id": new_id("msg"), "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": input_tokens, "output_tokens": 0}}}
    yield "ping", {"type": "ping"}
    block: int | None = None  # the open content block's index
    kind: str | None = None  # and what it is: text, or the index of the chat tool call it carries
    blocks = 0
    reason, output_tokens = "end_turn", 0
    async for chunk in chunks:
        if chunk.get("usage"):
            output_tokens = chunk["usage"]["completion_tokens"]
        for choice in chunk.get("choices", []):
            delta = choice.get("delta", {})
            if delta.get("content"):
                if kind != "text":
                    if block is not None:
                        yield "content_block_stop", {"type": "content_block_stop", "index": block}
                    block, kind, blocks = blocks, "text", blocks + 1
                    yield "content_block_start", {"type": "content_block_start", "index": block,
                                                  "content_block": {"type": "text", "text": ""}}
                yield "content_block_delta", {"type": "content_block_delta", "index": block,
                                              "delta": {"type": "text_delta", "text": delta["content"]}}
            for piece in delta.get("tool_calls") or []:
                if kind != f"call {piece['index']}":
                    if block is not None:
                        yield "content_block_stop", {"type": "content_block_stop", "index": block}
                    block, kind, blocks = blocks, f"call {piece['index']}", blocks + 1
                    yield "content_block_start", {"type": "content_block_start", "index": block, "content_block": {
                        "type": "tool_use", "id": piece.get("id"), "name": piece["function"].get("name"),
                        "input": {}}}
                if piece["function"].get("arguments"):
                    yield "content_block_delta", {"type": "content_block_delta", "index": block, "delta": {
                        "type": "input_json_delta", "partial_json": piece["function"]["arguments"]}}
            if choice.get("finish_reason"):
                reason = STOP_REASONS.get(choice["finish_reason"], "end_turn")
    if block is not None:
        yield "content_block_stop", {"type": "content_block_stop", "index": block}
    yield "message_delta", {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": None},
                            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens}}
    yield "message_stop", {"type": "message_stop"}
