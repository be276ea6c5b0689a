"""Validation against the schemas of OpenAI's published OpenAPI document (tests/openai_openapi/, source and commit
in its README): what the runtime answers has the shape OpenAI's clients are generated from."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

SCHEMAS = Path(__file__).resolve().parents[1] / "openai_openapi" / "schemas.json"


# Where the document is stricter than OpenAI's own service: a streamed choice's finish_reason is null until its
# last chunk (OpenAI sends null; its SDKs type it Optional), though the schema has no null.
KNOWN_NULLABLE = [("CreateChatCompletionStreamResponse", "finish_reason")]


def _nullable(schema: Any) -> Any:
    """OpenAPI 3.0's `nullable: true`, which the document still uses in places, as JSON Schema: null allowed too."""
    if isinstance(schema, list):
        return [_nullable(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _nullable(value) for key, value in schema.items() if key != "nullable"}
    if schema.get("nullable") is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


@cache
def _validator(name: str) -> Draft202012Validator:
    document = json.loads(SCHEMAS.read_text())
    assert name in document["components"]["schemas"], name
    schemas = document["components"]["schemas"]
    for schema, field in KNOWN_NULLABLE:
        schemas[schema]["properties"]["choices"]["items"]["properties"][field]["nullable"] = True
    document = _nullable(document)
    # The document is the root resource, so that its "#/components/schemas/..." references resolve.
    return Draft202012Validator({**document, "$ref": f"#/components/schemas/{name}"})


def errors(name: str, instance: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in _validator(name).iter_errors(instance)]


def assert_valid(name: str, instance: Any) -> None:
    problems = errors(name, instance)
    assert not problems, f"not a valid {name}: {problems[:5]}\n{json.dumps(instance)[:2000]}"
