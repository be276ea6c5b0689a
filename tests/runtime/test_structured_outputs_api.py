"""Constrained decoding through a live server on the random-weight test model: response_format json_schema
(plain, streamed, n=2), the structured_outputs extension on completions, and the openai SDK's parse() with a
pydantic model. Every reply parses and validates: the mask does all the work (any token is possible there)."""

from __future__ import annotations

import json
from typing import Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.runtime.openai_schemas import assert_valid

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["city", "temperature", "tags"],
          "properties": {"city": {"enum": ["Paris", "Oslo", "Lima"]},
                         "temperature": {"type": "number", "minimum": -40, "maximum": 50},
                         "tags": {"type": "array", "maxItems": 3,
                                  "items": {"type": "string", "pattern": "^[a-z]{2,5}$"}}}}
BODY = {"model": "tiny-chat", "messages": [{"role": "user", "content": "The weather, as JSON"}], "temperature": 1.0,
        "max_tokens": 300, "seed": 4,
        "response_format": {"type": "json_schema", "json_schema": {"name": "weather", "schema": SCHEMA,
                                                                   "strict": True}}}


def test_a_chat_completion_follows_its_json_schema(client):
    reply = client.post("/v1/chat/completions", json=BODY)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert_valid("CreateChatCompletionResponse", body)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop"
    jsonschema.validate(json.loads(choice["message"]["content"]), SCHEMA)


def test_a_streamed_completion_follows_its_json_schema(client):
    text, finish = "", None
    with client.stream("POST", "/v1/chat/completions", json={**BODY, "stream": True, "seed": 9}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[6:])["choices"]:
                text += choice["delta"].get("content") or ""
                finish = choice["finish_reason"] or finish
    assert finish == "stop"
    jsonschema.validate(json.loads(text), SCHEMA)


def test_n_choices_each_follow_the_schema(client):
    reply = client.post("/v1/chat/completions", json={**BODY, "n": 2, "seed": 21})
    assert reply.status_code == 200, reply.text
    choices = reply.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1]
    for choice in choices:
        assert choice["finish_reason"] == "stop"
        jsonschema.validate(json.loads(choice["message"]["content"]), SCHEMA)


@pytest.mark.parametrize("stream", [False, True])
def test_completions_take_the_structured_outputs_extension(client, stream):
    body = {"model": "tiny-chat", "prompt": "Order number:", "max_tokens": 40, "temperature": 1.0, "stream": stream,
            "structured_outputs": {"regex": "ORD-[0-9]{4}"}}
    reply = client.post("/v1/completions", json=body)
    assert reply.status_code == 200, reply.text
    if stream:
        chunks = [json.loads(line[6:]) for line in reply.text.splitlines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
        text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    else:
        text = reply.json()["choices"][0]["text"]
    assert len(text) == 8 and text.startswith("ORD-") and text[4:].isdigit(), text


def test_an_uncompilable_schema_is_a_400_naming_response_format(client):
    bad = {**BODY, "response_format": {"type": "json_schema", "json_schema": {
        "name": "bad", "schema": {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}}}}
    reply = client.post("/v1/chat/completions", json=bad)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == "response_format" and "missing" in error["message"], error


class Verdict(BaseModel):
    verdict: Literal["yes", "no", "maybe"]
    confidence: int = Field(ge=0, le=100)
    reasons: list[Literal["cost", "time", "risk"]] = Field(max_length=2)


def test_the_openai_sdk_parses_a_pydantic_model(shared_server):
    with openai.OpenAI(base_url=shared_server.url + "/v1", api_key="unused", max_retries=0) as oai:
        completion = oai.chat.completions.parse(
            model="tiny-chat", messages=[{"role": "user", "content": "Should we ship?"}], response_format=Verdict,
            temperature=1.0, max_tokens=200, seed=2)
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "stop"
    assert isinstance(message.parsed, Verdict), message
    assert 0 <= message.parsed.confidence <= 100


TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "additionalProperties": False, "required": ["city", "unit"],
        "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["C", "F"]}}}}},
    {"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "additionalProperties": False, "required": ["a", "b"],
        "properties": {"a": {"type": "integer", "minimum": -99, "maximum": 99},
                       "b": {"type": "integer", "minimum": -99, "maximum": 99}}}}},
]
PARAMETERS = {tool["function"]["name"]: tool["function"]["parameters"] for tool in TOOLS}
TOOL_BODY = {"model": "tiny-chat", "messages": [{"role": "user", "content": "Weather in Oslo?"}], "tools": TOOLS,
             "temperature": 1.0, "max_tokens": 1500}


