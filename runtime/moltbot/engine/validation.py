"""The one request validator (in the way of TGI's `validate()`): a request's generation options and tokenised
prompts become a ValidatedRequest for the scheduler, or an InvalidRequest naming the field at fault.

Every path to a model comes here: the HTTP API (through api/protocol.py's `to_sampling`) and the plugins'
`context.models` (through the registry). Adding a sampling parameter touches the protocol schema and the engine:
SamplingRequest, the checks below, SamplingParams and the sampler.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from moltbot.engine.errors import InvalidRequest
from moltbot.engine.grammar import GrammarCompiler, grammar_source
from moltbot.engine.logprobs import MAX_TOP_LOGPROBS
from moltbot.engine.sampling import SamplingParams

# Bounds of OpenAI's API; the protocol schema declares the same ones for the wire (and the OpenAPI document).
MAX_TEMPERATURE = 2.0
MAX_CHOICES = 16
MAX_STOP_SEQUENCES = 4
MAX_PENALTY = 2.0  # presence_penalty and frequency_penalty: from -2 to 2
MAX_LOGIT_BIAS = 300  # entries of logit_bias
MAX_BIAS = 100.0  # a bias: from -100 to 100
MAX_LOGPROBS = 5  # completions' logprobs: alternatives per token (chat's top_logprobs: MAX_TOP_LOGPROBS)
# Bounds of the extensions (as vLLM takes them).
MAX_REPETITION_PENALTY = 2.0  # more than 0, at most 2


@dataclass(frozen=True)
class SamplingRequest:
    """Generation options as a client sent them (OpenAI's names; None: not sent), before any model is involved."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False  # extension (as vLLM): generate max_tokens whatever the model says
    logprobs: bool | int | None = None  # chat: true or false; completions: alternatives per token (0 to 5)
    top_logprobs: int | None = None  # chat: alternatives per token, with logprobs true (0 to 20)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: Mapping[str, float] | None = None  # token id (decimal digits, as JSON keys are) to a bias
    top_k: int | None = None  # extension (as vLLM): 0 or -1 is off
    min_p: float | None = None  # extension (as vLLM)
    repetition_penalty: float | None = None  # extension (as vLLM, HF's definition)
    # OpenAI's shape: {"type": "text" | "json_object" | "json_schema", "json_schema": {"name", "schema", "strict"}}
    response_format: Mapping[str, Any] | None = None
    # Extension (as vLLM names it): exactly one of {"json": a JSON schema, "regex": ..., "grammar": Lark}
    structured_outputs: Mapping[str, Any] | None = None
    echo: bool = False  # completions only
    suffix: str | None = None  # completions only
    store: bool = False  # chat: keep the completion (a local model keeps none)
    # Request fields the API does not know: a local model refuses them (naming the first), never ignores them; a
    # service model's upstream gets only the fields it forwards.
    unknown_fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class NamedTool:
    """tool_choice naming one function."""

    name: str


# tool_choice as the engine reads it: "none", "auto", "required", a NamedTool, or None (not sent).
ToolChoice = str | NamedTool | None


@dataclass(frozen=True)
class ModelLimits:
    """What a local model can take: the validator's view of it."""

    model: str
    context_length: int
    capacity: int  # sequences at once: running batch plus queue
    default_temperature: float
    vocab_size: int = 0  # token ids a client may send are below it (0: not checked)
    grammars: GrammarCompiler | None = field(default=None, compare=False)  # constrained decoding, where it can


@dataclass(frozen=True)
class ValidatedRequest:
    """Tokenised prompts and the sampling parameters of each of their `n` sequences, checked against the model."""

    prompts: list[list[int]]
    params: SamplingParams
    n: int

    @property
    def sequences(self) -> int:
        return len(self.prompts) * self.n

    @property
    def prompt_tokens(self) -> int:
        """Prompt tokens over all sequences (each of the n choices counts its prompt), as usage reports them."""
        return sum(len(p) for p in self.prompts) * self.n


def check_sampling(sampling: SamplingRequest) -> None:
    """The rules every backend applies. The HTTP schema checks the same bounds; a plugin's call has none in front."""
    if sampling.max_tokens is not None and sampling.max_tokens < 1:
        raise InvalidRequest("max_tokens must be at least 1", param="max_tokens")
    if sampling.temperature is not None and not 0 <= sampling.temperature <= MAX_TEMPERATURE:
        raise InvalidRequest(f"temperature must be from 0 to {MAX_TEMPERATURE:g}", param="temperature")
    if sampling.top_p is not None and not 0 < sampling.top_p <= 1:
        raise InvalidRequest("top_p must be more than 0 and at most 1", param="top_p")
    if not 1 <= sampling.n <= MAX_CHOICES:
        raise InvalidRequest(f"n must be from 1 to {MAX_CHOICES}", param="n")
    if len(sampling.stop) > MAX_STOP_SEQUENCES or not all(sampling.stop):
        raise InvalidRequest(f"at most {MAX_STOP_SEQUENCES} stop sequences, none empty", param="stop")
    _check_logprobs(sampling)
    for penalty in ("presence_penalty", "frequency_penalty"):
        value = getattr(sampling, penalty)
        if value is not None and not -MAX_PENALTY <= value <= MAX_PENALTY:
            raise InvalidRequest(f"{penalty} must be from {-MAX_PENALTY:g} to {MAX_PENALTY:g}", param=penalty)
    if sampling.repetition_penalty is not None and not 0 < sampling.repetition_penalty <= MAX_REPETITION_PENALTY:
        raise InvalidRequest(f"repetition_penalty must be more than 0 and at most {MAX_REPETITION_PENALTY:g}",
                             param="repetition_penalty")
    if sampling.top_k is not None and sampling.top_k < -1:
        raise InvalidRequest("top_k must be a positive number of tokens, or 0 or -1 (off)", param="top_k")
    if sampling.min_p is not None and not 0 <= sampling.min_p <= 1:
        raise InvalidRequest("min_p must be from 0 to 1", param="min_p")
    _bias_ids(sampling.logit_bias)


def _check_logprobs(sampling: SamplingRequest) -> None:
    """Chat's logprobs (a boolean) with top_logprobs, or completions' (a number of alternatives)."""
    logprobs, top = sampling.logprobs, sampling.top_logprobs
    if not isinstance(logprobs, bool) and logprobs is not None and not 0 <= logprobs <= MAX_LOGPROBS:
        raise InvalidRequest(f"logprobs must be from 0 to {MAX_LOGPROBS}", param="logprobs")
    if top is not None:
        if not 0 <= top <= MAX_TOP_LOGPROBS:
            raise InvalidRequest(f"top_logprobs must be from 0 to {MAX_TOP_LOGPROBS}", param="top_logprobs")
        if logprobs is not True:
            raise InvalidRequest("top_logprobs needs logprobs: true", param="top_logprobs")


def _bias_ids(bias: Mapping[str, float] | None) -> dict[int, float]:
    """logit_bias by token id, checked: at most MAX_LOGIT_BIAS entries, keys token ids as decimal digits (one
    spelling each: no sign, no leading zeros), biases within MAX_BIAS."""
    if not bias:
        return {}
    if len(bias) > MAX_LOGIT_BIAS:
        raise InvalidRequest(f"logit_bias takes at most {MAX_LOGIT_BIAS} tokens", param="logit_bias")
    ids = {}
    for key, value in bias.items():
        if not (isinstance(key, str) and key.isascii() and key.isdecimal() and str(int(key)) == key):
            raise InvalidRequest(f"logit_bias keys are token ids written as decimal integers, not {key!r}",
                                 param="logit_bias")
        if not -MAX_BIAS <= value <= MAX_BIAS:
            raise InvalidRequest(f"a logit_bias value must be from {-MAX_BIAS:g} to {MAX_BIAS:g}", param="logit_bias")
        ids[int(key)] = float(value)
    return ids


def validate(sampling: SamplingRequest, prompts: list[list[int]], limits: ModelLimits) -> ValidatedRequest:
    """A request for a local model: check_sampling, what the local sampler does not do, the prompts against the
    context (a completion that would not fit is refused, never cut short), and the defaults: the model's
    temperature, and the rest of the context as max_tokens."""
    check_known_fields(sampling.unknown_fields)
    check_sampling(sampling)
    grammar = grammar_source(sampling.response_format, sampling.structured_outputs)
    if sampling.echo or sampling.suffix:
        raise InvalidRequest("echo and suffix are not supported by this server",
                             param="echo" if sampling.echo else "suffix")
    if sampling.store:
        raise InvalidRequest("store: this server keeps no completions: send false or leave it out", param="store",
                             code="invalid_value")
    if not prompts or any(not ids for ids in prompts):
        raise InvalidRequest("the prompt is empty after tokenisation", param="prompt")
    check_token_ids(prompts, limits, "prompt")
    bias = _bias_ids(sampling.logit_bias)
    check_token_ids([list(bias)], limits, "logit_bias")
    context = limits.context_length
    longest = max(len(ids) for ids in prompts)
    if longest >= context:
        raise InvalidRequest(f"This model's maximum context length is {context} tokens; the prompt has {longest} "
                             "tokens", param="messages", code="context_length_exceeded")
    max_tokens = sampling.max_tokens
    if max_tokens is None:
        max_tokens = context - longest
    elif longest + max_tokens > context:
        raise InvalidRequest(f"This model's maximum context length is {context} tokens. However, you requested "
                             f"{longest + max_tokens} tokens ({longest} in the prompt, {max_tokens} for the "
                             "completion). Please reduce max_tokens.", param="max_tokens",
                             code="context_length_exceeded")
    sequences = len(prompts) * sampling.n
    if sequences > limits.capacity:
        raise InvalidRequest(f"This request needs {sequences} sequences (prompts x n); the model '{limits.model}' "
                             f"takes at most {limits.capacity} at once", param="n", code="too_many_sequences")
    compiled = None
    if grammar is not None:
        source, param = grammar
        if limits.grammars is None:
            raise InvalidRequest(f"The model '{limits.model}' cannot constrain its output", param=param,
                                 code="unsupported_parameter")
        compiled = limits.grammars.compile(source, param)
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=limits.default_temperature if sampling.temperature is None else sampling.temperature,
        top_p=1.0 if sampling.top_p is None else sampling.top_p,
        stop=sampling.stop, seed=sampling.seed, ignore_eos=sampling.ignore_eos,
        top_k=max(sampling.top_k or 0, 0), min_p=sampling.min_p or 0.0,
        repetition_penalty=1.0 if sampling.repetition_penalty is None else sampling.repetition_penalty,
        presence_penalty=sampling.presence_penalty or 0.0, frequency_penalty=sampling.frequency_penalty or 0.0,
        logit_bias=tuple(sorted(bias.items())), logprobs=_alternatives(sampling), grammar=compiled)
    return ValidatedRequest(prompts, params, sampling.n)


