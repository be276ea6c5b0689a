"""The sampling parameters and log probabilities on a live server (tiny-chat: random weights, so any token is
possible), chat and completions, streamed and not, in OpenAI's response shapes; and no field a local model does
not honour is accepted."""

from __future__ import annotations

import asyncio
import json

import httpx
import jsonschema
import pytest

from tests.runtime.openai_schemas import assert_valid

CHAT = {"model": "tiny-chat", "messages": [{"role": "user", "content": "Tell me a story"}], "temperature": 0,
        "ignore_eos": True, "max_tokens": 12}
# tiny-chat's special tokens (ids 0-2) decode to no text: banned, so that every token's bytes are in the text.
NO_SPECIAL = {"logit_bias": {"0": -100, "1": -100, "2": -100}}
PROMPT_IDS = list(range(3, 400))  # many distinct tokens: a greedy continuation meets some of them again


def chunks_of(response: httpx.Response) -> list[dict]:
    assert response.status_code == 200, response.text
    events = [line[len("data: "):] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def joined_bytes(entries: list[dict]) -> bytes:
    return b"".join(bytes(entry["bytes"]) for entry in entries)


def assert_tokens_spell(entries: list[dict], text: str) -> None:
    """The tokens' bytes are the text: byte sequences that are no UTF-8 (random weights make them) stand as U+FFFD
    in it, and the last tokens may end inside a character that never came."""
    spelt = joined_bytes(entries).decode("utf-8", errors="replace")
    assert spelt.startswith(text) and set(spelt[len(text):]) <= {"\ufffd"}, (spelt, text)


def test_chat_logprobs_with_top_logprobs(client):
    reply = client.post("/v1/chat/completions", json={**CHAT, **NO_SPECIAL, "logprobs": True, "top_logprobs": 3})
    assert reply.status_code == 200, reply.text
    assert_valid("CreateChatCompletionResponse", reply.json())
    choice = reply.json()["choices"][0]
    content = choice["logprobs"]["content"]
    assert choice["logprobs"]["refusal"] is None
    assert len(content) == reply.json()["usage"]["completion_tokens"] == 12
    assert_tokens_spell(content, choice["message"]["content"])  # one entry per token, in order
    for entry in content:
        top = entry["top_logprobs"]
        assert len(top) == 3 and [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        # greedy, and the bias only lowered tokens nobody picked: the sampled token is the most likely one
        assert (top[0]["token"], top[0]["logprob"]) == (entry["token"], entry["logprob"])
        assert entry["logprob"] <= 0 and sum(2.718281828 ** t["logprob"] for t in top) <= 1.0001
    without = client.post("/v1/chat/completions", json={**CHAT, **NO_SPECIAL}).json()["choices"][0]
    assert without["logprobs"] is None and without["message"]["content"] == choice["message"]["content"]
    only_sampled = client.post("/v1/chat/completions", json={**CHAT, "logprobs": True}).json()["choices"][0]
    assert all(entry["top_logprobs"] == [] for entry in only_sampled["logprobs"]["content"])


def test_completion_logprobs(client):
    body = {"model": "tiny-chat", "prompt": "Once upon a time", "max_tokens": 10, "temperature": 0,
            "ignore_eos": True, **NO_SPECIAL}
    reply = client.post("/v1/completions", json={**body, "logprobs": 2})
    assert reply.status_code == 200, reply.text
    assert_valid("CreateCompletionResponse", reply.json())
    choice = reply.json()["choices"][0]
    logprobs, text = choice["logprobs"], choice["text"]
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == len(logprobs["text_offset"]) == 10
    assert logprobs["text_offset"][0] == 0 and logprobs["text_offset"] == sorted(logprobs["text_offset"])
    for token, logprob, top, offset in zip(logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"],
                                           logprobs["text_offset"], strict=True):
        assert top[token] == logprob  # the sampled token is among them: up to logprobs + 1 entries
        assert len(top) <= 3 and logprob == max(top.values())  # greedy: it is the most likely
        if not token.startswith("bytes:"):  # where it starts (after the U+FFFD of bytes before it that are no UTF-8)
            assert text[offset:].lstrip("\ufffd").startswith(token), (text, offset, token)
    zero = client.post("/v1/completions", json={**body, "logprobs": 0}).json()["choices"][0]["logprobs"]
    assert [list(top) for top in zero["top_logprobs"]] == [[token] for token in zero["tokens"]]
    assert client.post("/v1/completions", json=body).json()["choices"][0]["logprobs"] is None


def test_streamed_chunks_carry_the_logprobs_of_the_tokens_whose_text_they_carry(client):
    body = {**CHAT, **NO_SPECIAL, "logprobs": True, "top_logprobs": 2, "max_tokens": 16}
    chunks = chunks_of(client.post("/v1/chat/completions", json={**body, "stream": True}))
    streamed = []
    for chunk in chunks:
        assert_valid("CreateChatCompletionStreamResponse", chunk)
        for choice in chunk["choices"]:
            entries = (choice["logprobs"] or {}).get("content") or []
            assert_tokens_spell(entries, choice["delta"].get("content") or "")
            streamed += entries
    whole = client.post("/v1/chat/completions", json=body).json()["choices"][0]["logprobs"]["content"]
    assert streamed == whole and len(whole) == 16
    completion = {"model": "tiny-chat", "prompt": "Once", "max_tokens": 8, "temperature": 0, "ignore_eos": True,
                  "logprobs": 1, **NO_SPECIAL}
    pieces = chunks_of(client.post("/v1/completions", json={**completion, "stream": True}))
    tokens = [t for chunk in pieces for choice in chunk["choices"] for t in (choice["logprobs"] or {})["tokens"]]
    assert tokens == client.post("/v1/completions", json=completion).json()["choices"][0]["logprobs"]["tokens"]


def test_a_stop_string_cuts_the_logprobs_with_the_text(client):
    full = client.post("/v1/chat/completions", json={**CHAT, **NO_SPECIAL, "max_tokens": 20}).json()
    text = full["choices"][0]["message"]["content"]
    stop = text[len(text) // 2: len(text) // 2 + 3]
    cut = client.post("/v1/chat/completions", json={**CHAT, **NO_SPECIAL, "max_tokens": 20, "stop": [stop],
                                                     "logprobs": True}).json()["choices"][0]
    sent = cut["message"]["content"]
    assert cut["finish_reason"] == "stop" and sent == text[: text.index(stop)]
    # the tokens whose text was sent (the last one perhaps in part), none of the stop string's own
    entries = cut["logprobs"]["content"]
    assert joined_bytes(entries).decode(errors="replace").startswith(sent)
    before_last = joined_bytes(entries[:-1]).decode(errors="replace")
    assert sent.startswith(before_last) and len(before_last) < len(sent)  # the last one starts before the cut


def test_penalties_change_the_greedy_output_and_leave_the_raw_logprobs(client):
    body = {"model": "tiny-chat", "prompt": PROMPT_IDS, "max_tokens": 24, "temperature": 0, "ignore_eos": True,
            "logprobs": 5}
    plain = client.post("/v1/completions", json=body).json()["choices"][0]
    penalised = client.post("/v1/completions", json={**body, "repetition_penalty": 2.0}).json()["choices"][0]
    assert penalised["text"] != plain["text"]
    first = plain["logprobs"]["tokens"][0]
    # the first position's raw log probabilities, whatever the penalty did to the choice: the greedy token is the
    # most likely one there, with the same log probability
    assert penalised["logprobs"]["top_logprobs"][0][first] == plain["logprobs"]["token_logprobs"][0]
    assert plain["logprobs"]["top_logprobs"][0].items() <= penalised["logprobs"]["top_logprobs"][0].items()
    presence = client.post("/v1/completions", json={**body, "presence_penalty": 2.0, "frequency_penalty": 2.0,
                                                     "max_tokens": 60}).json()["choices"][0]
    assert presence["text"] != client.post("/v1/completions", json={**body, "max_tokens": 60}).json()[
        "choices"][0]["text"]
    forced = client.post("/v1/completions", json={**body, "logit_bias": {"3": 100}}).json()["choices"][0]
    assert forced["text"] == "!" * 24  # token 3 is "!": +100 makes it the choice every time
    assert max(forced["logprobs"]["token_logprobs"]) < -1  # yet the model itself finds it unlikely (raw logprobs)


def test_top_k_one_is_greedy_at_any_temperature(client):
    greedy = client.post("/v1/chat/completions", json=CHAT).json()["choices"][0]["message"]["content"]
    for seed in (1, 2):
        hot = client.post("/v1/chat/completions", json={**CHAT, "temperature": 1.5, "top_k": 1, "seed": seed})
        assert hot.json()["choices"][0]["message"]["content"] == greedy
    drawn = {client.post("/v1/chat/completions", json={**CHAT, "temperature": 1.5, "seed": seed, "min_p": 0.0})
             .json()["choices"][0]["message"]["content"] for seed in (1, 2)}
    assert drawn != {greedy}


@pytest.mark.parametrize("extra,param,words", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "frob"}}}},
     "response_format", "cannot be compiled to a grammar: Invalid type: frob"),
    ({"structured_outputs": {"regex": "[a-"}}, "structured_outputs", "unclosed character class"),
    ({"guided_json": {"type": "object"}}, "guided_json", "Unrecognized request argument supplied: guided_json"),
    ({"reasoning_effort": "high"}, "reasoning_effort", "Unrecognized request argument"),
])
def test_what_a_local_model_does_not_honour_is_a_400_naming_it(client, extra, param, words):
    for stream in (False, True):
        reply = client.post("/v1/chat/completions", json={**CHAT, **extra, "stream": stream})
        assert reply.status_code == 400, reply.text
        error = reply.json()["error"]
        assert error["param"] == param and words in error["message"], error
    completion = client.post("/v1/completions", json={"model": "tiny-chat", "prompt": "x", "max_tokens": 1,
                                                      "guided_regex": "a+"})
    assert completion.status_code == 400 and completion.json()["error"]["param"] == "guided_regex"
    embedding = client.post("/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": "x", "truncate": True})
    assert embedding.status_code == 400 and embedding.json()["error"]["param"] == "truncate"


