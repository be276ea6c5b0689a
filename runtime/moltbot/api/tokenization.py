"""`/tokenize` and `/detokenize` (as vLLM serves them), and Anthropic's `count_tokens`: a model's own tokenizer,
with or without its chat template, so that clients can count tokens against the model's context before sending.

A prompt is counted as the backend would count it: chat messages rendered by the model's template and encoded
without special tokens (the template writes them), a plain prompt encoded with them.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from moltbot.api.errors import APIError
from moltbot.api.protocol import ChatCompletionRequest, ChatMessage, Int, ToolDef
from moltbot.engine.backend import ModelBackend
from moltbot.engine.errors import InvalidRequest
from moltbot.engine.tokenizer import TemplateError, TextTokenizer


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class TokenizeRequest(_Strict):
    """Exactly one of `prompt` and `messages`."""

    model: str = Field(min_length=1)
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    tools: list[ToolDef] | None = None
    add_generation_prompt: bool = True  # messages: end with the template's opening of the assistant's turn
    add_special_tokens: bool | None = None  # prompt: default true; messages: default false (the template has them)
    return_token_strs: bool = False


class DetokenizeRequest(_Strict):
    model: str = Field(min_length=1)
    tokens: list[Int] = Field(max_length=1_000_000)


@runtime_checkable
class _LocalChat(Protocol):
    """A local decoder: its tokenizer and its limits are here (a service model's are upstream's)."""

    tokenizer: TextTokenizer


def _tokenizer(backend: ModelBackend) -> TextTokenizer:
    if not isinstance(backend, _LocalChat):
        info = backend.describe()
        raise APIError(400, f"The model '{info.name}' has no tokenizer here (a {info.task} model served by "
                            f"{info.backend}): tokenize with a local chat model", param="model",
                       code="no_tokenizer")
    return backend.tokenizer


async def tokenize(backend: ModelBackend, req: TokenizeRequest) -> dict[str, Any]:
    if (req.prompt is None) == (req.messages is None):
        raise APIError(400, "send exactly one of prompt and messages", param="prompt")
    tokenizer = _tokenizer(backend)
    if req.messages is not None:
        ids = await asyncio.to_thread(chat_prompt_ids, tokenizer, ChatCompletionRequest.model_validate(
            {"model": req.model, "messages": req.messages, "tools": req.tools}),
            add_generation_prompt=req.add_generation_prompt, add_special_tokens=bool(req.add_special_tokens))
    else:
        if req.tools is not None:
            raise APIError(400, "tools: only with messages", param="tools")
        special = True if req.add_special_tokens is None else req.add_special_tokens
        ids = await asyncio.to_thread(tokenizer.encode, req.prompt or "", special)
    body: dict[str, Any] = {"count": len(ids), "max_model_len": backend.describe().context_length, "tokens": ids}
    if req.return_token_strs:
        body["token_strs"] = [tokenizer.token_bytes(i).decode("utf-8", errors="replace") for i in ids]
    return body


def chat_prompt_ids(tokenizer: TextTokenizer, chat: ChatCompletionRequest, *, add_generation_prompt: bool = True,
                    add_special_tokens: bool = False) -> list[int]:
    """A chat request's prompt tokens, as the decoder backend renders and encodes them."""
    request = chat.to_input()
    try:
        prompt = tokenizer.render_chat(request.messages, add_generation_prompt=add_generation_prompt,
                                       tools=request.tools)
    except TemplateError as exc:
        raise InvalidRequest(str(exc), param="messages") from None
    return tokenizer.encode(prompt, add_special_tokens=add_special_tokens)


async def count_chat_tokens(backend: ModelBackend, chat: ChatCompletionRequest) -> int:
    return len(await asyncio.to_thread(chat_prompt_ids, _tokenizer(backend), chat))


async def detokenize(backend: ModelBackend, req: DetokenizeRequest) -> dict[str, Any]:
    tokenizer = _tokenizer(backend)
    outside = next((t for t in req.tokens if not 0 <= t < tokenizer.vocab_size), None)
    if outside is not None:
        raise APIError(400, f"tokens: {outside} is not a token id of this model (0 to {tokenizer.vocab_size - 1})",
                       param="tokens")
    return {"prompt": await asyncio.to_thread(tokenizer.decode, list(req.tokens))}