def assert_valid_calls(message: dict, names: set[str]) -> list[dict]:
    calls = message["tool_calls"]
    assert calls, message
    for call in calls:
        assert call["function"]["name"] in names, call
        jsonschema.validate(json.loads(call["function"]["arguments"]), PARAMETERS[call["function"]["name"]])
    return calls


@pytest.mark.parametrize("seed", range(6))
def test_tool_choice_required_forces_a_valid_call_of_an_offered_function(client, seed):
    reply = client.post("/v1/chat/completions", json={**TOOL_BODY, "tool_choice": "required", "seed": seed})
    assert reply.status_code == 200, reply.text
    choice = reply.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert_valid_calls(choice["message"], set(PARAMETERS))


def test_a_named_tool_choice_forces_that_function_and_parallel_false_one_call(client):
    named = {"type": "function", "function": {"name": "add"}}
    for seed in range(4):
        reply = client.post("/v1/chat/completions", json={**TOOL_BODY, "tool_choice": named, "seed": seed,
                                                          "parallel_tool_calls": False})
        assert reply.status_code == 200, reply.text
        calls = assert_valid_calls(reply.json()["choices"][0]["message"], {"add"})
        assert len(calls) == 1


def test_a_forced_call_streams_as_tool_call_pieces(client):
    arguments, names, finish = "", [], None
    body = {**TOOL_BODY, "tool_choice": "required", "stream": True, "seed": 3, "parallel_tool_calls": False}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[6:])["choices"]:
                for piece in choice["delta"].get("tool_calls") or []:
                    names += [piece["function"]["name"]] if piece["function"].get("name") else []
                    arguments += piece["function"].get("arguments") or ""
                finish = choice["finish_reason"] or finish
    assert finish == "tool_calls" and len(names) == 1 and names[0] in PARAMETERS
    jsonschema.validate(json.loads(arguments), PARAMETERS[names[0]])


def test_a_forced_call_and_a_response_format_together_are_refused(client):
    reply = client.post("/v1/chat/completions", json={**TOOL_BODY, "tool_choice": "required",
                                                      "response_format": {"type": "json_object"}})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "response_format", reply.text


def test_a_grammar_beyond_the_compile_limits_is_a_400_and_the_server_answers_meanwhile(client):
    import threading
    import time

    # 60,000 rules: past llguidance's grammar-size limit (200k symbols), seconds of work on this machine.
    rules = 60_000
    lark = "start: " + " ".join(f'"w{i}" x{i}' for i in range(rules)) + "\n" + "\n".join(
        f'x{i}: "a" | "b"' for i in range(rules))
    replies = []
    sender = threading.Thread(target=lambda: replies.append(client.post("/v1/completions", json={
        "model": "tiny-chat", "prompt": "x", "max_tokens": 4, "structured_outputs": {"grammar": lark}})))
    sender.start()
    slowest = 0.0
    while sender.is_alive():
        started = time.monotonic()
        assert client.get("/health").status_code == 200
        slowest = max(slowest, time.monotonic() - started)
        time.sleep(0.05)
    [reply] = replies
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == "structured_outputs" and "too big" in error["message"], error
    assert slowest < 1.0  # the compile ran off the event loop
