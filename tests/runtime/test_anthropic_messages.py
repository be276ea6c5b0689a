"""Anthropic's Messages API: the request's meaning as a chat request (in-process, fast), and the `anthropic` SDK
against a live server: a real answer from the embedded default, the same answer streamed, a tool round trip with
the tool-call test model (tests/runtime/toolcall_model.py), errors in Anthropic's shape, keys as on every /v1
route."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import jsonschema
import pytest

from moltbot.api.anthropic import MessagesRequest, message_from_chat, to_chat_request
from moltbot.api.errors import APIError
from moltbot.export.defaults import SMOLLM2
from tests.conftest import REPO, Server, start_server
from tests.runtime.live_models import TOOLCALL, start_with_toolcall_model
from tests.runtime.toolcall_model import TOOL_ARGUMENTS, TOOL_NAME, WEATHER_TOOL

WEATHER = {"name": TOOL_NAME, "description": WEATHER_TOOL["function"]["description"],
           "input_schema": WEATHER_TOOL["function"]["parameters"]}


def _request(**fields) -> MessagesRequest:
    return MessagesRequest.model_validate({"model": "m", "max_tokens": 16,
                                           "messages": [{"role": "user", "content": "hi"}], **fields})


# ---- the request's meaning (in-process) --------------------------------------------------------------------------
def test_system_blocks_and_a_tool_round_trip_become_the_chat_messages_they_mean():
    chat = to_chat_request(_request(
        system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use tools."}],
        messages=[{"role": "user", "content": "Weather in Paris?"},
                  {"role": "assistant", "content": [{"type": "text", "text": "Checking."},
                                                    {"type": "tool_use", "id": "toolu_1", "name": TOOL_NAME,
                                                     "input": TOOL_ARGUMENTS}]},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "21 C"},
                                               {"type": "text", "text": "And tomorrow?"}]}],
        tools=[WEATHER], tool_choice={"type": "any", "disable_parallel_tool_use": True},
        stop_sequences=["\n\n"], temperature=0.5, top_k=40))
    messages = [m.model_dump(exclude_none=True) for m in chat.messages]
    assert messages == [
        {"role": "system", "content": "Be brief.\nUse tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "toolu_1", "type": "function",
             "function": {"name": TOOL_NAME, "arguments": json.dumps(TOOL_ARGUMENTS)}}]},
        {"role": "tool", "content": "21 C", "tool_call_id": "toolu_1"},
        {"role": "user", "content": "And tomorrow?"}]
    assert chat.tool_choice == "required" and chat.parallel_tool_calls is False
    assert chat.tools[0].function.parameters == WEATHER["input_schema"]
    assert (chat.stop, chat.temperature, chat.top_k, chat.max_tokens) == (["\n\n"], 0.5, 40, 16)


def test_a_named_tool_choice_forces_that_function_and_none_turns_tools_off():
    named = to_chat_request(_request(tools=[WEATHER], tool_choice={"type": "tool", "name": TOOL_NAME}))
    assert named.tool_choice.function.name == TOOL_NAME and named.parallel_tool_calls is None
    assert to_chat_request(_request(tools=[WEATHER], tool_choice={"type": "none"})).tool_choice == "none"


@pytest.mark.parametrize(("fields", "param"), [
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "data": "x"}}]}]},
     "messages.0.content.0.type"),
    ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
    ({"output_config": {"effort": "high"}}, "output_config.effort"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "The answer is"}]},
     "messages"),
    ({"tool_choice": {"type": "tool", "name": TOOL_NAME}}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "tool"}}, "tool_choice.name"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "a", "name": "b", "input": {}}]}]},
     "messages.0.content.0.type"),
])
def test_what_a_text_model_cannot_do_is_a_400_naming_the_field(fields, param):
    with pytest.raises(APIError) as refused:
        to_chat_request(_request(**fields))
    assert refused.value.status == 400 and refused.value.param == param


def test_a_chat_reply_with_a_tool_call_is_an_anthropic_message_with_a_tool_use_block():
    reply = {"model": "m", "usage": {"prompt_tokens": 12, "completion_tokens": 7}, "choices": [{
        "finish_reason": "tool_calls", "message": {"content": "Let me check.", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": TOOL_NAME, "arguments": json.dumps(TOOL_ARGUMENTS)}}]}}]}
    message = message_from_chat(reply)
    assert message["content"] == [{"type": "text", "text": "Let me check."},
                                  {"type": "tool_use", "id": "call_1", "name": TOOL_NAME, "input": TOOL_ARGUMENTS}]
    assert message["stop_reason"] == "tool_use" and message["usage"] == {"input_tokens": 12, "output_tokens": 7}
    assert message["id"].startswith("msg") and message["type"] == "message" and message["role"] == "assistant"


# ---- the anthropic SDK against a live server ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_server(tmp_path_factory: pytest.TempPathFactory, real_defaults_dir: Path) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("messages-real"), defaults=real_defaults_dir,
                       env={"MOLTBOT_PLUGINS_DIR": str(REPO / "plugins")})
    srv.wait_ready()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def tool_server(tmp_path_factory: pytest.TempPathFactory, defaults_dir: Path) -> Iterator[Server]:
    srv = start_with_toolcall_model(tmp_path_factory.mktemp("messages-tools"))
    yield srv
    srv.stop()


def _client(srv: Server, key: str = "unused") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=srv.url, api_key=key, max_retries=0, timeout=120)


# The SDK (2.x) has no sampling arguments any more; older SDKs and raw clients send temperature, top_p, top_k.
GREEDY = {"extra_body": {"temperature": 0}}
PARIS = {"system": "You are a helpful assistant.",
         "messages": [{"role": "user", "content": "What is the capital of France?"}]}


def test_the_sdk_gets_a_real_answer_and_the_same_answer_streamed(real_server):
    with _client(real_server) as client:
        message = client.messages.create(model=SMOLLM2, max_tokens=24, **GREEDY, **PARIS)
        with client.messages.stream(model=SMOLLM2, max_tokens=24, **GREEDY, **PARIS) as stream:
            streamed_text = "".join(stream.text_stream)
            streamed = stream.get_final_message()
    assert message.type == "message" and message.role == "assistant" and message.model == SMOLLM2
    assert "Paris" in message.content[0].text and message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 10 and 0 < message.usage.output_tokens <= 24
    assert streamed_text == message.content[0].text == streamed.content[0].text
    assert streamed.stop_reason == "end_turn" and streamed.usage.output_tokens == message.usage.output_tokens


def test_max_tokens_is_the_stop_reason_when_the_answer_is_cut(real_server):
    with _client(real_server) as client:
        message = client.messages.create(model=SMOLLM2, max_tokens=2, **GREEDY, **PARIS)
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 2


def test_a_tool_round_trip_through_the_sdk(tool_server):
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    with _client(tool_server) as client:
        first = client.messages.create(model=TOOLCALL, max_tokens=200, messages=question, tools=[WEATHER])
        assert first.stop_reason == "tool_use"
        call = next(block for block in first.content if block.type == "tool_use")
        assert (call.name, call.input) == (TOOL_NAME, TOOL_ARGUMENTS)
        with client.messages.stream(model=TOOLCALL, max_tokens=200, messages=question, tools=[WEATHER]) as stream:
            streamed = stream.get_final_message()
        streamed_call = next(block for block in streamed.content if block.type == "tool_use")
        assert (streamed_call.name, streamed_call.input, streamed.stop_reason) == (TOOL_NAME, TOOL_ARGUMENTS,
                                                                                   "tool_use")
        # The result goes back as a tool_result block; the model answers the next turn (whatever it says).
        second = client.messages.create(model=TOOLCALL, max_tokens=16, tools=[WEATHER], messages=[
            *question, {"role": "assistant", "content": [c.model_dump(exclude_none=True) for c in first.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "21 C"}]}])
    assert second.usage.input_tokens > first.usage.input_tokens  # the call and its result were in the prompt


def test_count_tokens_is_what_the_message_reports_as_its_input(tool_server):
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    with _client(tool_server) as client:
        counted = client.messages.count_tokens(model=TOOLCALL, messages=question, tools=[WEATHER], system="Be brief.")
        message = client.messages.create(model=TOOLCALL, max_tokens=1, messages=question, tools=[WEATHER],
                                         system="Be brief.")
        bare = client.messages.count_tokens(model=TOOLCALL, messages=question)
    assert counted.input_tokens == message.usage.input_tokens > bare.input_tokens > 0


def test_errors_come_in_anthropics_shape_and_the_sdk_raises_its_own_types(tool_server):
    with _client(tool_server) as client:
        with pytest.raises(anthropic.BadRequestError) as bad:
            client.messages.create(model=TOOLCALL, max_tokens=8, messages=[
                {"role": "user", "content": [{"type": "image", "source": {
                    "type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}])
        with pytest.raises(anthropic.NotFoundError):
            client.messages.create(model="no-such-model", max_tokens=8, messages=PARIS["messages"])
    assert bad.value.body["type"] == "error" and bad.value.body["error"]["type"] == "invalid_request_error"
    assert "image" in bad.value.body["error"]["message"]
    missing = httpx.post(tool_server.url + "/v1/messages", json={"model": TOOLCALL, "messages": PARIS["messages"]})
    assert missing.status_code == 400 and missing.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in missing.json()["error"]["message"]
    unknown = httpx.post(tool_server.url + "/v1/messages", json={"model": TOOLCALL, "max_tokens": 4,
                                                                 "messages": PARIS["messages"], "top_n": 3})
    assert unknown.status_code == 400 and "top_n" in unknown.json()["error"]["message"]


def test_an_output_format_holds_the_answer_to_its_json_schema(real_server):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                               "country": {"type": "string", "enum": ["France", "Italy"]}},
              "required": ["city", "country"], "additionalProperties": False}
    with _client(real_server) as client:
        message = client.messages.create(model=SMOLLM2, max_tokens=48, **GREEDY, **PARIS,
                                         output_config={"format": {"type": "json_schema", "schema": schema}})
    answer = json.loads(message.content[0].text)
    jsonschema.validate(answer, schema)
    assert message.stop_reason == "end_turn"


def test_keys_work_as_on_every_v1_route(server_factory):
    srv = server_factory(env={"MOLTBOT_API_KEYS": "sk-messages-test"})
    with _client(srv, key="sk-wrong") as client, pytest.raises(anthropic.AuthenticationError) as refused:
        client.messages.create(model="tiny-chat", max_tokens=2, messages=PARIS["messages"])
    assert refused.value.body["error"]["type"] == "authentication_error"
    with _client(srv, key="sk-messages-test") as client:
        assert client.messages.create(model="tiny-chat", max_tokens=2, messages=PARIS["messages"]).usage.output_tokens
