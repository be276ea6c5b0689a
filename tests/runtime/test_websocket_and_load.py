"""WebSocket chat, 429 with Retry-After under overload, disconnects freeing slots, probes under load."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import websockets


def ws_url(srv) -> str:
    return f"ws://127.0.0.1:{srv.port}/v1/ws"


def test_websocket_streams_deltas_then_the_final_message(shared_server):
    async def scenario():
        async with websockets.connect(ws_url(shared_server)) as ws:
            request = {"model": "tiny-chat", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 5,
                       "temperature": 0, "ignore_eos": True, "stream_options": {"include_usage": True}}
            await ws.send(json.dumps(request))
            chunks, final = [], None
            while final is None:
                message = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if message["type"] == "chunk":
                    chunks.append(message["data"])
                else:
                    assert message["type"] == "done", message
                    final = message["data"]
            await ws.send("not json")
            error = json.loads(await ws.recv())
            await ws.send(json.dumps({"model": "nope", "messages": [{"role": "user", "content": "x"}]}))
            missing = json.loads(await ws.recv())
            await ws.send(json.dumps(request))  # the socket stays usable
            while json.loads(await ws.recv())["type"] != "done":
                pass
            return chunks, final, error, missing

    chunks, final, error, missing = asyncio.run(scenario())
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert final["choices"][0]["message"]["content"] == streamed
    assert final["choices"][0]["finish_reason"] == "length"
    assert final["usage"]["completion_tokens"] == 5
    direct = httpx.post(shared_server.url + "/v1/chat/completions", json={
        "model": "tiny-chat", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 5,
        "temperature": 0, "ignore_eos": True}).json()
    assert streamed == direct["choices"][0]["message"]["content"]
    assert error["type"] == "error" and error["error"]["code"] == "invalid_json"
    assert missing["status"] == 404 and missing["error"]["code"] == "model_not_found"


def test_websocket_needs_a_key_when_keys_are_set(server_factory):
    srv = server_factory(env={"MOLTBOT_API_KEYS": "ws-key"})

    async def scenario():
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            async with websockets.connect(ws_url(srv)):
                pass
        assert refused.value.response.status_code == 401
        async with websockets.connect(ws_url(srv), additional_headers={"Authorization": "Bearer ws-key"}) as ws:
            await ws.send(json.dumps({"model": "tiny-chat", "messages": [{"role": "user", "content": "x"}],
                                      "max_tokens": 2}))
            while json.loads(await ws.recv())["type"] != "done":
                pass

    asyncio.run(scenario())


def test_overload_gets_429_with_retry_after_and_probes_stay_fast(server_factory):
    srv = server_factory(env={"MOLTBOT_MAX_RUNNING": "2", "MOLTBOT_MAX_QUEUED": "2"})
    body = {"model": "tiny-chat", "messages": [{"role": "user", "content": "x"}], "max_tokens": 400,
            "ignore_eos": True}

    async def scenario():
        async with httpx.AsyncClient(base_url=srv.url, timeout=120,
                                     limits=httpx.Limits(max_connections=64)) as c:
            tasks = [asyncio.create_task(c.post("/v1/chat/completions", json=body)) for _ in range(12)]
            probe_times = []
            for _ in range(20):  # bounded
                started = time.monotonic()
                assert (await c.get("/health")).status_code == 200
                probe_times.append(time.monotonic() - started)
                await asyncio.sleep(0.01)
            responses = await asyncio.gather(*tasks)
            metrics = (await c.get("/metrics")).text
            return responses, probe_times, metrics

    responses, probe_times, metrics = asyncio.run(scenario())
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) == {200, 429}, statuses
    assert statuses.count(200) >= 4
    rejected = next(r for r in responses if r.status_code == 429)
    assert int(rejected.headers["Retry-After"]) >= 1
    assert rejected.json()["error"]["code"] == "queue_full"
    assert max(probe_times) < 2.0  # answered while the model is saturated (a liveness bound, not a benchmark)
    assert 'moltbot_rejected_requests_total{model="tiny-chat"}' in metrics


def generated_tokens(srv) -> float:
    for line in httpx.get(srv.url + "/metrics").text.splitlines():
        if line.startswith('moltbot_generation_tokens_total{model="tiny-chat"}'):
            return float(line.split()[-1])
    return 0.0


def test_a_client_that_goes_away_frees_its_slot(server_factory):
    srv = server_factory(env={"MOLTBOT_MAX_RUNNING": "1", "MOLTBOT_MAX_QUEUED": "0"})
    long_body = {"model": "tiny-chat", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1900,
                 "ignore_eos": True, "stream": True}
    with httpx.stream("POST", srv.url + "/v1/chat/completions", json=long_body, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: {") and '"content":""' not in line:
                break  # leave after the first token
    time.sleep(1.0)
    generated = generated_tokens(srv)
    assert generated < 1500  # the abandoned request stopped long before its 1900 tokens
    time.sleep(0.5)
    assert generated_tokens(srv) == generated  # and generates nothing more
    deadline = time.monotonic() + 10
    status = None
    while time.monotonic() < deadline:
        status = httpx.post(srv.url + "/v1/chat/completions", timeout=60, json={
            "model": "tiny-chat", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}).status_code
        if status == 200:
            break
        time.sleep(0.05)
    assert status == 200
    metrics = httpx.get(srv.url + "/metrics").text
    assert 'moltbot_running_requests{model="tiny-chat"} 0.0' in metrics
