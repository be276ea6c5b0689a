"""Tool-call formats (engine/tool_calls.py), in process: each format's whole and streamed readers agree on every
way a text can be cut into pieces, malformed call text stays text; a model's format comes from its config or its
chat template; and a plugin's `registry.chat(tools=...)` gets the calls parsed, as HTTP clients do."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import jsonschema
import pytest

from moltbot.engine.config import ModelConfig, ModelConfigError
from moltbot.engine.errors import InvalidRequest
from moltbot.engine.registry import ModelRegistry
from moltbot.engine.tool_calls import DEFAULT_FORMAT, FORMATS, ToolCallDelta, format_for
from moltbot.settings import Settings
from tests.runtime.toolcall_model import TOOL_ARGUMENTS, TOOL_NAME, WEATHER_TOOL, ensure_model

# For each format: texts with calls, as (text, content, [(name, arguments)]).
WITH_CALLS = {
    "hermes": [
        ('Let me check. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
         "Let me check.", [("get_weather", {"city": "Paris"})]),
        ('<tool_call>\n{"name": "a", "arguments": {"x": [1, {"y": "}"}]}}\n</tool_call>\n'
         '<tool_call>\n{"name": "b", "arguments": {}}\n</tool_call>', "", [("a", {"x": [1, {"y": "}"}]}), ("b", {})]),
        # SmolLM2's way: one block holding a list of calls
        ('<tool_call>[{"name": "a", "arguments": {"q": "é"}}, {"name": "b", "arguments": {"n": 2}}]</tool_call>', "",
         [("a", {"q": "é"}), ("b", {"n": 2})]),
    ],
    "llama3_json": [
        ('{"name": "get_weather", "parameters": {"city": "Paris"}}', "", [("get_weather", {"city": "Paris"})]),
        ('{"name": "a", "arguments": {"x": "}"}}; {"name": "b", "parameters": {}}', "", [("a", {"x": "}"}), ("b", {})]),
    ],
}
MALFORMED = {
    "hermes": ['<tool_call>{"name": }</tool_call> plain', '<tool_call>\n{"arguments": {}}\n</tool_call>',
               '<tool_call>[{"name": "a", "arguments": {}}, 3]</tool_call>', "a < b and <tool_ca", "plain text"],
    "llama3_json": ['{"name": "a", "parameters": {}} and more', '{"city": "Paris"}', '{"name": "a", "parameters": 3}',
                    'The answer is {"name": "a", "parameters": {}}', "{unclosed", "plain text"],
}


def _joined(pieces: list[ToolCallDelta]) -> list[tuple[str, dict]]:
    """Streamed pieces joined into calls, as a client joins them; every call's first piece has its id."""
    calls: dict[int, list] = {}
    for piece in pieces:
        if piece.id is not None:
            assert piece.index not in calls and piece.id.startswith("call_") and piece.name
            calls[piece.index] = [piece.name, ""]
        calls[piece.index][1] += piece.arguments
    assert sorted(calls) == list(range(len(calls)))
    return [(name, json.loads(arguments)) for name, arguments in (calls[i] for i in sorted(calls))]


def _streamed(format_name: str, parts: list[str]) -> tuple[str, list[ToolCallDelta]]:
    reader = FORMATS[format_name].stream()
    content, pieces = "", []
    for part in parts:
        more, got = reader.push(part)
        content, pieces = content + more, pieces + got
    more, got = reader.finish()
    return content + more, pieces + got


def _cuts(text: str) -> list[list[str]]:
    """The text in two pieces at every boundary (each byte of its UTF-8 that starts a character), and one
    character at a time."""
    return [[text[:i], text[i:]] for i in range(len(text) + 1)] + [list(text)]


@pytest.mark.parametrize("format_name", sorted(WITH_CALLS))
def test_each_format_parses_its_calls_whole_and_streamed_however_the_text_is_cut(format_name):
    fmt = FORMATS[format_name]
    for text, content, expected in WITH_CALLS[format_name]:
        got_content, calls = fmt.parse(text)
        assert got_content == content
        assert [(c.name, json.loads(c.arguments)) for c in calls] == expected
        assert all(c.as_openai()["id"].startswith("call_") and c.as_openai()["type"] == "function" for c in calls)
        for parts in _cuts(text):
            streamed_content, pieces = _streamed(format_name, parts)
            assert streamed_content.strip() == content, parts
            assert _joined(pieces) == expected, parts


