"""The engine's errors, in the engine's terms. The API layer (api/errors.py) maps each to an HTTP response."""

from __future__ import annotations

from typing import Any


class ModelNotFound(KeyError):
    """No model of that name is served."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


class InvalidRequest(ValueError):
    """The request cannot be served as asked; `param` names the field at fault."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class QueueFull(Exception):
    """The model's running batch and queue are both full."""

    def __init__(self, model: str, retry_after: int = 1):
        super().__init__(f"model {model!r} is at capacity; retry later")
        self.model = model
        self.retry_after = retry_after


class EngineStopped(Exception):
    """The model is shutting down and takes no new requests."""


class GenerationFailed(RuntimeError):
    """The model failed while generating (the log has the details); the request cannot go on."""


class UpstreamError(Exception):
    """A service model's upstream answered with an error: its status and JSON body, to pass through as they came."""

    def __init__(self, status: int, body: dict[str, Any]):
        super().__init__(f"upstream answered {status}")
        self.status = status
        self.body = body


def upstream_error_body(message: str) -> dict[str, Any]:
    """An OpenAI-shaped error body for an upstream failure that brought none of its own."""
    return {"error": {"message": message, "type": "upstream_error", "param": None, "code": None}}
