"""A bounded async load generator over OpenAI-compatible streaming completions (httpx), and a /health prober.

Every request streams `/v1/completions` and records: HTTP status, time to first token (first chunk with text),
the gaps between text chunks (inter-token latency), generated tokens (the usage block when the server sends
one, else the count of text chunks; both are kept) and the request's wall time.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import time
from dataclasses import dataclass, field

import httpx

REQUEST_TIMEOUT = 600.0


@dataclass
class RequestResult:
    status: int
    ttft: float | None = None
    gaps: list[float] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    error: str | None = None
    usage_tokens: int | None = None  # completion_tokens of the usage block, when the server sent one
    chunks: int = 0  # text chunks received


@dataclass
class PointResult:
    """One load point: `concurrency` clients sharing `len(results)` requests."""

    concurrency: int
    wall_seconds: float
    results: list[RequestResult]

    @property
    def generated_tokens(self) -> int:
        return sum(r.tokens for r in self.results if r.status == 200)

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def short_requests(self, asked: int) -> list[RequestResult]:
        """The requests that did not end in 200 with exactly `asked` generated tokens."""
        return [r for r in self.results if r.status != 200 or r.tokens != asked]

    def statuses(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for r in self.results:
            counts[r.status] = counts.get(r.status, 0) + 1
        return counts


def _chunk_text(chunk: dict) -> str:
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    first = choices[0]
    return first.get("text") or (first.get("delta") or {}).get("content") or ""


async def stream_completion(client: httpx.AsyncClient, url: str, payload: dict) -> RequestResult:
    started = time.perf_counter()
    last = None
    result = RequestResult(status=0)
    chunks = 0
    try:
        async with client.stream("POST", url, json={**payload, "stream": True}) as response:
            result.status = response.status_code
            if response.status_code != 200:
                body = await response.aread()
                result.error = body[:300].decode("utf-8", "replace")
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if chunk.get("usage"):
                    result.usage_tokens = int(chunk["usage"].get("completion_tokens") or 0)
                if chunk.get("error"):
                    result.error = json.dumps(chunk["error"])[:300]
                    result.status = 500
                if _chunk_text(chunk):
                    now = time.perf_counter()
                    if last is None:
                        result.ttft = now - started
                    else:
                        result.gaps.append(now - last)
                    last = now
                    chunks += 1
    except httpx.HTTPError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        result.status = result.status or 599  # transport failure: counted as a server-side failure
    result.chunks = chunks
    result.tokens = result.usage_tokens if result.usage_tokens is not None else chunks
    result.seconds = time.perf_counter() - started
    return result


async def run_point(base_url: str, payloads: list[dict], concurrency: int) -> PointResult:
    """`concurrency` clients take the payloads in order, one request at a time each (closed loop)."""
    pending = list(enumerate(payloads))
    results: list[RequestResult | None] = [None] * len(payloads)
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=REQUEST_TIMEOUT) as client:

        async def worker() -> None:
            while pending:
                index, payload = pending.pop(0)
                results[index] = await stream_completion(client, "/v1/completions", payload)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return PointResult(concurrency, wall, [r for r in results if r is not None])


def _probe_health(url: str, interval: float, max_seconds: float, stop, out, started) -> None:
    latencies, failures = [], 0
    deadline = time.monotonic() + max_seconds
    with httpx.Client(timeout=10.0) as client:
        started.set()
        while not stop.is_set() and time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                ok = client.get(url).status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - started)
            failures += 0 if ok else 1
            time.sleep(max(0.0, interval - (time.perf_counter() - started)))
    out.put({"latencies": latencies, "failures": failures})


class HealthProbe:
    """Samples GET /health from a separate process (so the load generator's own event loop does not add to
    the measured latency), every `interval` seconds, for at most `max_seconds`."""

    def __init__(self, url: str, interval: float = 0.02, max_seconds: float = 600.0):
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._started = context.Event()
        self._out = context.Queue()
        self._process = context.Process(target=_probe_health, args=(url, interval, max_seconds, self._stop,
                                                                     self._out, self._started), daemon=True)

    def __enter__(self) -> "HealthProbe":
        """Returns once the prober runs: a spawned interpreter takes seconds to start on a busy machine, and a
        load that began before it would go unprobed."""
        self._process.start()
        if not self._started.wait(timeout=60):
            self._process.terminate()
            raise RuntimeError("the /health prober did not start within 60 s")
        return self

    def finish(self) -> dict:
        self._stop.set()
        data = self._out.get(timeout=60)
        self._process.join(timeout=10)
        return data

    def __exit__(self, *exc) -> None:
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=5)
