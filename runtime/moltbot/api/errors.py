"""Errors in OpenAI's JSON shape: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

from pydantic import ValidationError
from sanic import HTTPResponse
from sanic.response import json as json_response

ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 405: "invalid_request_error", 408: "timeout_error", 413: "invalid_request_error",
    415: "invalid_request_error", 429: "rate_limit_error", 500: "server_error", 502: "upstream_error",
    503: "service_unavailable", 504: "timeout_error",
}


class APIError(Exception):
    """Raised anywhere below a route; the app's error handler answers with it."""

    def __init__(self, status: int, message: str, type: str | None = None, param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or ERROR_TYPES.get(status, "invalid_request_error")
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def api_error(status: int, message: str, type: str | None = None, param: str | None = None,
              code: str | None = None, headers: dict | None = None) -> HTTPResponse:
    err = APIError(status, message, type, param, code, headers)
    return json_response(err.body(), status=status, headers=err.headers)


def from_validation_error(exc: ValidationError) -> APIError:
    """The first problem pydantic found, with the field path as `param`."""
    first = exc.errors()[0]
    loc = [str(part) for part in first.get("loc", ()) if not str(part).startswith(("function-", "tagged-union"))]
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