def test_metadata_and_what_asks_for_nothing_are_taken(client):
    taken = {"user": "u-1", "metadata": {"team": "a"}, "store": False, "safety_identifier": "s",
             "prompt_cache_key": "k", "response_format": {"type": "text"}, "parallel_tool_calls": False,
             "top_k": -1, "min_p": 0, "repetition_penalty": 1, "presence_penalty": 0, "logprobs": False}
    reply = client.post("/v1/chat/completions", json={**CHAT, **taken})
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] == client.post(
        "/v1/chat/completions", json=CHAT).json()["choices"][0]["message"]["content"]


def test_the_document_declares_the_fields_as_the_server_takes_them(client):
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    chat, completion = schemas["ChatCompletionRequest"], schemas["CompletionRequest"]
    assert chat["additionalProperties"] is False and completion["additionalProperties"] is False
    assert schemas["EmbeddingRequest"]["additionalProperties"] is False
    for name in ("top_k", "min_p", "repetition_penalty", "presence_penalty", "logit_bias", "top_logprobs"):
        assert name in chat["properties"], name
    formats = chat["properties"]["response_format"]["anyOf"][0]["oneOf"]
    assert {"$ref": "#/components/schemas/JsonSchemaFormat"} in formats  # constrained decoding: enforced
    ids = chat["properties"]["logit_bias"]["anyOf"][0]["propertyNames"]["pattern"]
    assert "741" in ids  # tiny-chat's highest token id: the vocabulary bounds the keys


