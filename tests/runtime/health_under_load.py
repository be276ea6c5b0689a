"""/health latency while a model is busy: `streams` long streamed completions run, then a burst of `burst` short
requests arrives at once; a separate process (bench.loadgen.HealthProbe) samples GET /health every 20 ms the
whole time. Returns the figures; the tests print them (a benchmark, not a timed assert).

    python -m tests.runtime.health_under_load URL MODEL     (the same scenario against any running server)
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections import Counter
from typing import Any

import httpx

from bench.loadgen import HealthProbe
from bench.stats import percentile


async def _scenario(url: str, model: str, streams: int, burst: int, stream_tokens: int,
                    burst_tokens: int) -> Counter[int]:
    limits = httpx.Limits(max_connections=streams + burst + 8, max_keepalive_connections=streams + burst + 8)
    statuses: Counter[int] = Counter()
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        first_token = asyncio.Event()
        started = 0

        async def stream(i: int) -> None:
            nonlocal started
            body = {"model": model, "stream": True, "max_tokens": stream_tokens, "ignore_eos": True,
                    "temperature": 0, "messages": [{"role": "user", "content": f"Tell me a story about {i}."}]}
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                statuses[response.status_code] += 1
                async for _ in response.aiter_lines():
                    if not first_token.is_set():
                        started += 1
                        if started >= streams:
                            first_token.set()

        async def short(i: int) -> None:
            body = {"model": model, "max_tokens": burst_tokens, "ignore_eos": True,
                    "messages": [{"role": "user", "content": f"Say {i}."}]}
            statuses[(await client.post("/v1/chat/completions", json=body)).status_code] += 1

        running = [asyncio.create_task(stream(i)) for i in range(streams)]
        with contextlib.suppress(TimeoutError):  # wait until the streams are decoding (bounded)
            await asyncio.wait_for(first_token.wait(), 120)
        await asyncio.gather(*(short(i) for i in range(burst)))
        await asyncio.gather(*running)
    return statuses


def measure(url: str, model: str, streams: int = 32, burst: int = 256, stream_tokens: int = 96,
            burst_tokens: int = 8) -> dict[str, Any]:
    started = time.monotonic()
    with HealthProbe(url + "/health") as probe:
        time.sleep(0.3)
        statuses = asyncio.run(_scenario(url, model, streams, burst, stream_tokens, burst_tokens))
        health = probe.finish()
    latencies = health["latencies"]
    return {"statuses": dict(statuses), "probes": len(latencies), "probe_failures": health["failures"],
            "p50_ms": 1000 * percentile(latencies, 50), "p99_ms": 1000 * percentile(latencies, 99),
            "max_ms": 1000 * max(latencies), "seconds": time.monotonic() - started}


def describe(model: str, figures: dict[str, Any]) -> str:
    return (f"{model}: /health p50 {figures['p50_ms']:.1f} ms, p99 {figures['p99_ms']:.1f} ms, max "
            f"{figures['max_ms']:.0f} ms over {figures['probes']} probes ({figures['probe_failures']} failed) while "
            f"32 streams ran and 256 requests arrived; statuses {figures['statuses']}; {figures['seconds']:.0f} s")


if __name__ == "__main__":
    print(describe(sys.argv[2], measure(sys.argv[1], sys.argv[2])))