def _alternatives(sampling: SamplingRequest) -> int | None:
    """How many of the most likely tokens to report with each token's log probability; None: no log
    probabilities (chat: logprobs true, with top_logprobs; completions: logprobs, a number)."""
    if isinstance(sampling.logprobs, bool):
        return (sampling.top_logprobs or 0) if sampling.logprobs else None
    return sampling.logprobs


def check_known_fields(unknown: tuple[str, ...]) -> None:
    """A local model honours every field the API knows: one it does not know is refused (in OpenAI's words),
    naming it, rather than ignored."""
    if unknown:
        raise InvalidRequest(f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0],
                             code="unknown_parameter")


def check_dimensions(requested: int | None, native: int, model: str) -> None:
    """An embedding request's `dimensions`: a local model makes its own number only (no truncation here)."""
    if requested is not None and requested != native:
        raise InvalidRequest(f"The model '{model}' makes {native}-dimensional embeddings only", param="dimensions")


def check_token_ids(prompts: list[list[int]], limits: ModelLimits, param: str) -> None:
    """Token ids a client sent (prompts, inputs, logit_bias's keys) are the model's own: each within its
    tokenizer's vocabulary."""
    if not limits.vocab_size:
        return
    for ids in prompts:
        bad = next((t for t in ids if not 0 <= t < limits.vocab_size), None)
        if bad is not None:
            otherwise = "" if param == "logit_bias" else "; send text otherwise"
            raise InvalidRequest(f"token id {bad} is not in the vocabulary of the model '{limits.model}' (ids 0 to "
                                 f"{limits.vocab_size - 1}): token ids must come from this model's own tokenizer"
                                 f"{otherwise}", param=param, code="invalid_token_ids")


