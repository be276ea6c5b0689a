"""Every malformed request gets its 4xx JSON error in OpenAI's shape, and the server stays healthy."""

from __future__ import annotations

import pytest

CHAT = "/v1/chat/completions"
GOOD = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def assert_error(response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param, error
    assert response.headers.get("x-request-id")
    return error


BAD_BODIES = [
    ({**GOOD, "max_tokens": 0}, "max_tokens"),
    ({**GOOD, "max_tokens": -5}, "max_tokens"),
    ({**GOOD, "max_tokens": "ten"}, "max_tokens"),
    ({**GOOD, "max_tokens": 1.5}, "max_tokens"),
    ({**GOOD, "max_tokens": 10**6}, "max_tokens"),  # beyond the model's context
    ({**GOOD, "messages": []}, "messages"),
    ({**GOOD, "messages": "hi"}, "messages"),
    ({**GOOD, "messages": [{"content": "no role"}]}, "messages.0.role"),
    ({**GOOD, "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    ({**GOOD, "messages": [{"role": "user"}]}, "messages.0"),
    ({**GOOD, "messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
    ({**GOOD, "temperature": 2.5}, "temperature"),
    ({**GOOD, "temperature": -0.1}, "temperature"),
    ({**GOOD, "top_p": 0}, "top_p"),
    ({**GOOD, "n": 0}, "n"),
    ({**GOOD, "seed": 2**70}, "seed"),
    ({**GOOD, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({**GOOD, "seed": "abc"}, "seed"),
    ({**GOOD, "stream": "yes please"}, "stream"),
    ({**GOOD, "logprobs": 1}, "logprobs"),  # a boolean in chat
    ({**GOOD, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({**GOOD, "top_logprobs": 2}, "top_logprobs"),  # without logprobs: true
    ({**GOOD, "presence_penalty": 2.5}, "presence_penalty"),
    ({**GOOD, "frequency_penalty": "1"}, "frequency_penalty"),
    ({**GOOD, "repetition_penalty": 0}, "repetition_penalty"),
    ({**GOOD, "top_k": 1.5}, "top_k"),
    ({**GOOD, "min_p": 1.5}, "min_p"),
    ({**GOOD, "logit_bias": {"5": 101}}, "logit_bias.5"),
    ({**GOOD, "logit_bias": {"99999": 1}}, "logit_bias"),  # not in the model's vocabulary
    ({**GOOD, "logit_bias": {"five": 1}}, "logit_bias.five"),
    ({**GOOD, "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "frob"}}}},
     "response_format"),  # llguidance cannot compile it
    ({**GOOD, "structured_outputs": {"regex": "a", "grammar": "start: \"a\""}}, "structured_outputs"),
    ({**GOOD, "response_format": {"type": "xml"}}, "response_format"),
    ({**GOOD, "store": True}, "store"),
    ({**GOOD, "guided_json": {"type": "object"}}, "guided_json"),  # no field the API does not know is ignored
    ({k: v for k, v in GOOD.items() if k != "model"}, "model"),
    ({k: v for k, v in GOOD.items() if k != "messages"}, "messages"),
]


@pytest.mark.parametrize("body,param", BAD_BODIES, ids=[f"{i}-{p}" for i, (_, p) in enumerate(BAD_BODIES)])
def test_invalid_chat_fields_are_400(client, body, param):
    assert_error(client.post(CHAT, json=body), 400, param)


@pytest.mark.parametrize("body,param", [
    ({"model": "tiny-chat", "prompt": []}, "prompt"),
    ({"model": "tiny-chat", "prompt": 12}, "prompt"),
    ({"model": "tiny-chat", "prompt": "x", "echo": True}, "echo"),
    ({"model": "tiny-chat", "prompt": "x", "logprobs": 6}, "logprobs"),  # OpenAI's bound: 5
    ({"model": "tiny-chat", "prompt": "x", "logprobs": True}, "logprobs"),  # a number in completions
    ({"model": "tiny-chat", "prompt": "x", "best_of": 2}, "best_of"),
    # more sequences than the model ever takes at once (max_running 32 + max_queued 128)
    ({"model": "tiny-chat", "prompt": ["a"] * 11, "n": 16, "max_tokens": 1}, "n"),
])
def test_invalid_completion_fields_are_400(client, body, param):
    assert_error(client.post("/v1/completions", json=body), 400, param)


@pytest.mark.parametrize("body,param", [
    ({"model": "all-minilm-l6-v2", "input": ""}, "input"),
    ({"model": "all-minilm-l6-v2", "input": []}, "input"),
    ({"model": "all-minilm-l6-v2", "input": [1, "a"]}, "input"),  # neither text nor token ids
    ({"model": "all-minilm-l6-v2", "input": "x", "encoding_format": "hex"}, "encoding_format"),
    ({"model": "all-minilm-l6-v2", "input": "x", "dimensions": 12}, "dimensions"),
    ({"model": "all-minilm-l6-v2", "input": "x", "truncate": True}, "truncate"),
])
def test_invalid_embedding_fields_are_400(client, body, param):
    assert_error(client.post("/v1/embeddings", json=body), 400, param)


def test_body_that_is_not_json_is_400(client):
    response = client.post(CHAT, content=b'{"model": "tiny-chat", "messages": [', headers={"content-type": "application/json"})
    assert assert_error(response, 400)["code"] == "invalid_json"
    assert_error(client.post(CHAT, content=b"[1, 2]", headers={"content-type": "application/json"}), 400)
    assert_error(client.post(CHAT, content=b"\xff\xfe", headers={"content-type": "application/json"}), 400)


def test_body_that_is_not_declared_json_is_415(client):
    assert_error(client.post(CHAT, content=b"model=tiny-chat", headers={"content-type": "text/plain"}), 415)
    assert_error(client.post(CHAT, content=b"{}", headers={"content-type": "application/x-www-form-urlencoded"}), 415)


def test_unknown_model_and_route_are_404(client):
    assert assert_error(client.post(CHAT, json={**GOOD, "model": "nope"}), 404, "model")["code"] == "model_not_found"
    assert_error(client.get("/v1/nothing-here"), 404)
    assert_error(client.get("/v1/models/nope"), 404)


def test_wrong_method_is_405(client):
    error = assert_error(client.get(CHAT), 405)
    assert error["code"] == "method_not_allowed"
    assert_error(client.delete("/v1/models"), 405)


def test_body_over_the_limit_is_413(client):
    huge = {**GOOD, "messages": [{"role": "user", "content": "x" * (5 * 1024 * 1024)}]}
    assert_error(client.post(CHAT, json=huge), 413)


def test_prompt_longer_than_the_context_is_400(client):
    long_prompt = {**GOOD, "messages": [{"role": "user", "content": "word " * 3000}]}
    assert assert_error(client.post(CHAT, json=long_prompt), 400)["code"] == "context_length_exceeded"


def test_server_stays_healthy_after_all_of_it(client):
    for body, _ in BAD_BODIES:
        client.post(CHAT, json=body)
    assert client.get("/health").status_code == 200
    assert client.get("/ready").status_code == 200
    ok = client.post(CHAT, json=GOOD)
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] >= 1
    metrics = client.get("/metrics").text
    assert 'status="500"' not in metrics


def test_request_id_is_echoed_or_made(client):
    assert client.get("/health", headers={"x-request-id": "abc-123"}).headers["x-request-id"] == "abc-123"
    made = client.get("/health").headers["x-request-id"]
    assert len(made) == 32 and made != client.get("/health").headers["x-request-id"]
