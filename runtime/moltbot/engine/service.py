"""`service` models: a third-party OpenAI-compatible API, to which requests are forwarded."""

from __future__ import annotations

import os
from typing import AsyncIterator

import httpx

from moltbot.engine.config import ModelConfig


class UpstreamError(Exception):
    """The upstream answered with an error: its status and JSON body are passed through."""

    def __init__(self, status: int, body: dict):
        super().__init__(f"upstream answered {status}")
        self.status = status
        self.body = body


class ServiceClient:
    def __init__(self, config: ModelConfig, timeout: float):
        self.upstream_model = config.model
        headers = {}
        if config.api_key_env:
            key = os.environ.get(config.api_key_env)
            if not key:
                raise ValueError(f"{config.source or config.name}: api_key_env {config.api_key_env} is not set")
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.AsyncClient(base_url=config.base_url.rstrip("/") + "/", headers=headers,
                                         timeout=httpx.Timeout(timeout, connect=10.0))

    def _payload(self, payload: dict) -> dict:
        return {**payload, "model": self.upstream_model}

    async def post(self, path: str, payload: dict) -> dict:
        try:
            response = await self._client.post(path.lstrip("/"), json=self._payload(payload))
        except httpx.HTTPError as exc:
            raise UpstreamError(502, _error_body(f"upstream unreachable: {type(exc).__name__}")) from exc
        return _json_or_error(response)

    async def stream(self, path: str, payload: dict) -> AsyncIterator[bytes]:
        """Yields the upstream's server-sent event lines (`data: ...`), re-stamped with our model name."""
        request = self._client.build_request("POST", path.lstrip("/"), json=self._payload(payload))
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise UpstreamError(502, _error_body(f"upstream unreachable: {type(exc).__name__}")) from exc
        try:
            if response.status_code >= 400:
                await response.aread()
                _json_or_error(response)
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    yield line
        finally:
            await response.aclose()

    async def close(self) -> None:
        await self._client.aclose()


def _error_body(message: str) -> dict:
    return {"error": {"message": message, "type": "upstream_error", "param": None, "code": None}}


def _json_or_error(response: httpx.Response) -> dict:
    try:
        body = response.json()
    except ValueError:
        body = _error_body(f"upstream answered {response.status_code} with a body that is not JSON")
        if response.status_code < 400:
            raise UpstreamError(502, body)
    if response.status_code >= 400:
        if not isinstance(body, dict) or "error" not in body:
            body = _error_body(f"upstream answered {response.status_code}")
        raise UpstreamError(response.status_code, body)
    return body