def check_embedding_inputs(inputs: list[list[int]], limits: ModelLimits, truncate: bool, reserved: int = 0
                           ) -> list[list[int]]:
    """An embedding request's tokenised inputs against the model's context, of which the model's special tokens
    take `reserved`: longer ones are refused (as OpenAI does), or cut to fit when `truncate` (the
    embedding_truncate setting). A text the tokenizer takes nothing from (control characters, say) is embedded
    as the special tokens alone where the model has some (as sentence-transformers embeds it), refused otherwise."""
    if not inputs or (not reserved and any(not ids for ids in inputs)):
        raise InvalidRequest("an input is empty after tokenisation", param="input")
    room = limits.context_length - reserved
    longest = max(len(ids) for ids in inputs)
    if longest > room:
        if not truncate:
            raise InvalidRequest(f"This model's maximum context length is {limits.context_length} tokens; an input "
                                 f"has {longest + reserved} tokens. Shorten the input (or have the server cut it to "
                                 "the context: the embedding_truncate setting).", param="input",
                                 code="context_length_exceeded")
        return [ids[:room] for ids in inputs]
    return inputs


def check_tool_choice(choice: ToolChoice, tools: list[dict[str, Any]] | None) -> bool:
    """Whether the model's output is to be read for tool calls (every backend honours tool_choice and
    parallel_tool_calls: a service model's upstream, a local model with a grammar, decoder.py)."""
    names = {(tool.get("function") or {}).get("name") for tool in tools or []}
    if choice is None:
        return bool(tools)
    if not tools:
        raise InvalidRequest("tool_choice is only allowed when tools are given", param="tool_choice")
    if isinstance(choice, NamedTool):
        if choice.name not in names:
            raise InvalidRequest(f"tool_choice names the function '{choice.name}', which is not among the tools",
                                 param="tool_choice")
    elif choice not in ("none", "auto", "required"):
        raise InvalidRequest("tool_choice must be none, auto, required or a named function", param="tool_choice")
    return choice != "none"