STORY = {"type": "object", "properties": {"title": {"type": "string", "maxLength": 10},
                                         "rating": {"type": "integer", "minimum": 1, "maximum": 5}},
         "required": ["title", "rating"], "additionalProperties": False}


def test_a_plugins_chat_goes_through_the_same_validator_and_gets_logprobs(tmp_path, defaults_dir):
    from moltbot.engine.errors import InvalidRequest
    from tests.plugins.plugin_models import real_registry

    registry = real_registry(tmp_path, defaults_dir)  # what a plugin's context.models calls
    messages = [{"role": "user", "content": "Tell me a story"}]

    async def scenario():
        try:
            reply = await registry.chat(messages, model="tiny-chat", max_tokens=4, ignore_eos=True, logprobs=True,
                                        top_logprobs=2, top_k=40, repetition_penalty=1.3)
            refusals = []
            for options in ({"top_k": -3}, {"logit_bias": {"99999": 1}}, {"response_format": "json_schema"}):
                try:
                    await registry.chat(messages, model="tiny-chat", max_tokens=1, **options)
                except InvalidRequest as exc:
                    refusals.append(exc.param)
            structured = await registry.chat(messages, model="tiny-chat", max_tokens=200, temperature=1.0, seed=5,
                                             response_format={"type": "json_schema", "json_schema": {
                                                 "name": "story", "schema": STORY, "strict": True}})
            return reply, refusals, structured
        finally:
            await registry.close()

    reply, refusals, structured = asyncio.run(scenario())
    assert structured["finish_reason"] == "stop"
    jsonschema.validate(json.loads(structured["content"]), STORY)  # the random model, held to the schema
    assert len(reply["logprobs"]) == reply["usage"]["completion_tokens"] == 4
    assert all(len(entry["top_logprobs"]) == 2 for entry in reply["logprobs"])
    assert refusals == ["top_k", "logit_bias", "response_format"]