@pytest.mark.parametrize("format_name", sorted(MALFORMED))
def test_malformed_call_text_stays_text_whole_and_streamed(format_name):
    for text in MALFORMED[format_name]:
        assert FORMATS[format_name].parse(text) == (text, [])
        for parts in _cuts(text):
            assert _streamed(format_name, parts) == (text, []), parts


def test_the_hermes_stream_sends_the_name_before_the_arguments_are_written():
    reader = FORMATS["hermes"].stream()
    content, pieces = reader.push('Sure. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa')
    assert content == "Sure. " and pieces[0].name == "get_weather" and pieces[1].arguments == '{"city": "Pa'


def test_a_models_format_is_its_configs_else_its_chat_templates_else_the_default():
    qwen = "{%- if tools %}...<tool_call>\\n{\"name\": <function-name>, \"arguments\": <args-json-object>}..."
    llama = 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.'
    assert format_for(None, qwen).name == "hermes"
    assert format_for(None, llama).name == format_for(None, "<|python_tag|>").name == "llama3_json"
    assert format_for(None, None).name == format_for(None, "{{ messages }}").name == DEFAULT_FORMAT == "hermes"
    assert format_for("llama3_json", qwen).name == "llama3_json"  # the config wins


def test_an_unknown_format_in_a_model_config_is_refused_naming_it(tmp_path):
    base = {"name": "m", "source": "local", "path": "/x"}
    assert ModelConfig.from_dict({**base, "tool_call_format": "llama3_json"}).tool_call_format == "llama3_json"
    with pytest.raises(ModelConfigError, match="'mistral' is not one of hermes, llama3_json"):
        ModelConfig.from_dict({**base, "tool_call_format": "mistral"}, file="m.json")
    service = {"name": "s", "backend": "service", "base_url": "http://127.0.0.1:1", "model": "x"}
    assert ModelConfig.from_dict({**service, "tool_call_format": "hermes"}).tool_call_format == "hermes"
    with pytest.raises(ModelConfigError, match="for chat models"):
        ModelConfig.from_dict({**service, "task": "embeddings", "tool_call_format": "hermes"})
    (tmp_path / "m.json").write_text(json.dumps({**base, "tool_call_format": "mistral"}))
    registry = ModelRegistry(Settings(models_dir=tmp_path, default_models="off").validate())
    registry.load_all()  # the other models load; this one is a load failure that names the format
    assert registry.failures[0]["model"] == "m" and "'mistral'" in registry.failures[0]["error"]


@pytest.fixture(scope="module")
def registry(tmp_path_factory, defaults_dir: Path):
    """The toolcall test model (hermes, from the default), and the random tiny-chat configured as llama3_json."""
    models = tmp_path_factory.mktemp("models")
    (models / "toolcall.json").write_text(json.dumps(
        {"name": "tiny-toolcall", "source": "local", "path": str(ensure_model()), "max_tokens": 512}))
    (models / "json.json").write_text(json.dumps(
        {"name": "json-chat", "source": "local", "path": str(defaults_dir / "tiny-chat"), "max_tokens": 512,
         "tool_call_format": "llama3_json"}))
    registry = ModelRegistry(Settings(models_dir=models, default_models="off").validate())
    registry.load_all()
    assert sorted(registry.model_names()) == ["json-chat", "tiny-toolcall"], registry.failures
    yield registry
    asyncio.run(registry.close())


QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


