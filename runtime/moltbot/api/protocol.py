"""Request and response schemas of the OpenAI-compatible API, in one place.

Requests turn into the engine's inputs with `to_input()` (as vLLM's `to_sampling_params()`); the engine's
validator (engine/validation.py) then decides whether a model can serve them.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import Annotated, Any, Literal, cast

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from moltbot.engine.backend import ChatInput, CompletionInput, EmbeddingInput
from moltbot.engine.logprobs import MAX_TOP_LOGPROBS
from moltbot.engine.validation import (
    MAX_BIAS,
    MAX_CHOICES,
    MAX_LOGIT_BIAS,
    MAX_LOGPROBS,
    MAX_PENALTY,
    MAX_REPETITION_PENALTY,
    MAX_STOP_SEQUENCES,
    MAX_TEMPERATURE,
    NamedTool,
    SamplingRequest,
    ToolChoice,
)

# Our extensions: never forwarded to a service model's upstream (a strict upstream refuses unknown fields).
EXTENSIONS = {"ignore_eos", "max_tool_rounds", "allow_admin_tool_calls", "structured_outputs"}


def _integral(value: Any) -> Any:
    """JSON Schema's integers include 2.0: an integral float is taken as the integer it is (strict otherwise)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# Integer fields: their constraints first (so that the schema says them), then _integral.
Int = Annotated[int, BeforeValidator(_integral)]
PositiveInt = Annotated[int, Field(gt=0), BeforeValidator(_integral)]
ChoiceCount = Annotated[int, Field(ge=1, le=MAX_CHOICES), BeforeValidator(_integral)]
Seed = Annotated[int, Field(ge=-(2**63), le=2**63 - 1), BeforeValidator(_integral)]
ToolRounds = Annotated[int, Field(ge=1, le=16), BeforeValidator(_integral)]
TopK = Annotated[int, Field(ge=-1), BeforeValidator(_integral)]
TopLogprobs = Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS), BeforeValidator(_integral)]
CompletionLogprobs = Annotated[int, Field(ge=0, le=MAX_LOGPROBS), BeforeValidator(_integral)]
Penalty = Annotated[float, Field(ge=-MAX_PENALTY, le=MAX_PENALTY)]
# logit_bias: token ids as JSON keys (decimal, one spelling each) to a bias; the engine checks them against the
# model's vocabulary.
TokenIdKey = Annotated[str, Field(pattern=r"^(0|[1-9][0-9]*)$")]
LogitBias = Annotated[dict[TokenIdKey, Annotated[float, Field(ge=-MAX_BIAS, le=MAX_BIAS)]],
                      Field(max_length=MAX_LOGIT_BIAS)]
# OpenAI's metadata: at most 16 pairs, keys up to 64 characters, values up to 512.
Metadata = Annotated[dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]],
                     Field(max_length=16)]


class _Strict(BaseModel):
    # Types are strict, as OpenAI's: "yes" is not a boolean, "1" is not a number.
    model_config = ConfigDict(strict=True)


class _Request(_Strict):
    # Unknown fields pass the schema and reach the engine by name (`unknown_fields`): a local model refuses them,
    # naming the field, rather than ignoring them; a service model's upstream gets only the fields it forwards.
    model_config = ConfigDict(extra="allow", strict=True)

    def unknown_fields(self) -> tuple[str, ...]:
        return tuple(self.model_extra or ())


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class FunctionCall(_Strict):
    name: str
    arguments: str


class ToolCall(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


_UNSUPPORTED_PARTS = {"image_url": "image", "input_audio": "audio", "file": "file"}


def _content_parts(value: Any) -> Any:
    """A message's content: a string, or a list of text parts; other parts are refused by what they are."""
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise ValueError("content should be a string or a list of content parts")
    for part in value:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _UNSUPPORTED_PARTS:
            raise ValueError(f"{_UNSUPPORTED_PARTS[kind]} input is not supported by this model: send text")
        if kind != "text" or not isinstance(part.get("text"), str):
            raise ValueError("each content part should be {\"type\": \"text\", \"text\": <a string>}")
    return value


# What the schema says of content, as the validator below has it: required, except on an assistant message that
# makes tool calls.
_CONTENT_RULE: dict[str, Any] = {"anyOf": [
    {"required": ["content"], "properties": {"content": {"not": {"type": "null"}}}},
    {"required": ["role", "tool_calls"], "properties": {"role": {"const": "assistant"},
                                                         "tool_calls": {"type": "array", "minItems": 1}}}]}


class ChatMessage(_Strict):
    model_config = ConfigDict(extra="allow", strict=True, json_schema_extra=_CONTENT_RULE)
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _parts(cls, value: Any) -> Any:
        return _content_parts(value)

    @model_validator(mode="after")
    def _content_present(self) -> ChatMessage:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):  # as _CONTENT_RULE
            article = "an" if self.role[0] in "aeiou" else "a"
            raise ValueError(f"{article} {self.role} message needs content")
        return self

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(_Strict):
    include_usage: bool = False


