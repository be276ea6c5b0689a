"""Request and response schemas of the OpenAI-compatible API, in one place.

Requests turn into the engine's inputs with `to_input()` (as vLLM's `to_sampling_params()`); the engine's
validator (engine/validation.py) then decides whether a model can serve them.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from moltbot.engine.backend import ChatInput, CompletionInput, EmbeddingInput
from moltbot.engine.validation import MAX_CHOICES, MAX_STOP_SEQUENCES, MAX_TEMPERATURE, SamplingRequest

# Our extensions: never forwarded to a service model's upstream (a strict upstream refuses unknown fields).
EXTENSIONS = {"ignore_eos", "max_tool_rounds"}


class _Request(BaseModel):
    # Unknown fields are accepted and ignored (as vLLM does), so that newer clients keep working.
    model_config = ConfigDict(extra="allow", strict=False)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class FunctionCall(BaseModel):
    name: str
    arguments: str


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _content_present(self) -> ChatMessage:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message needs content")
        return self

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


class FunctionDef(BaseModel):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolDef(BaseModel):
    type: Literal["function"]
    function: FunctionDef


class _SamplingRequest(_Request):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0, le=MAX_TEMPERATURE)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logprobs: bool | int | None = None
    user: str | None = None
    ignore_eos: bool = False  # extension (as vLLM): generate max_tokens whatever the model says

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list):
            if len(value) > MAX_STOP_SEQUENCES:
                raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
            if any(not isinstance(s, str) or not s for s in value):
                raise ValueError("stop sequences must be non-empty strings")
        if value == "":
            raise ValueError("a stop sequence must not be empty")
        return value

    def to_sampling(self, max_tokens: int | None) -> SamplingRequest:
        """The generation options for the engine; `max_tokens` as the endpoint reads it (chat, completions)."""
        stop = () if self.stop is None else (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        return SamplingRequest(max_tokens=max_tokens, temperature=self.temperature, top_p=self.top_p, n=self.n,
                               stop=stop, seed=self.seed, ignore_eos=self.ignore_eos, logprobs=self.logprobs,
                               presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty)

    def openai_body(self) -> dict[str, Any]:
        """What the client sent, less our model name and our extensions: what a service model's upstream gets."""
        return self.model_dump(exclude_unset=True, exclude={"model", *EXTENSIONS})


class ChatCompletionRequest(_SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, gt=0)
    tools: list[ToolDef] | None = None
    tool_choice: Any = None
    max_tool_rounds: int = Field(default=4, ge=1, le=16)  # extension: bound on plugin tool-call rounds

    def to_input(self) -> ChatInput:
        messages = [{**m.model_dump(exclude_none=True), "content": m.text()} for m in self.messages]
        # The tools as the chat template expects them (as transformers passes them).
        tools = [tool.model_dump(exclude_none=True) for tool in self.tools] if self.tools else None
        return ChatInput(messages, self.to_sampling(self.max_completion_tokens or self.max_tokens), tools=tools,
                         stream=self.stream, openai_body=self.openai_body())


class CompletionRequest(_SamplingRequest):
    prompt: str | list[str]
    echo: bool = False
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("prompt must not be an empty list")
        return value

    def to_input(self) -> CompletionInput:
        sampling = self.to_sampling(self.max_tokens or 16)  # 16: OpenAI's default for completions
        sampling = replace(sampling, echo=self.echo, suffix=self.suffix)
        prompts = [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)
        return CompletionInput(prompts, sampling, stream=self.stream, openai_body=self.openai_body())


class EmbeddingRequest(_Request):
    model: str = Field(min_length=1)
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, gt=0)
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _input(cls, value: str | list[str]) -> str | list[str]:
        items = [value] if isinstance(value, str) else value
        if not items:
            raise ValueError("input must not be an empty list")
        if len(items) > 2048:
            raise ValueError("at most 2048 inputs per request")
        if any(item == "" for item in items):
            raise ValueError("input strings must not be empty")
        return value

    def to_input(self) -> EmbeddingInput:
        texts = [self.input] if isinstance(self.input, str) else list(self.input)
        return EmbeddingInput(texts, self.dimensions,
                              openai_body=self.model_dump(exclude_unset=True, exclude={"model"}))


# ---- responses ---------------------------------------------------------------------------------------

def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "moltbot"
    task: str
    type: str  # the older single word for source and backend: local, remote or service
    source: str | None = None  # where its files come from: local, remote (none for a service model)
    backend: str  # what serves it: onnxruntime, service
    provider: str
    context_length: int | None = None
    graph: str | None = None  # local chat models: the graph family (genai: builder graph; optimum: Optimum export)
    precision: str | None = None  # local chat models: fp32, fp16, int8 or int4
    description: str = ""


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
