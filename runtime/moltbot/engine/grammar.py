"""Constrained decoding with llguidance: a request's JSON schema, Lark grammar or regex becomes a token mask for
each step of each of its sequences, so that every completion is one the grammar accepts.

One GrammarCompiler per local chat model, made at load from its tokenizer.json (llguidance's LLTokenizer, sized
to the graph's logits width). The validator compiles a request's grammar once, off the event loop and within
LLParserLimits (a schema that would take too long to compile fails with the limit's message rather than wedging
the server); each sequence then gets its own matcher (a copy), which the sampling pipeline asks for the step's
mask and tells the token it drew.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import llguidance
import numpy as np
import numpy.typing as npt

from moltbot.engine.errors import InvalidRequest

log = logging.getLogger("moltbot.engine")

# Bounds on the cost of compiling a grammar and of each step's mask (llguidance's rates: ~50k fuel per ms for the
# lexer's build, ~14k per ms for a step's): a compile of at most ~100 ms, a mask of at most ~15 ms, a grammar of at
# most 200k symbols. A grammar beyond them is refused (a 400) or, mid-generation, fails its sequence.
INITIAL_LEXER_FUEL = 5_000_000
STEP_LEXER_FUEL = 200_000
MAX_GRAMMAR_SIZE = 200_000
# JSON as models write it: ", " and ": " between items, no other whitespace. Flexible whitespace lets a small model
# emit newlines or spaces without end (a grammar-valid way never to finish).
JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _limits() -> llguidance.LLParserLimits:
    return llguidance.LLParserLimits(initial_lexer_fuel=INITIAL_LEXER_FUEL, step_lexer_fuel=STEP_LEXER_FUEL,
                                     max_grammar_size=MAX_GRAMMAR_SIZE, verbose_errors=False)


@dataclass(frozen=True)
class Grammar:
    """A compiled grammar (llguidance's JSON form) with its model's tokenizer, and a matcher at its start that each
    sequence copies."""

    text: str
    compiler: GrammarCompiler = field(compare=False, repr=False)
    _start: llguidance.LLMatcher = field(compare=False, repr=False)

    def matcher(self) -> Constraint:
        return Constraint(self._start.deep_copy(), self.compiler)


class GrammarCompiler:
    """A model's tokenizer for llguidance, `width` token ids wide (the graph's logits width)."""

    def __init__(self, tokenizer_json: str, width: int, vocab_size: int, eos_token_ids: Iterable[int]):
        if width != vocab_size:
            log.info("grammar masks are %d tokens wide (the graph's logits); the tokenizer has %d tokens: %s",
                     width, vocab_size, "ids beyond it are never allowed" if width > vocab_size else
                     "its ids beyond the logits cannot be sampled")
        self.width = width
        self.tokenizer = llguidance.LLTokenizer(tokenizer_json, n_vocab=max(width, vocab_size),
                                                eos_token=sorted(eos_token_ids))
        self.executor = llguidance.LLExecutor()

    def compile(self, grammar: str, param: str) -> Grammar:
        """A grammar from llguidance's grammar_from_* checked and compiled, or an InvalidRequest naming `param`
        with llguidance's message (the part at fault). Blocking (up to the compile limit): run off the event
        loop."""
        matcher = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0, limits=_limits())
        if matcher.is_error():
            raise InvalidRequest(f"{param} cannot be compiled to a grammar: {matcher.get_error()}", param=param,
                                 code="invalid_grammar")
        return Grammar(grammar, self, matcher)

    def fill_masks(self, constraints: list[Constraint], width: int) -> npt.NDArray[np.bool_]:
        """The allowed tokens of each constraint's next step ([rows, width]: the step's logits width; ids beyond
        the tokenizer are never allowed), computed in parallel off the GIL."""
        words = (self.tokenizer.vocab_size + 31) // 32
        bitmask = np.zeros((len(constraints), words), dtype=np.int32)
        self.executor.unsafe_compute_mask_ptr([(c.matcher, i) for i, c in enumerate(constraints)],
                                              bitmask.ctypes.data, words * 4, len(constraints))
        allowed = np.unpackbits(bitmask.view(np.uint8), axis=1, bitorder="little").view(np.bool_)
        if allowed.shape[1] < width:
            allowed = np.pad(allowed, ((0, 0), (0, width - allowed.shape[1])))
        return allowed[:, :width]


class Constraint:
    """One sequence's place in its grammar."""

    def __init__(self, matcher: llguidance.LLMatcher, compiler: GrammarCompiler):
        self.matcher = matcher
        self.compiler = compiler

    def consume(self, token: int) -> str | None:
        """The sampled token moves the matcher on; why not, where it cannot (a limit reached)."""
        if not self.matcher.consume_token(token) or self.matcher.is_error():
            return f"the grammar failed: {self.matcher.get_error() or 'token not allowed'}"
        return None

    @property
    def done(self) -> bool:
        """Nothing more can follow (the grammar is complete): the sequence ends here."""
        return bool(self.matcher.is_stopped())


