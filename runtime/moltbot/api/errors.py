"""The one mapping from exceptions to HTTP error responses, in OpenAI's JSON shape:
{"error": {"message", "type", "param", "code"}} (in the way of vLLM's `create_error_response`).

Every place that answers with an error uses `error_response`: the app's error handler, the SSE stream (a last
`data:` event), the WebSocket (an `error` message) and the plugin routes. The engine and the plugin system raise
errors in their own terms (engine/errors.py, plugins/errors.py); only this module knows their HTTP statuses.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pydantic import ValidationError
from sanic import HTTPResponse, Request
from sanic.exceptions import MethodNotAllowed, NotFound, PayloadTooLarge, SanicException
from sanic.response import json as json_response

from moltbot.engine.errors import (
    EngineStopped,
    GenerationFailed,
    InvalidRequest,
    ModelNotFound,
    QueueFull,
    UpstreamError,
)
from moltbot.logs import redact_urls
from moltbot.plugins.errors import (
    PluginAPIError,
    PluginError,
    PluginFailed,
    PluginForbidden,
    PluginInputError,
    PluginNotATool,
    PluginNotFound,
    PluginTimeout,
    PluginUnavailable,
)

log = logging.getLogger("moltbot.api")

ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 405: "invalid_request_error", 408: "timeout_error", 413: "invalid_request_error",
    415: "invalid_request_error", 429: "rate_limit_error", 500: "server_error", 502: "upstream_error",
    503: "service_unavailable", 504: "timeout_error",
}
PLUGIN_STATUS: dict[type[PluginAPIError], int] = {
    PluginInputError: 400, PluginNotATool: 400, PluginForbidden: 403, PluginNotFound: 404, PluginUnavailable: 409,
    PluginError: 422, PluginFailed: 500, PluginTimeout: 504,
}

ErrorResponse = tuple[int, dict[str, Any], dict[str, str]]


class APIError(Exception):
    """An error of the HTTP layer itself (a body that is not JSON, a missing key, not ready yet, a timeout)."""

    def __init__(self, status: int, message: str, type: str | None = None, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or ERROR_TYPES.get(status, "invalid_request_error")
        self.param = param
        self.code = code
        self.headers = headers or {}


MAX_JSON_DEPTH = 128  # nesting of arrays and objects in a request: deeper is refused, never a RecursionError later


def load_json(data: bytes | str, what: str = "The request body") -> Any:
    """A request's JSON (a body, a WebSocket message), or a 400 invalid_request_error for anything the parser
    cannot take: not JSON, not UTF-8, nested too deeply (for the parser, or for what validates it later)."""
    too_deep = APIError(400, f"{what} nests arrays and objects more than {MAX_JSON_DEPTH} levels deep",
                        code="invalid_json")
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise APIError(400, f"{what} is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        raise too_deep from None
    if _too_deep(value):
        raise too_deep
    return value


def _too_deep(value: Any) -> bool:
    level: list[Any] = [value]
    for _ in range(MAX_JSON_DEPTH):
        level = [child for item in level if isinstance(item, (dict, list))
                 for child in (item.values() if isinstance(item, dict) else item)]
        if not level:
            return False
    return any(isinstance(item, (dict, list)) for item in level)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(exc: BaseException, request: Request | None = None) -> ErrorResponse:
    """(status, body, headers) for any exception; an unexpected one is logged and answered with a 500 that names
    the request id. `request` gives the words for routing errors and the request id, and the shape: Anthropic's
    on its Messages routes, where its SDK reads the error's type."""
    status, body, headers = _openai_error(exc, request)
    if request is not None and request.path.startswith(ANTHROPIC_ROUTES):
        return status, anthropic_error_body(status, body["error"]["message"]), headers
    return status, body, headers


ANTHROPIC_ROUTES = "/v1/messages"
# Anthropic's error types by status (https://docs.anthropic.com/en/api/errors); 503 is its "overloaded".
ANTHROPIC_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                         404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                         503: "overloaded_error", 504: "timeout_error"}


def anthropic_error_body(status: int, message: str) -> dict[str, Any]:
    error_type = ANTHROPIC_ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    return {"type": "error", "error": {"type": error_type, "message": message}}


