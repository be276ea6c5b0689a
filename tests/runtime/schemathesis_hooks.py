"""Schemathesis hooks for tests/runtime/test_schemathesis.py (loaded through SCHEMATHESIS_HOOKS).

One limit of the API depends on what no schema can say: a prompt's length in tokens plus max_tokens must fit the
model's context (a 400 context_length_exceeded otherwise, as OpenAI answers). Generated bodies therefore ask for
at most a few new tokens (a number in max_tokens / max_completion_tokens stays one, and a chat request that sets
neither gets 8, where it would otherwise generate to the end of the context): the requests stay what the schema
calls valid, or invalid, and a run takes a minute rather than an hour on the test machine.

The other: whether a JSON schema, a regex or a Lark grammar compiles (response_format json_schema,
structured_outputs, the tools' parameters unless tool_choice is none) is llguidance's to say, not OpenAPI's (a 400
naming the field otherwise, tested in test_structured_outputs*.py): generated ones are replaced by ones that
compile, keeping the request's shape."""

from __future__ import annotations

from typing import Any

import schemathesis

MAX_NEW_TOKENS = 8


def capped(body: Any) -> Any:
    if not isinstance(body, dict) or "model" not in body:
        return body
    body = dict(body)
    for field in ("max_tokens", "max_completion_tokens"):
        value = body.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and value > MAX_NEW_TOKENS:
            body[field] = MAX_NEW_TOKENS
    if "messages" in body and body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        body["max_tokens"] = MAX_NEW_TOKENS
    return compilable(body)


def compilable(body: dict[str, Any]) -> dict[str, Any]:
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and isinstance(response_format.get("json_schema"), dict) \
            and "schema" in response_format["json_schema"]:
        body["response_format"] = {**response_format,
                                   "json_schema": {**response_format["json_schema"], "schema": {"type": "object"}}}
    structured = body.get("structured_outputs")
    if isinstance(structured, dict):
        body["structured_outputs"] = {key: {"json": {"type": "object"}, "regex": "a", "grammar": 'start: "a"'}
                                      .get(key, value) if value is not None else None
                                      for key, value in structured.items()}
    if isinstance(body.get("tools"), list) and body.get("tool_choice") != "none":
        body["tools"] = [{**tool, "function": {**tool["function"], "parameters": {"type": "object"}}}
                         if isinstance(tool, dict) and isinstance(tool.get("function"), dict) else tool
                         for tool in body["tools"]]
    return body


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """Every phase's requests (the coverage phase's too, which map_body does not see)."""
    body = capped(case.body)
    if body is not case.body:  # left alone otherwise: a case whose body is set counts as changed
        case.body = body
