"""The one error mapping (api/errors.py's error_response), in process: each error's status, body and headers."""

from __future__ import annotations

import logging

import pytest
from pydantic import ValidationError

from moltbot.api.errors import ERROR_TYPES, APIError, error_response
from moltbot.api.protocol import ChatCompletionRequest
from moltbot.engine.errors import (
    EngineStopped,
    GenerationFailed,
    InvalidRequest,
    ModelNotFound,
    QueueFull,
    UpstreamError,
)
from moltbot.plugins import PluginError
from moltbot.plugins.errors import (
    PluginAPIError,
    PluginFailed,
    PluginInputError,
    PluginNotFound,
    PluginTimeout,
    PluginUnavailable,
)


def mapped(exc: BaseException) -> tuple[int, dict, dict]:
    status, body, headers = error_response(exc)
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return status, body["error"], headers


@pytest.mark.parametrize("exc,status,code", [
    (InvalidRequest("no", param="top_p"), 400, None),
    (InvalidRequest("too long", param="max_tokens", code="context_length_exceeded"), 400, "context_length_exceeded"),
    (ModelNotFound("ghost"), 404, "model_not_found"),
    (EngineStopped("m"), 503, "shutting_down"),
    (GenerationFailed("boom"), 500, "generation_failed"),
    (APIError(415, "not JSON", code="unsupported_media_type"), 415, "unsupported_media_type"),
])
def test_engine_and_api_errors(exc, status, code):
    got_status, error, headers = mapped(exc)
    assert (got_status, error["code"], error["type"]) == (status, code, ERROR_TYPES[status])
    assert headers == {}


def test_the_engine_words_reach_the_client():
    _, error, _ = mapped(InvalidRequest("the prompt is empty", param="prompt"))
    assert (error["message"], error["param"]) == ("the prompt is empty", "prompt")
    _, error, _ = mapped(ModelNotFound("ghost"))
    assert error["param"] == "model" and "'ghost'" in error["message"]


def test_a_full_queue_is_429_with_retry_after():
    status, error, headers = mapped(QueueFull("tiny", retry_after=7))
    assert (status, error["code"], error["type"]) == (429, "queue_full", "rate_limit_error")
    assert headers == {"Retry-After": "7"} and "7 s" in error["message"]


def test_api_errors_keep_their_headers():
    status, _, headers = mapped(APIError(503, "loading", code="not_ready", headers={"Retry-After": "2"}))
    assert status == 503 and headers == {"Retry-After": "2"}


def test_upstream_errors_pass_through_as_they_came():
    body = {"error": {"message": "bad max_tokens", "type": "invalid_request_error", "param": "max_tokens",
                      "code": None}}
    assert error_response(UpstreamError(400, body)) == (400, body, {})


@pytest.mark.parametrize("exc,status", [
    (PluginInputError("bad", param="word"), 400),
    (PluginNotFound("none"), 404),
    (PluginUnavailable("disabled"), 409),
    (PluginError("refused", code="refused"), 422),
    (PluginFailed("crashed"), 500),
    (PluginTimeout("slow"), 504),
    (PluginAPIError("base"), 500),
])
def test_plugin_errors_get_their_status_here(exc, status):
    assert not hasattr(exc, "status")  # the plugin SDK knows no HTTP
    got_status, error, _ = mapped(exc)
    assert got_status == status
    assert (error["type"], error["code"], error["param"]) == (exc.type, exc.code, exc.param)


def test_a_plugins_own_subclass_of_plugin_error_is_422():
    class QuotaExceeded(PluginError):
        code = "quota_exceeded"

    status, error, _ = mapped(QuotaExceeded("over quota"))
    assert (status, error["code"]) == (422, "quota_exceeded")


def test_validation_errors_name_the_field():
    with pytest.raises(ValidationError) as invalid:
        ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "x"}],
                                              "temperature": 3})
    status, error, _ = mapped(invalid.value)
    assert (status, error["param"], error["code"]) == (400, "temperature", "invalid_value")


def test_anything_else_is_a_logged_500(caplog):
    with caplog.at_level(logging.ERROR, logger="moltbot.api"):
        status, error, _ = mapped(RuntimeError("secret detail"))
    assert (status, error["code"], error["type"]) == (500, "internal_error", "server_error")
    assert "secret detail" not in error["message"]
    assert caplog.records and caplog.records[0].exc_info is not None