def grammar_source(response_format: Any, structured: Any) -> tuple[str, str] | None:
    """The llguidance grammar a request asks for, with the param that asked: response_format json_object or
    json_schema (OpenAI's shapes), or the structured_outputs extension (exactly one of json, regex, grammar: a
    JSON schema, a regex or a Lark grammar, as vLLM names them). None: free text. Checked here (a plugin's call
    has no HTTP schema in front)."""
    if response_format is not None and structured is not None:
        raise InvalidRequest("send response_format or structured_outputs, not both", param="structured_outputs")
    if structured is not None:
        return _structured(structured), "structured_outputs"
    if response_format is None:
        return None
    if not isinstance(response_format, dict) or not isinstance(response_format.get("type"), str):
        raise InvalidRequest("response_format must be an object with a type", param="response_format")
    kind = response_format["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return _json_grammar({"type": "object"}, "response_format"), "response_format"
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise InvalidRequest("response_format json_schema needs json_schema with a name",
                                 param="response_format")
        schema = spec.get("schema", {})
        if not isinstance(schema, dict):
            raise InvalidRequest("response_format json_schema.schema must be an object", param="response_format")
        return _json_grammar(schema, "response_format"), "response_format"
    raise InvalidRequest(f"response_format type must be text, json_object or json_schema, not {kind!r}",
                         param="response_format")


def _structured(structured: Any) -> str:
    given = {k: v for k, v in structured.items() if v is not None} if isinstance(structured, dict) else None
    if given is None or len(given) != 1 or not set(given) <= {"json", "regex", "grammar"}:
        raise InvalidRequest("structured_outputs takes exactly one of json (a JSON schema), regex or grammar (Lark)",
                             param="structured_outputs")
    (kind, value), = given.items()
    if kind == "json":
        if not isinstance(value, dict | str):
            raise InvalidRequest("structured_outputs.json must be a JSON schema", param="structured_outputs")
        return _json_grammar(value, "structured_outputs")
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"structured_outputs.{kind} must be a non-empty string", param="structured_outputs")
    return (llguidance.LLMatcher.grammar_from_regex(value) if kind == "regex"
            else llguidance.LLMatcher.grammar_from_lark(value))


def _json_grammar(schema: dict[str, Any] | str, param: str) -> str:
    try:
        parsed = json.loads(schema) if isinstance(schema, str) else schema
        return llguidance.LLMatcher.grammar_from_json_schema(json.dumps(bounded_numbers(parsed)),
                                                             overrides=JSON_OPTIONS)  # type: ignore[arg-type]
    except ValueError as exc:
        raise InvalidRequest(f"{param}: the JSON schema is not valid: {exc}", param=param,
                             code="invalid_grammar") from None


# A number without bounds is written with at most this many digits before the point, and at most this many after it
# (llama.cpp's JSON grammars bound them so too): a small model repeats a digit without end where the grammar lets it
# ("1818237340742724132262...", "1.000000000..." to max_tokens). A schema's own bounds or multipleOf are kept.
INTEGER_DIGITS = 16
FRACTION_DIGITS = 8  # as multipleOf 1e-8 (llguidance takes no finer one exactly)


def bounded_numbers(schema: Any) -> Any:
    """The schema (a copy) with those bounds on every integer and number that sets none of its own."""
    if isinstance(schema, list):
        return [bounded_numbers(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: bounded_numbers(value) for key, value in schema.items()}
    kinds = schema.get("type")
    kinds = {kinds} if isinstance(kinds, str) else set(kinds) if isinstance(kinds, list) else set()
    if kinds & {"integer", "number"} and "enum" not in schema and "const" not in schema:
        limit = 10**INTEGER_DIGITS - 1
        if "maximum" not in schema and "exclusiveMaximum" not in schema:
            out["maximum"] = limit
        if "minimum" not in schema and "exclusiveMinimum" not in schema:
            out["minimum"] = -limit
        if "number" in kinds and "multipleOf" not in schema:
            out["multipleOf"] = 10.0**-FRACTION_DIGITS
    return out