def test_a_plugins_chat_with_tools_gets_the_calls_parsed(registry):
    reply = asyncio.run(registry.chat(QUESTION, model="tiny-toolcall", tools=[WEATHER_TOOL]))
    assert reply["finish_reason"] == "tool_calls" and "<tool_call>" not in reply["content"]
    [call] = reply["tool_calls"]
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"]["name"] == TOOL_NAME and json.loads(call["function"]["arguments"]) == TOOL_ARGUMENTS
    # tool_choice none: the text as written, no calls read
    none = asyncio.run(registry.chat(QUESTION, model="tiny-toolcall", tools=[WEATHER_TOOL], tool_choice="none"))
    assert none["tool_calls"] is None and "<tool_call>" in none["content"]
    # a named function (OpenAI's object) and parallel_tool_calls false are taken as the API takes them
    named = asyncio.run(registry.chat(QUESTION, model="tiny-toolcall", tools=[WEATHER_TOOL], parallel_tool_calls=False,
                                      tool_choice={"type": "function", "function": {"name": TOOL_NAME}}))
    assert [c["function"]["name"] for c in named["tool_calls"]] == [TOOL_NAME]


def test_a_plugins_forced_call_follows_the_models_configured_format(registry):
    """The random model configured as llama3_json: a forced call is written as bare JSON and read back parsed (the
    city's length bounded: the random model writes strings to max_tokens where nothing ends them)."""
    schema = {"type": "object", "required": ["city"], "additionalProperties": False,
              "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["celsius", "fahrenheit"]}}}
    tool = {"type": "function", "function": {"name": TOOL_NAME, "parameters": schema}}
    reply = asyncio.run(registry.chat(QUESTION, model="json-chat", tools=[tool], tool_choice="required",
                                      parallel_tool_calls=False, temperature=1.0, seed=3, max_tokens=400))
    assert reply["finish_reason"] == "tool_calls" and reply["content"] == ""
    [call] = reply["tool_calls"]
    assert call["function"]["name"] == TOOL_NAME
    jsonschema.validate(json.loads(call["function"]["arguments"]), schema)


@pytest.mark.parametrize("tool_choice, param", [
    ({"type": "function"}, "tool_choice"), ("sometimes", "tool_choice"),
    ({"type": "function", "function": {"name": "nope"}}, "tool_choice")])
def test_a_plugins_bad_tool_choice_is_refused_naming_it(registry, tool_choice, param):
    with pytest.raises(InvalidRequest) as refused:
        asyncio.run(registry.chat(QUESTION, model="tiny-toolcall", tools=[WEATHER_TOOL], tool_choice=tool_choice))
    assert refused.value.param == param


WEATHER_PLUGIN = {
    "config.json": json.dumps({"name": "ask_weather", "version": "1.0.0", "description": "Asks a model to call.",
                               "input_schema": {"type": "object"}}),
    "__init__.py": "",
    "plugin.py": ("from moltbot.plugins import BasePlugin\n\n"
                  "class AskWeather(BasePlugin):\n"
                  "    def execute(self, context):\n"
                  "        reply = context.models.chat([{'role': 'user', 'content': 'Weather in Paris?'}],\n"
                  "                                    model='tiny-toolcall', tools=context.input['tools'])\n"
                  "        return {'content': reply['content'], 'tool_calls': reply['tool_calls'],\n"
                  "                'finish_reason': reply['finish_reason']}\n"),
}


def test_a_served_plugins_context_models_chat_gets_parsed_calls(tmp_path):
    """Live: a plugin in a running server asks the tool-call model through context.models and gets the call
    parsed, as an HTTP client would."""
    import httpx

    from tests.runtime.live_models import start_with_toolcall_model

    plugins = tmp_path / "plugins"
    (plugins / "ask_weather").mkdir(parents=True)
    for name, text in WEATHER_PLUGIN.items():
        (plugins / "ask_weather" / name).write_text(text)
    server = start_with_toolcall_model(tmp_path / "home", env={"MOLTBOT_PLUGINS_DIR": str(plugins)})
    try:
        answer = httpx.post(f"{server.url}/v1/plugins/ask_weather/execute", json={"tools": [WEATHER_TOOL]},
                            timeout=60)
        assert answer.status_code == 200, answer.text
        result = answer.json()["result"]
        assert result["finish_reason"] == "tool_calls" and "<tool_call>" not in result["content"]
        [call] = result["tool_calls"]
        assert call["function"]["name"] == TOOL_NAME and json.loads(call["function"]["arguments"]) == TOOL_ARGUMENTS
    finally:
        server.stop()
