"""OpenAI's Responses API: the request's meaning as a chat request and the store (in-process, fast), then real
clients against live servers: the `openai` SDK's `client.responses.create` (plain, streamed, a function-tool round
trip, previous_response_id), every answer and event checked against OpenAI's published schemas, and an
`openai-agents` agent with one function tool run to completion."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from pydantic import ValidationError

from moltbot.api.errors import APIError
from moltbot.api.responses import ResponsesRequest, ResponseStore, chat_messages, input_items, to_chat_request
from moltbot.export.defaults import SMOLLM2
from tests.conftest import REPO, Server, start_server
from tests.runtime.live_models import TOOLCALL, start_with_toolcall_model
from tests.runtime.openai_schemas import assert_valid
from tests.runtime.toolcall_model import TOOL_ARGUMENTS, TOOL_NAME, WEATHER_TOOL

WEATHER = {"type": "function", **WEATHER_TOOL["function"]}


def _request(**fields) -> ResponsesRequest:
    return ResponsesRequest.model_validate({"model": "m", "input": "hi", **fields})


# ---- in-process ----------------------------------------------------------------------------------------------
def test_items_become_chat_messages_with_calls_joined_to_their_assistant_turn():
    items = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
             {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
             {"type": "function_call", "call_id": "call_1", "name": TOOL_NAME, "arguments": '{"city": "Paris"}'},
             {"type": "function_call", "call_id": "call_2", "name": TOOL_NAME, "arguments": '{"city": "Rome"}'},
             {"type": "function_call_output", "call_id": "call_1", "output": "21 C"},
             {"type": "function_call_output", "call_id": "call_2", "output": "25 C"}]
    req = _request(input=items, instructions="Be brief.", tools=[WEATHER], tool_choice="required",
                   text={"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": True}},
                   max_output_tokens=20, temperature=0.3, parallel_tool_calls=False)
    chat = to_chat_request(req, input_items(req))
    messages = [m.model_dump(exclude_none=True) for m in chat.messages]
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert messages[2]["content"] == "Checking." and [c["id"] for c in messages[2]["tool_calls"]] == ["call_1",
                                                                                                       "call_2"]
    assert [(m["role"], m.get("tool_call_id")) for m in messages[3:]] == [("tool", "call_1"), ("tool", "call_2")]
    assert chat.tool_choice == "required" and chat.parallel_tool_calls is False and chat.max_tokens == 20
    assert chat.response_format.json_schema.schema_ == {"type": "object"} and chat.tools[0].function.name == TOOL_NAME
    assert chat_messages([{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}]) == [
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]


@pytest.mark.parametrize("fields", [
    {"reasoning": {"effort": "high"}}, {"truncation": "auto"}, {"include": ["message.output_text.logprobs"]},
    {"tools": [{"type": "web_search"}]}, {"input": [{"type": "input_image", "image_url": "x"}]},
    {"background": True}, {"temperature": "0"},
])
def test_what_is_not_served_is_refused_not_ignored(fields):
    with pytest.raises(ValidationError):
        _request(**fields)


def test_the_store_keeps_each_keys_responses_to_itself_within_its_bounds(tmp_path: Path):
    store = ResponseStore(tmp_path / "state" / "responses.sqlite3", max_stored=2, max_age=3600)

    async def run() -> None:
        for n in range(3):
            await store.put("alice", {"id": f"resp_{n}"}, [{"n": n}])
        assert await store.get("alice", "resp_2") == ({"id": "resp_2"}, [{"n": 2}])
        with pytest.raises(APIError) as evicted:  # the oldest went when the third came
            await store.get("alice", "resp_0")
        assert evicted.value.status == 404
        with pytest.raises(APIError):
            await store.get("bob", "resp_2")  # another key's
        with pytest.raises(APIError):
            await store.delete("bob", "resp_2")
        await store.delete("alice", "resp_2")
        with pytest.raises(APIError):
            await store.get("alice", "resp_2")
        short = ResponseStore(tmp_path / "short.sqlite3", max_stored=10, max_age=0.2)
        await short.put("", {"id": "resp_old"}, [])
        assert (await short.get("", "resp_old"))[0]["id"] == "resp_old"
        time.sleep(0.3)
        with pytest.raises(APIError):
            await short.get("", "resp_old")

    asyncio.run(run())


# ---- live: the openai SDK ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_server(tmp_path_factory: pytest.TempPathFactory, real_defaults_dir: Path) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("responses-real"), defaults=real_defaults_dir,
                       env={"MOLTBOT_PLUGINS_DIR": str(REPO / "plugins")})
    srv.wait_ready()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def tool_server(tmp_path_factory: pytest.TempPathFactory, defaults_dir: Path) -> Iterator[Server]:
    srv = start_with_toolcall_model(tmp_path_factory.mktemp("responses-tools"),
                                    env={"MOLTBOT_API_KEYS": "sk-alice,sk-bob"})
    yield srv
    srv.stop()


def _client(srv: Server, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0, timeout=120)


def _event_schema(kind: str) -> str:
    """The name of the schema of one kind of stream event (among ResponseStreamEvent's anyOf)."""
    schemas = json.loads((REPO / "tests" / "openai_openapi" / "schemas.json").read_text())["components"]["schemas"]
    for option in schemas["ResponseStreamEvent"]["anyOf"]:
        name = option["$ref"].rsplit("/", 1)[1]
        if schemas[name]["properties"]["type"].get("enum") == [kind]:
            return name
    raise AssertionError(f"no event of type {kind} in OpenAI's document")


def _raw_events(srv: Server, body: dict) -> list[dict]:
    """A stream's events as sent (the SDK's parsed ones differ from the wire, e.g. created_at as a float)."""
    events, name = [], None
    with httpx.stream("POST", srv.url + "/v1/responses", json=body, timeout=120) as stream:
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                events.append(json.loads(line[len("data: "):]))
                assert events[-1]["type"] == name  # the event line names what the data is
    return events


PARIS = {"instructions": "You are a helpful assistant.", "input": "What is the capital of France?",
         "temperature": 0, "max_output_tokens": 24}


def test_a_real_answer_plain_and_streamed_in_openais_shapes(real_server):
    with _client(real_server) as client:
        raw = client.responses.with_raw_response.create(model=SMOLLM2, **PARIS)
        response = raw.parse()
        events = list(client.responses.create(model=SMOLLM2, stream=True, **PARIS))
    assert_valid("Response", json.loads(raw.text))
    assert "Paris" in response.output_text and response.status == "completed"
    assert response.usage.input_tokens > 10 and 0 < response.usage.output_tokens <= 24
    raw_events = _raw_events(real_server, {"model": SMOLLM2, "stream": True, **PARIS})
    assert [event["type"] for event in raw_events] == [event.type for event in events]
    for event in raw_events:
        assert_valid(_event_schema(event["type"]), event)  # its own schema: an anyOf miss names no field
        assert_valid("ResponseStreamEvent", event)
    kinds = [event.type for event in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == response.output_text
    assert events[-1].response.output_text == response.output_text
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_a_cut_answer_is_incomplete_and_says_why(real_server):
    with _client(real_server) as client:
        response = client.responses.create(model=SMOLLM2, **{**PARIS, "max_output_tokens": 2})
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"


def test_a_json_schema_text_format_holds_the_answer(real_server):
    schema = {"type": "object", "properties": {"capital": {"type": "string", "maxLength": 20}},
              "required": ["capital"], "additionalProperties": False}
    with _client(real_server) as client:
        response = client.responses.create(model=SMOLLM2, **{**PARIS, "max_output_tokens": 32}, text={
            "format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}})
    assert set(json.loads(response.output_text)) == {"capital"}


def test_a_function_tool_round_trip_streamed_and_continued_by_previous_response_id(tool_server):
    question = "What is the weather in Paris?"
    with _client(tool_server, "sk-alice") as client:
        first = client.responses.create(model=TOOLCALL, input=question, tools=[WEATHER], max_output_tokens=200)
        call = next(item for item in first.output if item.type == "function_call")
        assert (call.name, json.loads(call.arguments)) == (TOOL_NAME, TOOL_ARGUMENTS) and call.call_id
        events = list(client.responses.create(model=TOOLCALL, input=question, tools=[WEATHER],
                                              max_output_tokens=200, stream=True))
        streamed = events[-1].response
        arguments = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
        assert json.loads(arguments) == TOOL_ARGUMENTS
        assert [item.type for item in streamed.output] == [item.type for item in first.output]
        # The tool's output goes back with previous_response_id: the stored conversation is not resent.
        second = client.responses.create(model=TOOLCALL, previous_response_id=first.id, tools=[WEATHER],
                                         max_output_tokens=16, input=[
                                             {"type": "function_call_output", "call_id": call.call_id,
                                              "output": "21 C"}])
        resent = client.responses.create(model=TOOLCALL, tools=[WEATHER], max_output_tokens=16, store=False,
                                         input=[{"role": "user", "content": question},
                                                *[item.model_dump(exclude_none=True) for item in first.output],
                                                {"type": "function_call_output", "call_id": call.call_id,
                                                 "output": "21 C"}])
        assert second.previous_response_id == first.id
        assert second.usage.input_tokens == resent.usage.input_tokens > first.usage.input_tokens
        assert client.responses.retrieve(first.id).output[0].model_dump() == first.output[0].model_dump()
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(resent.id)  # store: false
    with _client(tool_server, "sk-bob") as bob:  # another key sees none of it
        with pytest.raises(openai.NotFoundError):
            bob.responses.retrieve(first.id)
        with pytest.raises(openai.NotFoundError):
            bob.responses.create(model=TOOLCALL, previous_response_id=first.id, input="and?", max_output_tokens=2)
    with _client(tool_server, "sk-alice") as client:
        client.responses.delete(first.id)
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(first.id)


def test_bad_input_is_a_400_naming_the_field(tool_server):
    headers = {"Authorization": "Bearer sk-alice"}
    for body, param in (({"model": TOOLCALL}, "input"),
                        ({"model": TOOLCALL, "input": "x", "reasoning": {"effort": "high"}}, "reasoning.effort"),
                        ({"model": TOOLCALL, "input": "x", "max_output_tokens": 0}, "max_output_tokens")):
        refused = httpx.post(tool_server.url + "/v1/responses", json=body, headers=headers)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["param"] == param


def test_a_stateless_server_refuses_previous_response_id(server_factory):
    srv = server_factory(env={"MOLTBOT_DATA_DIR": ""})
    with _client(srv) as client:
        response = client.responses.create(model="tiny-chat", input="x", max_output_tokens=2)
        assert response.store is False
        with pytest.raises(openai.BadRequestError) as refused:
            client.responses.create(model="tiny-chat", input="x", previous_response_id=response.id)
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(response.id)
    assert "previous_response_id" in str(refused.value)
    assert not (srv.home / "data").exists()


# ---- live: an openai-agents agent -------------------------------------------------------------------------------
def test_an_openai_agents_agent_with_a_function_tool_runs_to_completion(tool_server):
    from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)  # no traces sent anywhere
    asked: list[dict[str, str]] = []

    @function_tool
    def get_weather(city: str, unit: str) -> str:
        """The weather in a city."""
        asked.append({"city": city, "unit": unit})
        return "21 degrees and sunny"

    async def run() -> str:
        client = openai.AsyncOpenAI(base_url=tool_server.url + "/v1", api_key="sk-alice", max_retries=0)
        agent = Agent(name="weather", instructions="Answer with the weather tool.", tools=[get_weather],
                      model=OpenAIResponsesModel(model=TOOLCALL, openai_client=client),
                      tool_use_behavior="stop_on_first_tool")
        result = await Runner.run(agent, "What is the weather in Paris?", max_turns=3)
        await client.close()
        return str(result.final_output)

    assert asyncio.run(run()) == "21 degrees and sunny"
    assert asked == [TOOL_ARGUMENTS]


def test_a_data_dir_that_cannot_be_made_leaves_the_server_serving_stateless(server_factory, tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    srv = server_factory(env={"MOLTBOT_DATA_DIR": str(blocker / "state")})
    with _client(srv) as client:
        assert client.responses.create(model="tiny-chat", input="x", max_output_tokens=2).store is False
    assert any("responses are not stored" in line for line in srv.lines)
