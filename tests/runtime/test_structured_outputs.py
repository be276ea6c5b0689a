"""Constrained decoding in the engine (no HTTP): every completion of the random-weight test model (any token is
possible there, so the grammar mask does all the work) under a JSON schema, a regex or a Lark grammar is one the
grammar accepts; the validator refuses what llguidance cannot compile, naming the param."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

import jsonschema
import pytest

from moltbot.engine.errors import InvalidRequest
from moltbot.engine.grammar import GrammarCompiler
from moltbot.engine.optimum_runner import OptimumRunner
from moltbot.engine.sampling import SamplingParams
from moltbot.engine.scheduler import GenerationScheduler
from moltbot.engine.sessions import DeviceOptions
from moltbot.engine.tokenizer import TextTokenizer
from moltbot.engine.tool_calls import FORMATS, compile_tools
from moltbot.engine.validation import ModelLimits, SamplingRequest, validate

CORPUS = json.loads((Path(__file__).parent / "data" / "json_schemas.json").read_text())


@pytest.fixture(scope="module")
def engine(defaults_dir):
    folder = defaults_dir / "tiny-chat"
    tokenizer = TextTokenizer(folder)
    sched = GenerationScheduler("test-chat", OptimumRunner(folder, DeviceOptions(), slots=8, max_length=2048),
                                tokenizer, context_length=2048, max_running=8, max_queued=64)
    grammars = GrammarCompiler((folder / "tokenizer.json").read_text(), tokenizer.vocab_size, tokenizer.vocab_size,
                               tokenizer.eos_token_ids)
    limits = ModelLimits("test-chat", 2048, 72, 1.0, tokenizer.vocab_size, grammars=grammars)
    yield sched, limits
    sched.stop()


def schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "t", "schema": schema, "strict": True}}


async def generate(sched: GenerationScheduler, params: SamplingParams, n: int = 1) -> list[tuple[str, str]]:
    """Each sequence's (text, finish reason)."""
    handle = sched.submit(sched.tokenizer.encode("Answer in JSON:"), params, n, asyncio.get_running_loop())
    texts, reasons = [""] * n, [""] * n
    while not all(reasons):
        event = await handle.next_event()
        texts[event.index] += event.text
        if event.finish_reason:
            reasons[event.index] = event.finish_reason
    return list(zip(texts, reasons, strict=True))


def constrained(limits: ModelLimits, **request) -> SamplingParams:
    request.setdefault("max_tokens", 400)
    request.setdefault("temperature", 1.0)
    return validate(SamplingRequest(**request), [[1, 2, 3]], limits).params


def test_the_corpus_holds_the_schema_kinds_asked_for():
    text = json.dumps(CORPUS)
    assert len(CORPUS) >= 30
    for keyword in ("$ref", "anyOf", "minItems", "maxItems", "enum", "pattern", "minimum", "maximum", "$defs"):
        assert keyword in text, keyword


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_every_completion_under_a_schema_validates_on_the_random_model(engine, name):
    sched, limits = engine
    schema = CORPUS[name]
    params = constrained(limits, response_format=schema_format(schema), seed=7)
    [(text, reason)] = asyncio.run(generate(sched, params))
    assert reason == "stop", (text, reason)
    jsonschema.validate(json.loads(text), schema)


def test_n_choices_each_follow_the_schema_with_their_own_matcher(engine):
    sched, limits = engine
    schema = CORPUS["order"]
    params = constrained(limits, response_format=schema_format(schema), seed=3, n=3)
    results = asyncio.run(generate(sched, params, n=3))
    for text, reason in results:
        assert reason == "stop"
        jsonschema.validate(json.loads(text), schema)
    assert len({text for text, _ in results}) > 1  # each its own draw, not copies of one


def test_the_same_seed_gives_the_same_constrained_completion(engine):
    sched, limits = engine
    params = constrained(limits, response_format=schema_format(CORPUS["flat_object"]), seed=11)
    assert asyncio.run(generate(sched, params)) == asyncio.run(generate(sched, params))


def test_a_greedy_row_is_held_to_the_grammar_too(engine):
    sched, limits = engine
    params = constrained(limits, structured_outputs={"regex": "(yes|no)-[0-9]{2}"}, temperature=0.0)
    [(text, reason)] = asyncio.run(generate(sched, params))
    assert reason == "stop"
    assert text[:-3] in ("yes", "no") and text[-3] == "-" and text[-2:].isdigit(), text


def test_lark_grammar_and_json_extension(engine):
    sched, limits = engine
    lark = 'start: "SELECT " col " FROM " table\ncol: "id" | "name"\ntable: "users" | "orders"'
    [(text, reason)] = asyncio.run(generate(sched, constrained(limits, structured_outputs={"grammar": lark})))
    assert reason == "stop"
    assert text.split(" ")[0] == "SELECT" and text.split(" ")[1] in ("id", "name"), text
    assert text.endswith((" FROM users", " FROM orders")), text
    schema = CORPUS["enum_in_object"]
    [(text, _)] = asyncio.run(generate(sched, constrained(limits, structured_outputs={"json": schema})))
    jsonschema.validate(json.loads(text), schema)


