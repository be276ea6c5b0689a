"""Schemathesis hooks for tests/runtime/test_schemathesis.py (loaded through SCHEMATHESIS_HOOKS).

One limit of the API depends on what no schema can say: a prompt's length in tokens plus max_tokens must fit the
model's context (a 400 context_length_exceeded otherwise, as OpenAI answers). Generated bodies therefore ask for
at most a few new tokens (a number in max_tokens / max_completion_tokens stays one, and a chat request that sets
neither gets 8, where it would otherwise generate to the end of the context): the requests stay what the schema
calls valid, or invalid, and a run takes a minute rather than an hour on the test machine."""

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
    return body


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """Every phase's requests (the coverage phase's too, which map_body does not see)."""
    body = capped(case.body)
    if body is not case.body:  # left alone otherwise: a case whose body is set counts as changed
        case.body = body
