"""/openapi.json is a valid OpenAPI 3 document that covers every route the service answers."""

from __future__ import annotations

from openapi_spec_validator import validate


def test_openapi_document_is_valid_and_complete(client, shared_server):
    document = client.get("/openapi.json").json()
    validate(document)
    documented = set(document["paths"])
    for path in ("/health", "/ready", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions",
                 "/v1/embeddings", "/v1/ws", "/v1/plugins", "/v1/plugins/reload", "/v1/plugins/{name}/execute"):
        assert path in documented, path
    chat = document["paths"]["/v1/chat/completions"]["post"]
    schema_ref = chat["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = document["components"]["schemas"][schema_ref.rsplit("/", 1)[1]]
    assert {"model", "messages"} <= set(schema["required"])
    assert "429" in chat["responses"] and "400" in chat["responses"]