class FunctionDef(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolDef(_Strict):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Strict):
    name: str


class TextFormat(_Strict):
    type: Literal["text"]


class JsonObjectFormat(_Strict):
    type: Literal["json_object"]


class JsonSchema(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class JsonSchemaFormat(_Strict):
    type: Literal["json_schema"]
    json_schema: JsonSchema


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]


class StructuredOutputs(_Strict):
    """Extension (vLLM's structured_outputs): the output follows exactly one of a JSON schema, a regex or a Lark
    grammar (llguidance's Lark dialect)."""

    # Exactly one field, not null (the schema says so: one property, none nullable).
    model_config = ConfigDict(strict=True, extra="forbid", json_schema_extra=lambda schema: _exactly_one(schema))

    json_: dict[str, Any] | None = Field(default=None, alias="json")
    regex: Annotated[str, Field(min_length=1)] | None = None
    grammar: Annotated[str, Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _one(self) -> StructuredOutputs:
        given = self.model_fields_set
        if len(given) != 1 or getattr(self, next(iter(given))) is None:
            raise ValueError("structured_outputs takes exactly one of json, regex or grammar")
        return self


def _exactly_one(schema: dict[str, Any]) -> None:
    """StructuredOutputs' schema: one property, its value not null."""
    for prop in schema["properties"].values():
        prop.pop("default", None)
        prop["anyOf"] = [option for option in prop["anyOf"] if option != {"type": "null"}]
    schema.update(minProperties=1, maxProperties=1)


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


def _token_input(field: str) -> Any:
    """A before-validator of `prompt` / `input`: a string, a list of strings, token ids, or lists of token ids."""

    def check(cls: Any, value: Any) -> Any:
        wrong = ValueError(f"{field} should be a string, a list of strings, or token ids")
        if isinstance(value, str):
            if not value:
                raise ValueError(f"{field} must not be an empty string")
            return value
        if not isinstance(value, list):
            raise wrong
        if not value:
            raise ValueError(f"{field} must not be an empty list")
        if all(_is_token(item) for item in value):  # one input's token ids (as long as the context allows)
            return [_integral(t) for t in value]
        if len(value) > MAX_INPUTS:
            raise ValueError(f"at most {MAX_INPUTS} inputs per request")
        if all(isinstance(item, str) for item in value):
            if not all(value):
                raise ValueError(f"{field} strings must not be empty")
            return value
        if all(isinstance(item, list) and all(_is_token(t) for t in item) for item in value):
            if any(not item for item in value):
                raise ValueError(f"{field}: a list of token ids must not be empty")
            return [[_integral(t) for t in item] for item in value]
        raise wrong

    return field_validator(field, mode="before")(check)


def _is_token(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, float) and value.is_integer())


MAX_INPUTS = 2048
NonEmpty = Annotated[str, Field(min_length=1)]
TokenIds = Annotated[list[Int], Field(min_length=1)]
PromptInput = NonEmpty | Annotated[list[NonEmpty], Field(min_length=1, max_length=MAX_INPUTS)] | TokenIds | \
    Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_INPUTS)]


def prompts_of(value: str | list[str] | list[int] | list[list[int]]) -> list[str] | list[list[int]]:
    """The inputs one by one: a string, token ids (one input), or a list of either."""
    if isinstance(value, str):
        return [value]
    if all(_is_token(t) for t in value):
        return [cast(list[int], value)]  # one input of token ids
    return cast(list[str] | list[list[int]], value)


