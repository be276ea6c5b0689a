"""The benchmark's load generator and /health prober (bench/loadgen.py) against a real `moltbot serve` with the
embedded tiny-chat model."""

import asyncio
import time

from bench.loadgen import HealthProbe, run_point

TOKENS = 8


def payload(prompt: str, model: str = "tiny-chat") -> dict:
    return {"model": model, "prompt": prompt, "max_tokens": TOKENS, "temperature": 0, "ignore_eos": True,
            "stream_options": {"include_usage": True}}


def test_closed_loop_point_counts_every_request_and_token(shared_server):
    payloads = [payload(f"Hello number {i}") for i in range(6)]
    point = asyncio.run(run_point(shared_server.url, payloads, concurrency=3))
    assert point.concurrency == 3
    assert point.statuses() == {200: 6}
    assert [r.tokens for r in point.results] == [TOKENS] * 6
    assert [r.usage_tokens for r in point.results] == [TOKENS] * 6  # from the usage block, not counted chunks
    assert point.short_requests(TOKENS) == []
    assert len(point.short_requests(TOKENS + 1)) == 6
    assert point.generated_tokens == 6 * TOKENS
    assert point.tokens_per_second == point.generated_tokens / point.wall_seconds
    for result in point.results:
        assert result.error is None
        assert 0 < result.ttft <= result.seconds
        assert len(result.gaps) <= TOKENS - 1
        assert all(gap >= 0 for gap in result.gaps)


def test_failed_requests_keep_their_status_and_error(shared_server):
    point = asyncio.run(run_point(shared_server.url, [payload("Hi", model="no-such-model")], concurrency=1))
    (result,) = point.results
    assert result.status == 404
    assert "no-such-model" in result.error
    assert point.generated_tokens == 0


def test_health_probe_samples_latencies(shared_server):
    with HealthProbe(shared_server.url + "/health", interval=0.01) as probe:
        time.sleep(1.0)
        data = probe.finish()
    assert data["failures"] == 0
    assert len(data["latencies"]) >= 5
    assert all(0 < latency < 5 for latency in data["latencies"])