def test_max_tokens_mid_json_finishes_length(engine):
    sched, limits = engine
    params = constrained(limits, response_format=schema_format(CORPUS["order"]), max_tokens=3)
    [(text, reason)] = asyncio.run(generate(sched, params))
    assert reason == "length"
    assert text and '{"order_id": "ORD'.startswith(text), text  # three tokens into what the schema forces


def test_stop_strings_keep_working_under_a_grammar(engine):
    sched, limits = engine
    params = constrained(limits, structured_outputs={"regex": "abc,def,ghi"}, stop=(",g",))
    [(text, reason)] = asyncio.run(generate(sched, params))
    assert (text, reason) == ("abc,def", "stop")


@pytest.mark.parametrize(("request_fields", "param", "fragment"), [
    ({"response_format": schema_format({"type": "object", "properties": {"a": {"type": "frob"}}})},
     "response_format", "frob"),
    ({"response_format": schema_format({"$ref": "#/$defs/missing"})}, "response_format", "missing"),
    ({"structured_outputs": {"regex": "[a-"}}, "structured_outputs", "regex"),
    ({"structured_outputs": {"grammar": "start: undefined_rule"}}, "structured_outputs", "undefined_rule"),
    ({"structured_outputs": {"regex": "a", "grammar": "start: \"a\""}}, "structured_outputs", "exactly one"),
    ({"response_format": {"type": "xml"}}, "response_format", "xml"),
])
def test_what_cannot_be_compiled_is_refused_naming_the_param(engine, request_fields, param, fragment):
    _, limits = engine
    with pytest.raises(InvalidRequest) as refused:
        constrained(limits, **request_fields)
    assert refused.value.param == param
    assert fragment in str(refused.value)


def test_text_format_and_no_format_are_unconstrained(engine):
    _, limits = engine
    assert constrained(limits, response_format={"type": "text"}).grammar is None
    assert constrained(limits).grammar is None
    assert constrained(limits, response_format={"type": "json_object"}).grammar is not None


def test_the_mask_stage_touches_only_constrained_rows_and_pads_to_the_logits_width(defaults_dir):
    import numpy as np

    from moltbot.engine.sampling import sample_batch
    from tests.runtime.test_sampling import row

    folder = defaults_dir / "tiny-chat"
    tokenizer = TextTokenizer(folder)
    # A graph 10 ids wider than the tokenizer: those ids are never allowed under a grammar.
    wide = tokenizer.vocab_size + 10
    grammars = GrammarCompiler((folder / "tokenizer.json").read_text(), wide, tokenizer.vocab_size,
                               tokenizer.eos_token_ids)
    limits = ModelLimits("test-chat", 2048, 72, 1.0, tokenizer.vocab_size, grammars=grammars)
    grammar = constrained(limits, structured_outputs={"regex": "[0-9]+"}).grammar
    logits = np.random.default_rng(0).standard_normal((3, wide)).astype(np.float32)
    logits[:, -10:] = 50.0  # the extra ids would win every draw unmasked
    free, held, greedy = row(seed=1, temperature=1.0), row(seed=2, temperature=1.0, grammar=grammar), \
        row(temperature=0.0, grammar=grammar)
    together = sample_batch(logits, [free, held, greedy])
    [alone] = sample_batch(logits[:1], [row(seed=1, temperature=1.0)])
    assert together[0] == alone  # the unconstrained row: as if alone
    assert together[0].token >= tokenizer.vocab_size  # and unmasked
    for sampled in together[1:]:
        assert sampled.error is None and tokenizer.decode([sampled.token]).isdigit(), sampled


def test_a_constrained_sequence_is_cancelled_like_any_other(engine):
    sched, limits = engine
    params = constrained(limits, structured_outputs={"regex": "[a-z]{1500}"}, max_tokens=1500)

    async def scenario():
        handle = sched.submit(sched.tokenizer.encode("x"), params, 1, asyncio.get_running_loop())
        for _ in range(3):
            assert not (await handle.next_event()).finish_reason
        handle.cancel()
        while not (event := await handle.next_event()).finish_reason:
            pass
        return event.finish_reason, len(handle.sequences[0].output.generated)

    reason, generated = asyncio.run(scenario())
    assert reason == "cancelled" and generated < 1500
    # and the scheduler goes on serving constrained requests
    [(text, reason)] = asyncio.run(generate(sched, constrained(limits, structured_outputs={"regex": "ok"})))
    assert (text, reason) == ("ok", "stop")


