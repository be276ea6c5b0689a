"""Makes schemas.json from OpenAI's openapi.json: the roots below and every schema they reference, unchanged.

    python tests/openai_openapi/extract.py path/to/openapi.json > tests/openai_openapi/schemas.json
"""

from __future__ import annotations

import json
import sys
from typing import Any

ROOTS = ["CreateChatCompletionResponse", "CreateChatCompletionStreamResponse", "CreateCompletionResponse",
         "CreateEmbeddingResponse", "ListModelsResponse", "Model", "ErrorResponse", "CreateChatCompletionRequest",
         "CreateCompletionRequest", "CreateEmbeddingRequest", "Response", "CreateResponse", "ResponseStreamEvent"]
PREFIX = "#/components/schemas/"


def extract(document: dict[str, Any]) -> dict[str, Any]:
    schemas = document["components"]["schemas"]
    kept: dict[str, Any] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref" and isinstance(value, str) and value.startswith(PREFIX):
                    name = value[len(PREFIX):]
                    if name not in kept:
                        kept[name] = schemas[name]
                        walk(schemas[name])
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for root in ROOTS:
        kept[root] = schemas[root]
        walk(schemas[root])
    return {"openapi": document["openapi"], "components": {"schemas": dict(sorted(kept.items()))}}


if __name__ == "__main__":
    with open(sys.argv[1]) as source:
        print(json.dumps(extract(json.load(source)), indent=1))
