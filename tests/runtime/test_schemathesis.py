"""A Schemathesis run with every check against a live server (the embedded defaults and tiny-toolcall): the
OpenAPI document at /openapi.json tells the truth about what the server takes and answers. Bounded (a fixed
number of examples per operation, deterministic generation) to stay within a few minutes on the test machine.

/v1/ws is left out: an HTTP fuzzer cannot open a WebSocket (its 426 for a plain GET is documented and tested
below). Hooks (tests/runtime/schemathesis_hooks.py) keep generated max_tokens small: the context limit depends on
a prompt's tokens, which no schema can say."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO
from tests.runtime.live_models import start_with_toolcall_model

MAX_EXAMPLES = 20


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, defaults_dir: Path):
    srv = start_with_toolcall_model(tmp_path_factory.mktemp("schemathesis"))
    yield srv
    srv.stop()


def test_schemathesis_finds_nothing_with_every_check(server, tmp_path):
    st = Path(sys.executable).with_name("st")
    result = subprocess.run(
        [str(st), "run", f"{server.url}/openapi.json", "--checks", "all", "--max-examples", str(MAX_EXAMPLES),
         "--phases", "examples,coverage,fuzzing", "--workers", "1", "--generation-deterministic",
         "--exclude-path", "/v1/ws", "--output-sanitize", "false", "--request-timeout", "60"],
        cwd=tmp_path, capture_output=True, text=True, timeout=540,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.runtime.schemathesis_hooks", "PYTHONPATH": str(REPO),
             "SCHEMATHESIS_TELEMETRY": "false"})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    assert "generated" in output and "failure" not in output.split("Test cases:")[-1], output[-3000:]
    assert server.process.poll() is None  # and the server is still up
    assert httpx.get(server.url + "/ready").status_code == 200


def test_the_document_tells_what_the_server_does(server):
    document = httpx.get(server.url + "/openapi.json").json()
    assert "security" not in document and "securitySchemes" not in document["components"]  # no keys set
    ws = document["paths"]["/v1/ws"]["get"]["responses"]
    assert "426" in ws and httpx.get(server.url + "/v1/ws").status_code == 426
    stream = document["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]["text/event-stream"]
    assert stream["schema"]["required"] == ["data"]  # an SSE event object, its data a chunk or [DONE]
    chat = document["components"]["schemas"]["ChatCompletionRequest"]
    assert chat["additionalProperties"] is False  # every chat model is local: unknown fields are refused
    formats = chat["properties"]["response_format"]["anyOf"][0]["oneOf"]
    assert {"$ref": "#/components/schemas/JsonSchemaFormat"} in formats  # enforced: constrained decoding
    assert "tiny-chat" in chat["properties"]["model"]["examples"]
    reload = document["paths"]["/v1/plugins/reload"]["post"]["requestBody"]["content"]["application/json"]
    assert reload["schema"]["properties"]["names"]["type"] == "array"
    refused = httpx.post(server.url + "/v1/plugins/reload", json={"names": None})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "names"


def test_security_is_declared_when_keys_are_set(server_factory):
    keyed = server_factory(env={"MOLTBOT_API_KEYS": "k1"})
    document = httpx.get(keyed.url + "/openapi.json").json()
    assert document["security"] == [{"bearer": []}, {"apiKey": []}]
    assert document["paths"]["/health"]["get"]["security"] == []
    assert "401" in document["paths"]["/v1/chat/completions"]["post"]["responses"]