@pytest.mark.parametrize("parallel", [True, False])
def test_under_auto_the_tool_grammar_arms_itself_when_the_model_opens_a_call(defaults_dir, parallel):
    """Text is free until `<tool_call>`; then only a valid call of an offered function; after it, with
    parallel_tool_calls false, nothing more (the sequence ends)."""
    folder = defaults_dir / "tiny-chat"
    tokenizer = TextTokenizer(folder)
    grammars = GrammarCompiler((folder / "tokenizer.json").read_text(), tokenizer.vocab_size, tokenizer.vocab_size,
                               tokenizer.eos_token_ids)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "required": ["city"], "additionalProperties": False,
        "properties": {"city": {"type": "string"}}}}}]
    grammar = FORMATS["hermes"].grammar(tools, None, forced=False, parallel=parallel)
    matcher = grammars.compile(grammar, "tools").matcher()

    def allowed() -> set[str]:
        [mask] = grammars.fill_masks([matcher], tokenizer.vocab_size)
        return {tokenizer.decode([int(t)]) for t in mask.nonzero()[0]}

    def write(text: str) -> None:
        for token in tokenizer.encode(text, add_special_tokens=False):
            assert matcher.consume(token) is None, text

    write("Let me look that up. ")
    assert len(allowed()) > tokenizer.vocab_size // 2  # free text: (nearly) anything
    write("<tool_call>\n")
    assert "x" not in allowed() and all('{"'.startswith(t) or t.startswith("{") for t in allowed() if t), allowed()
    write('{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>')
    assert matcher.done is (not parallel)  # one call only: nothing may follow



def test_unbounded_numbers_are_written_with_bounded_digits(engine):
    """16 digits before the point, 8 after, no exponent, where the schema sets no bounds of its own (a model that
    repeats a digit would otherwise write to max_tokens); a schema's own bounds are kept."""
    from moltbot.engine.grammar import bounded_numbers

    sched, limits = engine
    for schema in ({"type": "integer"}, {"type": "number"}, {"type": ["number", "null"]}):
        for seed in range(3):
            params = constrained(limits, structured_outputs={"json": schema}, seed=seed, max_tokens=60)
            [(text, reason)] = asyncio.run(generate(sched, params))
            assert reason == "stop", text
            whole, _, fraction = text.lstrip("-").partition(".")
            assert text == "null" or (len(whole) <= 16 and len(fraction) <= 8 and "e" not in text.lower()), text
    own = {"type": "integer", "minimum": 0, "maximum": 10**30, "multipleOf": 7}
    assert bounded_numbers(own) == own
    nested = bounded_numbers({"type": "array", "items": {"anyOf": [{"type": "number"}, {"const": 1}]}})
    assert nested["items"]["anyOf"][0] == {"type": "number", "maximum": 10**16 - 1, "minimum": -(10**16 - 1),
                                           "multipleOf": 1e-8}
    assert nested["items"]["anyOf"][1] == {"const": 1}


def test_tools_that_llguidance_does_not_implement_strictly_get_a_lenient_grammar(defaults_dir):
    """The built-in plugins' schemas (if / then, oneOf) compile leniently, so chats with them keep working; a tool
    whose schema does not compile at all is a 400 naming tools where the call is forced, free text under auto."""
    folder = defaults_dir / "tiny-chat"
    tokenizer = TextTokenizer(folder)
    grammars = GrammarCompiler((folder / "tokenizer.json").read_text(), tokenizer.vocab_size, tokenizer.vocab_size,
                               tokenizer.eos_token_ids)
    plugins = Path(__file__).resolve().parents[2] / "plugins"
    tools = [{"type": "function", "function": {"name": config["name"], "parameters": config["input_schema"]}}
             for config in (json.loads(f.read_text()) for f in sorted(plugins.glob("*/config.json")))]
    assert len(tools) >= 4
    for forced in (True, False):
        assert compile_tools(grammars, FORMATS["hermes"], tools, None, forced=forced, parallel=True) is not None
    broken = [{"type": "function", "function": {"name": "f", "parameters": {"$ref": "#/$defs/missing"}}}]
    with pytest.raises(InvalidRequest) as refused:
        compile_tools(grammars, FORMATS["hermes"], broken, None, forced=True, parallel=True)
    assert refused.value.param == "tools" and "missing" in str(refused.value)
    assert compile_tools(grammars, FORMATS["hermes"], broken, None, forced=False, parallel=True) is None


TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "required": ["city"], "additionalProperties": False,
        "properties": {"city": {"type": "string", "maxLength": 20},
                       "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}}},
    {"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "required": ["a", "b"], "additionalProperties": False,
        "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99}, "b": {"type": "number"}}}}},
]


@pytest.mark.parametrize("format_name", sorted(FORMATS))
@pytest.mark.parametrize("parallel", [True, False])
def test_forced_calls_under_each_formats_grammar_parse_and_validate(engine, format_name, parallel):
    """On the random model the grammar does all the work: what it writes is that format's calls, which the
    format's own parser reads back, each naming an offered function with arguments valid against its schema."""
    sched, limits = engine
    fmt = FORMATS[format_name]
    schemas = {tool["function"]["name"]: tool["function"]["parameters"] for tool in TOOLS}
    grammar = compile_tools(limits.grammars, fmt, TOOLS, None, forced=True, parallel=parallel)
    for seed in range(4):
        params = replace(constrained(limits, seed=seed), grammar=grammar)
        [(text, reason)] = asyncio.run(generate(sched, params))
        content, calls = fmt.parse(text)
        assert reason == "stop" and calls and not content.strip(), (text, reason)
        assert parallel or len(calls) == 1
        for call in calls:
            jsonschema.validate(json.loads(call.arguments), schemas[call.name])