def _openai_error(exc: BaseException, request: Request | None) -> ErrorResponse:
    if isinstance(exc, APIError):
        return exc.status, error_body(exc.message, exc.type, exc.param, exc.code), exc.headers
    if isinstance(exc, ValidationError):
        return _openai_error(from_validation_error(exc), request)
    if isinstance(exc, InvalidRequest):
        # A model of another task is not found on this route, as OpenAI has it ("This is not a chat model").
        status = 404 if exc.code == "wrong_model_task" else 400
        return _error(status, exc.message, param=exc.param, code=exc.code)
    if isinstance(exc, ModelNotFound):
        return _error(404, f"The model '{exc.name}' does not exist", param="model", code="model_not_found")
    if isinstance(exc, QueueFull):
        return _error(429, f"The model '{exc.model}' is busy: its queue is full. Retry after {exc.retry_after} s.",
                      code="queue_full", headers={"Retry-After": str(exc.retry_after)})
    if isinstance(exc, EngineStopped):
        return _error(503, "The server is shutting down", code="shutting_down")
    if isinstance(exc, GenerationFailed):
        return _error(500, "The model failed while generating; see the server log", code="generation_failed")
    if isinstance(exc, UpstreamError):  # a service model's upstream error, passed through as it came
        return exc.status, exc.body, {}
    if isinstance(exc, PluginAPIError):
        status = next((PLUGIN_STATUS[cls] for cls in type(exc).__mro__ if cls in PLUGIN_STATUS), 500)
        # A load error (the 409) may quote a URL with a password or token in it: redacted as the log has it.
        return status, error_body(redact_urls(exc.message), exc.type, exc.param, exc.code), {}
    if isinstance(exc, SanicException) and request is not None and 400 <= exc.status_code < 500:
        return _routing_error(exc, request)
    request_id = getattr(request.ctx, "request_id", None) if request is not None else None
    log.error("unhandled error", exc_info=exc, extra={"request_id": request_id})
    return _error(500, f"Internal server error (request id {request_id})", code="internal_error")


def error_json(exc: BaseException, request: Request | None = None) -> HTTPResponse:
    status, body, headers = error_response(exc, request)
    return json_response(body, status=status, headers=headers)


def _error(status: int, message: str, *, param: str | None = None, code: str | None = None,
           headers: dict[str, str] | None = None) -> ErrorResponse:
    return status, error_body(message, ERROR_TYPES.get(status, "invalid_request_error"), param, code), headers or {}


def _routing_error(exc: SanicException, request: Request) -> ErrorResponse:
    """Sanic's own refusals (4xx), before any route ran."""
    if isinstance(exc, NotFound):
        return _error(404, f"No route for {request.method} {request.path}", code="route_not_found")
    if isinstance(exc, MethodNotAllowed):
        allowed = ", ".join(sorted(getattr(exc, "allowed_methods", None) or []))
        return _error(405, f"Method {request.method} is not allowed on {request.path}", code="method_not_allowed",
                      headers={"Allow": allowed} if allowed else None)
    if isinstance(exc, PayloadTooLarge):
        return _error(413, f"The request body is larger than {request.app.config.REQUEST_MAX_SIZE} bytes",
                      code="payload_too_large")
    return exc.status_code, error_body(str(exc) or "Bad request", "invalid_request_error", code="bad_request"), {}


def from_validation_error(exc: ValidationError) -> APIError:
    """The first problem pydantic found, with the field path as `param`."""
    first = exc.errors()[0]
    loc = [str(part) for part in first.get("loc", ())
           if not str(part).startswith(("function-", "tagged-union", "constrained-", "literal["))]
    # Drop pydantic's union branch names (e.g. 'str', 'list[str]') from the path.
    loc = [p for p in loc if not any(c in p for c in "[]") and p not in ("str", "int", "float", "bool")]
    param = ".".join(loc) or None
    message = first.get("msg", "invalid value")
    if first.get("type") == "missing":
        message = "field required"
    elif message.startswith("Value error, "):
        message = message[len("Value error, "):]
    return APIError(400, f"{param}: {message}" if param else message, param=param,
                    code="missing_field" if first.get("type") == "missing" else "invalid_value")
