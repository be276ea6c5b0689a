"""Second security review (#22) item 17, the service proxy: upstream messages carry only OpenAI's message fields,
and an upstream that refuses the operator's key (401/403) is a 502 that quotes nothing of its answer. A live
`moltbot serve` in front of a recording upstream on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Server, start_server

UPSTREAM_KEY = "sk-upstream-abcdef0123456789"


class RefusingUpstream:
    """Records every request; answers `refuse <status>` with that status and a body quoting part of the key (as
    OpenAI's 401 does), anything else with a normal reply."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                words = body["messages"][-1]["content"].split()
                status = int(words[1]) if words[0] == "refuse" else 200
                reply = json.dumps({"error": {"message": f"Incorrect API key provided: {UPSTREAM_KEY[:12]}****",
                                              "type": "invalid_request_error", "code": "invalid_api_key"}}
                                   if status != 200 else
                                   {"id": "x", "object": "chat.completion", "created": 0, "model": "up",
                                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                                                 "finish_reason": "stop"}]}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory, defaults_dir: Path) -> Iterator[tuple[Server, RefusingUpstream]]:
    upstream = RefusingUpstream()
    home = tmp_path_factory.mktemp("proxy")
    (home / "models").mkdir()
    (home / "models" / "up.json").write_text(json.dumps({"name": "up", "backend": "service", "base_url": upstream.url,
                                                         "model": "gpt-up", "api_key_env": "UPSTREAM_KEY"}))
    srv = start_server(home, env={"UPSTREAM_KEY": UPSTREAM_KEY, "MOLTBOT_DEFAULT_MODELS": "off"})
    try:
        srv.wait_ready()
        yield srv, upstream
    finally:
        srv.stop()
        upstream.close()


def test_messages_reach_the_upstream_with_known_fields_only(proxied):
    srv, upstream = proxied
    messages = [
        {"role": "system", "content": "be brief", "cache_control": {"type": "ephemeral"}, "x_internal": "secret"},
        {"role": "assistant", "content": None, "reasoning_content": "hidden", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}, "extra": 1}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42", "metadata": {"a": 1}},
        {"role": "user", "name": "ada", "content": "hello", "audio": {"id": "x"}},
    ]
    before = len(upstream.requests)
    answer = httpx.post(srv.url + "/v1/chat/completions", timeout=60, json={"model": "up", "messages": messages})
    assert answer.status_code == 200, answer.text
    [sent] = upstream.requests[before:]
    assert sent["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
        {"role": "user", "name": "ada", "content": "hello"},
    ]


@pytest.mark.parametrize("status", [401, 403])
@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_refusing_the_key_is_a_502_without_its_body(proxied, status, stream):
    srv, _ = proxied
    answer = httpx.post(srv.url + "/v1/chat/completions", timeout=60, json={
        "model": "up", "stream": stream, "messages": [{"role": "user", "content": f"refuse {status}"}]})
    assert answer.status_code == 502, answer.text
    assert answer.json()["error"]["type"] == "upstream_error"
    assert UPSTREAM_KEY[:12] not in answer.text and "Incorrect API key" not in answer.text


def test_other_upstream_errors_still_pass_through(proxied):
    srv, _ = proxied
    answer = httpx.post(srv.url + "/v1/chat/completions", timeout=60, json={
        "model": "up", "messages": [{"role": "user", "content": "refuse 400"}]})
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_api_key"
