"""The one interface between the serving layers and a model, whatever runs it (in the way of vLLM's EngineClient).

A ModelBackend describes itself, and chats, completes or embeds. `chat` and `complete` do every check and start
the work before they return, so that refusals (InvalidRequest, QueueFull, ...) come before any output; they
return a Generation: typed events (ChoiceDelta for each choice's new text, then one Usage), whichever backend
made them. Knows nothing of HTTP; engine/backends/ holds one implementation per kind of model.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from moltbot.engine.config import ModelConfig
from moltbot.engine.errors import InvalidRequest
from moltbot.engine.tool_calls import ToolCall, ToolCallDelta
from moltbot.engine.validation import SamplingRequest, ToolChoice


@dataclass(frozen=True)
class ModelInfo:
    """What a backend says about itself (the /v1/models card and the moltbot_model_info metric)."""

    name: str
    task: str  # chat | embeddings
    backend: str  # what serves it: onnxruntime | service
    source: str | None  # where its files come from: local | remote; None: it has none
    provider: str  # the ONNX Runtime execution provider, or "remote-api"
    context_length: int | None = None
    graph: str | None = None  # local decoders: the graph family (genai | optimum)
    precision: str | None = None  # local decoders: the weights' precision (fp32, fp16, int8, int4)
    description: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def type(self) -> str:
        """The older single word for source and backend: local, remote or service."""
        return self.source or self.backend

    @classmethod
    def of(cls, config: ModelConfig, provider: str, context_length: int | None = None, graph: str | None = None,
           precision: str | None = None) -> ModelInfo:
        return cls(name=config.name, task=config.task, backend=config.backend, source=config.source,
                   provider=provider, context_length=context_length, graph=graph, precision=precision,
                   description=config.description)


# ---- requests ---------------------------------------------------------------------------------------------------
# `openai_body` is the request in OpenAI's wire format, less the model and our extensions: what a backend that
# forwards to an OpenAI-compatible API sends as it came. Local backends ignore it.

@dataclass(frozen=True)
class ChatInput:
    messages: list[dict[str, Any]]  # OpenAI chat messages, content as plain text
    sampling: SamplingRequest
    tools: list[dict[str, Any]] | None = None  # as the chat template expects them
    stream: bool = False  # the client reads the output as it comes
    openai_body: Mapping[str, Any] = field(default_factory=dict)
    tool_choice: ToolChoice = None  # none | auto | required | a NamedTool; None: not sent (auto with tools)
    parallel_tool_calls: bool = True  # false: at most one tool call


# Prompts as a client may send them: texts, or token ids of the model's own tokenizer (one list per prompt).
Prompts = list[str] | list[list[int]]


@dataclass(frozen=True)
class CompletionInput:
    prompts: Prompts
    sampling: SamplingRequest
    stream: bool = False
    openai_body: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EmbeddingInput:
    texts: Prompts
    dimensions: int | None = None
    openai_body: Mapping[str, Any] = field(default_factory=dict)
    # An input beyond the model's context: cut to fit (True), refused (False), or as the embedding_truncate
    # setting says (None: the API's requests; plugins cut, as sentence-transformers does).
    truncate: bool | None = None
    unknown_fields: tuple[str, ...] = ()  # request fields the API does not know (a local model refuses them)


# ---- events -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TopLogprob:
    """One of the most likely tokens at a position, as OpenAI names them: its text, log probability, UTF-8 bytes."""

    token: str
    logprob: float | None  # None only where an upstream gave none (the first token of an echoed prompt)
    bytes: tuple[int, ...] | None = None  # None where the backend does not know them

    def as_openai(self) -> dict[str, Any]:
        return {"token": self.token, "logprob": self.logprob,
                "bytes": None if self.bytes is None else list(self.bytes)}


@dataclass(frozen=True)
class TokenLogprob(TopLogprob):
    """A generated token's log probability, with the most likely tokens at its position (most likely first)."""

    top: tuple[TopLogprob, ...] = ()
    offset: int | None = None  # where its text starts in the choice's text (None where the backend does not know)

    def as_openai(self) -> dict[str, Any]:
        """As a chat completion's `logprobs.content` has it."""
        return {**super().as_openai(), "top_logprobs": [top.as_openai() for top in self.top]}


@dataclass(frozen=True)
class ChoiceDelta:
    """New output of one choice; its last one has the finish reason (stop, length, tool_calls, cancelled)."""

    index: int
    text: str = ""
    tokens: int = 0  # generated tokens this delta accounts for (0 where the backend does not count them)
    tool_calls: tuple[ToolCallDelta, ...] = ()
    finish_reason: str | None = None
    logprobs: tuple[TokenLogprob, ...] = ()  # of the tokens whose text this delta carries (where asked for)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


Event = ChoiceDelta | Usage


class Generation:
    """A started chat or completion: its events, until every choice finished (then a Usage where the backend knows
    it). Closing it, even before its first event, frees the model's work."""

    def __init__(self, events: AsyncGenerator[Event, None], *, prompt_tokens: int = 0, prompt: str | None = None,
                 release: Callable[[], Awaitable[None]] | None = None):
        self._events = events
        self._release = release
        self.prompt_tokens = prompt_tokens  # known before the first event (0 where only the Usage tells)
        self.prompt = prompt  # the prompt as the model reads it (chat template applied), for the prompt log

    def __aiter__(self) -> Generation:
        return self

    async def __anext__(self) -> Event:
        return await anext(self._events)

    async def aclose(self) -> None:
        await self._events.aclose()
        if self._release is not None:
            await self._release()


@dataclass(frozen=True)
class Embeddings:
    vectors: npt.NDArray[np.floating[Any]]  # [inputs, dimensions], L2-normalised by local models
    prompt_tokens: int


class ModelBackend(Protocol):
    """One served model. Implementations: engine/backends/ (one file each)."""

    def describe(self) -> ModelInfo: ...

    async def chat(self, request: ChatInput) -> Generation: ...

    async def complete(self, request: CompletionInput) -> Generation: ...

    async def embed(self, request: EmbeddingInput) -> Embeddings: ...

    async def close(self) -> None: ...


def wrong_task(info: ModelInfo, task: str) -> InvalidRequest:
    """The refusal of a request for a task the model does not serve (a chat request to an embedding model...)."""
    return InvalidRequest(f"The model '{info.name}' serves {info.task}, not {task}", param="model",
                          code="wrong_model_task")


# ---- collecting a whole generation ------------------------------------------------------------------------------

@dataclass
class Choice:
    """One choice of a finished generation."""

    text: str = ""
    finish_reason: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class Completed:
    choices: list[Choice]  # by index
    usage: Usage | None  # None where the backend did not report it


async def collect(events: AsyncIterator[Event]) -> Completed:
    """A generation run to its end: each choice's text, log probabilities, finish reason and tool calls (pieces
    joined)."""
    choices: dict[int, Choice] = {}
    calls: dict[tuple[int, int], ToolCall] = {}
    usage = None
    async for event in events:
        if isinstance(event, Usage):
            usage = event
            continue
        choice = choices.setdefault(event.index, Choice())
        choice.text += event.text
        choice.logprobs += event.logprobs
        choice.finish_reason = event.finish_reason or choice.finish_reason
        for piece in event.tool_calls:
            call = calls.get((event.index, piece.index))
            if call is None:
                call = calls[(event.index, piece.index)] = ToolCall(piece.id or "", piece.name or "", "")
                choice.tool_calls.append(call)
            call.arguments += piece.arguments
    return Completed([choices[i] for i in sorted(choices)], usage)