class _SamplingRequest(_Request):
    model: str = Field(min_length=1)
    max_tokens: PositiveInt | None = None
    temperature: float | None = Field(default=None, ge=0, le=MAX_TEMPERATURE)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: ChoiceCount = 1
    stop: NonEmpty | Annotated[list[NonEmpty], Field(max_length=MAX_STOP_SEQUENCES)] | None = None
    seed: Seed | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: LogitBias | None = None
    user: str | None = None  # metadata: taken, changes nothing
    ignore_eos: bool = False  # extension (as vLLM): generate max_tokens whatever the model says
    # Extensions (as vLLM names them), forwarded to a service model's upstream like OpenAI's own fields.
    top_k: TopK | None = None  # 0 or -1: off
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0, le=MAX_REPETITION_PENALTY)
    structured_outputs: StructuredOutputs | None = None  # extension (as vLLM): never forwarded upstream

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
                               stop=stop, seed=self.seed, ignore_eos=self.ignore_eos,
                               presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
                               logit_bias=self.logit_bias, top_k=self.top_k, min_p=self.min_p,
                               repetition_penalty=self.repetition_penalty, unknown_fields=self.unknown_fields(),
                               structured_outputs=self.structured_outputs.model_dump(exclude_none=True, by_alias=True)
                               if self.structured_outputs else None)

    def openai_body(self) -> dict[str, Any]:
        """What the client sent, less our model name and our extensions: what a service model's upstream gets."""
        return self.model_dump(exclude_unset=True, exclude={"model", *EXTENSIONS}, by_alias=True)


class ChatCompletionRequest(_SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool | None = None  # a boolean in chat (a number of tokens in completions)
    top_logprobs: TopLogprobs | None = None
    max_completion_tokens: PositiveInt | None = None
    response_format: ResponseFormat | None = None
    tools: list[ToolDef] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # Metadata: taken, change nothing. store: a local model keeps no completions (true is refused there); a service
    # model's upstream never gets it (it would store on the operator's account).
    metadata: Metadata | None = None
    store: bool | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    max_tool_rounds: ToolRounds = 4  # extension: bound on plugin tool-call rounds
    # Extension: let the model's tool calls run plugin calls that config.json marks "admin" (they change server
    # state); off, such a call is answered with an error for the model, so that a document cannot make it happen.
    allow_admin_tool_calls: bool = False

    def choice_of_tool(self) -> ToolChoice:
        """tool_choice as the engine reads it (checked against the tools in engine/validation.py)."""
        choice = self.tool_choice
        return NamedTool(choice.function.name) if isinstance(choice, NamedToolChoice) else choice

    def to_input(self) -> ChatInput:
        messages = [{**m.model_dump(exclude_none=True), "content": m.text()} for m in self.messages]
        # The tools as the chat template expects them (as transformers passes them).
        tools = [tool.model_dump(exclude_none=True) for tool in self.tools] if self.tools else None
        sampling = replace(self.to_sampling(self.max_completion_tokens or self.max_tokens), logprobs=self.logprobs,
                           top_logprobs=self.top_logprobs, store=bool(self.store),
                           response_format=self.response_format.model_dump(exclude_none=True, by_alias=True)
                           if self.response_format else None)
        return ChatInput(messages, sampling, tools=tools, stream=self.stream, openai_body=self.openai_body(),
                         tool_choice=self.choice_of_tool(), parallel_tool_calls=self.parallel_tool_calls is not False)


class CompletionRequest(_SamplingRequest):
    prompt: PromptInput
    logprobs: CompletionLogprobs | None = None  # alternatives per token (chat: a boolean and top_logprobs)
    echo: bool = False
    suffix: str | None = None

    _prompt = _token_input("prompt")

    def to_input(self) -> CompletionInput:
        sampling = self.to_sampling(self.max_tokens or 16)  # 16: OpenAI's default for completions
        sampling = replace(sampling, logprobs=self.logprobs, echo=self.echo, suffix=self.suffix)
        return CompletionInput(prompts_of(self.prompt), sampling, stream=self.stream,
                               openai_body=self.openai_body())


class EmbeddingRequest(_Request):
    model: str = Field(min_length=1)
    input: PromptInput
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: PositiveInt | None = None
    user: str | None = None

    _input = _token_input("input")

    def to_input(self) -> EmbeddingInput:
        return EmbeddingInput(prompts_of(self.input), self.dimensions,
                              openai_body=self.model_dump(exclude_unset=True, exclude={"model"}),
                              unknown_fields=self.unknown_fields())


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
