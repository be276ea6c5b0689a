"""Backends in process: a service model's upstream replies become the same typed events as a local model's, and
the serving layer turns them into chunks that carry the served model name."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from moltbot.api.protocol import ChatCompletionRequest, CompletionRequest
from moltbot.api.serving import OpenAIServing, RequestStats
from moltbot.engine.backend import ChatInput, ChoiceDelta, Usage, collect
from moltbot.engine.backends.service import ServiceBackend
from moltbot.engine.config import ModelConfig
from moltbot.engine.errors import InvalidRequest, UpstreamError
from moltbot.engine.registry import ModelRegistry
from moltbot.engine.validation import SamplingRequest
from moltbot.settings import Settings

CONFIG = ModelConfig.from_dict({"name": "served-name", "backend": "service", "base_url": "http://upstream/v1",
                                "model": "upstream-name"})


def sse(*chunks: dict) -> bytes:
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def chunk(delta: dict, finish: str | None = None) -> dict:
    return {"id": "up-1", "object": "chat.completion.chunk", "model": "upstream-name",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


STREAM = sse(
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Hel"}),
    chunk({"content": "lo"}),
    chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                           "function": {"name": "echo", "arguments": '{"wo'}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'rd": 1}'}}]}, "tool_calls"),
    {"id": "up-1", "object": "chat.completion.chunk", "model": "upstream-name", "choices": [],
     "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}},
)
REPLY = {"id": "up-2", "object": "chat.completion", "model": "upstream-name",
         "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}],
         "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}


def backend_answering(handler) -> tuple[ServiceBackend, list[dict]]:
    """A service backend whose upstream is `handler(payload) -> httpx.Response`; returns the payloads it got."""
    sent: list[dict] = []

    def transport(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return handler(sent[-1])

    backend = ServiceBackend.load(CONFIG, None, Settings())
    backend.client._client = httpx.AsyncClient(base_url="http://upstream/v1/",
                                               transport=httpx.MockTransport(transport))
    return backend, sent


def chat_input(stream: bool, **sampling) -> ChatInput:
    messages = [{"role": "user", "content": "hi"}]
    return ChatInput(messages, SamplingRequest(**sampling), stream=stream,
                     openai_body={"messages": messages, "stream": stream, **sampling})


async def run(backend: ServiceBackend, request: ChatInput):
    generation = await backend.chat(request)
    try:
        return [event async for event in generation]
    finally:
        await generation.aclose()


def test_streamed_replies_become_typed_events():
    backend, sent = backend_answering(lambda _: httpx.Response(200, content=STREAM,
                                                               headers={"content-type": "text/event-stream"}))
    events = asyncio.run(run(backend, chat_input(stream=True, max_tokens=4)))
    assert sent == [{"messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 4,
                     "model": "upstream-name"}]
    assert [e.text for e in events if isinstance(e, ChoiceDelta)] == ["Hel", "lo", "", ""]
    assert events[-1] == Usage(5, 4)

    async def collected():
        return await collect(await backend.chat(chat_input(stream=True)))

    result = asyncio.run(collected())
    [choice] = result.choices
    assert choice.text == "Hello" and choice.finish_reason == "tool_calls"
    assert [c.as_openai() for c in choice.tool_calls] == [
        {"id": "call_1", "type": "function", "function": {"name": "echo", "arguments": '{"word": 1}'}}]


def test_a_reply_that_is_not_streamed_becomes_the_same_events():
    backend, sent = backend_answering(lambda _: httpx.Response(200, json=REPLY))
    events = asyncio.run(run(backend, chat_input(stream=False)))
    assert events == [ChoiceDelta(0, "Hello", finish_reason="stop"), Usage(5, 2)]
    assert sent[0]["stream"] is False


def test_upstream_errors_are_raised_before_any_event():
    body = {"error": {"message": "max_tokens too large", "type": "invalid_request_error", "param": "max_tokens",
                      "code": None}}
    backend, _ = backend_answering(lambda _: httpx.Response(400, json=body))
    for stream in (True, False):
        with pytest.raises(UpstreamError) as failed:
            asyncio.run(backend.chat(chat_input(stream=stream)))
        assert (failed.value.status, failed.value.body) == (400, body)


def test_an_error_in_the_middle_of_a_stream_and_a_garbled_body_are_upstream_errors():
    broken = sse(chunk({"content": "Hel"}), {"error": {"message": "overloaded", "type": "server_error"}})
    backend, _ = backend_answering(lambda _: httpx.Response(200, content=broken))
    with pytest.raises(UpstreamError) as failed:
        asyncio.run(run(backend, chat_input(stream=True)))
    assert failed.value.body["error"]["message"] == "overloaded"
    backend, _ = backend_answering(lambda _: httpx.Response(200, json={"unexpected": True}))
    with pytest.raises(UpstreamError) as garbled:
        asyncio.run(run(backend, chat_input(stream=False)))
    assert garbled.value.status == 502


def test_the_validator_runs_before_the_upstream_is_called():
    backend, sent = backend_answering(lambda _: httpx.Response(200, json=REPLY))
    with pytest.raises(InvalidRequest) as refused:
        asyncio.run(backend.chat(chat_input(stream=False, top_logprobs=3)))  # needs logprobs: true
    assert refused.value.param == "top_logprobs" and sent == []


LOGPROBS = {"content": [{"token": "Hel", "logprob": -0.5, "bytes": [72, 101, 108],
                         "top_logprobs": [{"token": "Hel", "logprob": -0.5, "bytes": [72, 101, 108]},
                                          {"token": "Hi", "logprob": -1.5, "bytes": None}]}], "refusal": None}


def test_the_sampling_fields_reach_the_upstream_and_its_logprobs_come_back():
    """A service model's upstream gets the sampling fields (extensions such as top_k too: a strict upstream
    refuses them itself) and its log probabilities reach the client: none is dropped on the way."""
    fields = {"logprobs": True, "top_logprobs": 2, "presence_penalty": 0.5, "frequency_penalty": -0.5,
              "logit_bias": {"7": -100.0}, "top_k": 5, "min_p": 0.1, "repetition_penalty": 1.2}
    reply = {**REPLY, "choices": [{**REPLY["choices"][0], "logprobs": LOGPROBS}]}
    backend, sent = backend_answering(lambda _: httpx.Response(200, json=reply))
    events = asyncio.run(run(backend, chat_input(stream=False, **fields)))
    assert {k: sent[0][k] for k in fields} == fields
    [token] = events[0].logprobs
    assert token.as_openai() == LOGPROBS["content"][0]
    streamed = sse({**chunk({"content": "Hel"}), "choices": [{"index": 0, "delta": {"content": "Hel"},
                                                              "logprobs": LOGPROBS, "finish_reason": "stop"}]})
    backend, _ = backend_answering(lambda _: httpx.Response(200, content=streamed))
    [delta, *_] = asyncio.run(run(backend, chat_input(stream=True, logprobs=True)))
    assert [t.as_openai() for t in delta.logprobs] == LOGPROBS["content"]


def test_streamed_service_chunks_carry_the_served_model_name():
    backend, _ = backend_answering(lambda _: httpx.Response(200, content=STREAM))
    registry = ModelRegistry(Settings())
    registry.models["served-name"] = backend
    serving = OpenAIServing(registry, Settings())
    request = ChatCompletionRequest.model_validate({
        "model": "served-name", "messages": [{"role": "user", "content": "hi"}], "stream": True,
        "stream_options": {"include_usage": True}})

    async def chunks():
        stream = await serving.chat_stream(request, RequestStats())
        try:
            return [c async for c in stream]
        finally:
            await stream.aclose()

    got = asyncio.run(chunks())
    assert {c["model"] for c in got} == {"served-name"}
    assert got[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in got if c["choices"]) == "Hello"
    calls = [call for c in got if c["choices"] for call in c["choices"][0]["delta"].get("tool_calls", [])]
    assert calls[0] == {"index": 0, "id": "call_1", "type": "function",
                        "function": {"name": "echo", "arguments": '{"wo'}}
    assert got[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}


def test_a_service_completions_logprobs_come_back_as_the_upstream_sent_them():
    logprobs = {"tokens": ["Hel", "lo"], "token_logprobs": [-0.5, -0.25],
                "top_logprobs": [{"Hel": -0.5, "Hi": -1.5}, {"lo": -0.25, "p": -2.0}], "text_offset": [0, 3]}
    reply = {"id": "up-3", "object": "text_completion", "model": "upstream-name",
             "choices": [{"index": 0, "text": "Hello", "logprobs": logprobs, "finish_reason": "length"}],
             "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}
    backend, sent = backend_answering(lambda _: httpx.Response(200, json=reply))
    registry = ModelRegistry(Settings())
    registry.models["served-name"] = backend
    request = CompletionRequest.model_validate({"model": "served-name", "prompt": "x", "logprobs": 1})
    answer = asyncio.run(OpenAIServing(registry, Settings()).completion(request, RequestStats()))
    assert sent[0]["logprobs"] == 1
    assert answer["choices"][0]["logprobs"] == logprobs
