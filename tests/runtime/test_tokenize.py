"""`/tokenize` and `/detokenize` on a live server: the counts are the ones the model's own requests report (the
chat template rendered as the backend renders it), text survives the round trip, and bad input is a 4xx."""

from __future__ import annotations

import httpx
import pytest

from tests.runtime.live_models import CHAT, EMBED

MESSAGES = [{"role": "system", "content": "You are brief."}, {"role": "user", "content": "Name three colours."}]
TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "Looks a word up",
                                           "parameters": {"type": "object", "properties": {"word": {"type": "string"}}}}}]


def test_a_chat_prompt_counts_as_many_tokens_as_the_chat_request_reports(client: httpx.Client):
    for tools in (None, TOOLS):
        extra = {"tools": tools} if tools else {}
        counted = client.post("/tokenize", json={"model": CHAT, "messages": MESSAGES, **extra}).json()
        reply = client.post("/v1/chat/completions", json={"model": CHAT, "messages": MESSAGES, "max_tokens": 1,
                                                          **extra}).json()
        assert counted["count"] == len(counted["tokens"]) == reply["usage"]["prompt_tokens"]
        assert counted["max_model_len"] > counted["count"]
    without_tools = client.post("/tokenize", json={"model": CHAT, "messages": MESSAGES}).json()["count"]
    assert client.post("/tokenize", json={"model": CHAT, "messages": MESSAGES,
                                          "add_generation_prompt": False}).json()["count"] < without_tools


def test_a_plain_prompt_counts_as_a_completion_reports_and_detokenizes_back(client: httpx.Client):
    text = "Héllo wörld, 12345 \t  spaces\n```python\nprint('x')\n```"
    counted = client.post("/tokenize", json={"model": CHAT, "prompt": text, "return_token_strs": True}).json()
    reply = client.post("/v1/completions", json={"model": CHAT, "prompt": text, "max_tokens": 1}).json()
    assert counted["count"] == reply["usage"]["prompt_tokens"]
    assert len(counted["token_strs"]) == counted["count"]
    plain = client.post("/tokenize", json={"model": CHAT, "prompt": text, "add_special_tokens": False}).json()
    assert client.post("/detokenize", json={"model": CHAT, "tokens": plain["tokens"]}).json() == {"prompt": text}


@pytest.mark.parametrize(("path", "body", "status", "param"), [
    ("/tokenize", {"model": CHAT}, 400, "prompt"),
    ("/tokenize", {"model": CHAT, "prompt": "x", "messages": MESSAGES}, 400, "prompt"),
    ("/tokenize", {"model": CHAT, "prompt": "x", "tools": TOOLS}, 400, "tools"),
    ("/tokenize", {"model": CHAT, "prompt": 5}, 400, "prompt"),
    ("/tokenize", {"model": CHAT, "prompt": "x", "unknown": 1}, 400, "unknown"),
    ("/tokenize", {"model": EMBED, "prompt": "x"}, 400, "model"),
    ("/tokenize", {"model": "no-such-model", "prompt": "x"}, 404, "model"),
    ("/detokenize", {"model": CHAT, "tokens": [1, 10_000_000]}, 400, "tokens"),
    ("/detokenize", {"model": CHAT, "tokens": [-1]}, 400, "tokens"),
    ("/detokenize", {"model": CHAT, "tokens": ["a"]}, 400, "tokens.0"),
])
def test_bad_input_is_a_4xx_naming_the_field(client: httpx.Client, path, body, status, param):
    refused = client.post(path, json=body)
    assert refused.status_code == status, refused.text
    assert refused.json()["error"]["param"] == param


def test_they_need_a_key_when_keys_are_set(server_factory):
    srv = server_factory(env={"MOLTBOT_API_KEYS": "sk-tokenize-test"})
    body = {"model": CHAT, "prompt": "hello"}
    assert httpx.post(srv.url + "/tokenize", json=body).status_code == 401
    assert httpx.post(srv.url + "/detokenize", json={"model": CHAT, "tokens": [1]}).status_code == 401
    ok = httpx.post(srv.url + "/tokenize", json=body, headers={"Authorization": "Bearer sk-tokenize-test"})
    assert ok.status_code == 200 and ok.json()["count"] > 0
