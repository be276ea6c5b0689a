"""Issue #16 end to end: a live `moltbot serve` with API keys and admin keys, the sql_assistant plugin over a real
SQLite database, a service model over a recording fake upstream on 127.0.0.1, and a remote model whose URL carries
user info and a signed query string."""

from __future__ import annotations

import base64
import json
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from moltbot.logs import redact_urls
from tests.conftest import REPO, Server, start_server
from tests.runtime.http_fixtures import ArchiveServer, make_model_archive

USER_KEY = "sk-user-0123456789abcdef"
ADMIN_KEY = "sk-admin-fedcba9876543210"
UPSTREAM_KEY = "sk-upstream-operators-own"
SIGNATURE = "X-Amz-Signature=5ecre7deadbeefcafe0123456789"
PASSWORD = "hunter2-download-password"


class RecordingUpstream:
    """An OpenAI-compatible chat endpoint on 127.0.0.1 that records every request (headers and JSON body)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                reply = json.dumps({
                    "id": "chatcmpl-up", "object": "chat.completion", "created": 0, "model": body.get("model"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "upstream says hi"},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def make_shop(path: Path) -> Path:
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL);"
                     "INSERT INTO customers VALUES (1, 'Ada'), (2, 'Grace');")
    db.commit()
    db.close()
    return path


@pytest.fixture(scope="module")
def hardened(tmp_path_factory: pytest.TempPathFactory, defaults_dir: Path) -> Iterator[tuple[Server, Any, Any]]:
    root = tmp_path_factory.mktemp("hardened")
    home = root / "srv"
    (home / "plugins").mkdir(parents=True)
    for plugin in ("sql_assistant", "knowledge_base"):
        shutil.copytree(REPO / "plugins" / plugin, home / "plugins" / plugin)
    documents = home / "cache" / "plugins" / "knowledge_base" / "documents"
    documents.mkdir(parents=True)
    (documents / "refunds.txt").write_text("Refunds are paid within 14 days of the return reaching us.")
    database = make_shop(root / "shop.sqlite3")
    upstream = RecordingUpstream()
    archive = make_model_archive(defaults_dir / "tiny-chat", root / "tiny.tar.gz")
    remote = ArchiveServer(archive).__enter__()
    # The archive server serves only /model.tar.gz: this signed URL is a 404, a load failure that names the URL.
    signed = remote.url.replace("http://", f"http://reader:{PASSWORD}@") + f"?X-Amz-Credential=AKIA%2F1&{SIGNATURE}"
    models = home / "models"
    models.mkdir()
    (models / "upstream.json").write_text(json.dumps({
        "name": "upstream-chat", "backend": "service", "base_url": upstream.url, "model": "gpt-upstream",
        "api_key_env": "UPSTREAM_KEY", "max_completion_tokens": 512, "max_n": 2}))
    (models / "signed.json").write_text(json.dumps({
        "name": "signed-chat", "source": "remote", "url": signed, "sha256": remote.sha256, "allow_http": True}))
    srv = start_server(home, env={
        "MOLTBOT_API_KEYS": USER_KEY, "MOLTBOT_ADMIN_API_KEYS": ADMIN_KEY, "MOLTBOT_DEFAULT_MODELS": "on",
        "UPSTREAM_KEY": UPSTREAM_KEY, "SQL_ASSISTANT_DATABASE": f"sqlite:///{database}"})
    try:
        srv.wait_ready()
        yield srv, upstream, signed
    finally:
        srv.stop()
        upstream.close()
        remote.__exit__(None, None, None)


def user() -> dict[str, str]:
    return {"Authorization": f"Bearer {USER_KEY}"}


def admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_KEY}"}


def logged(srv: Server) -> str:
    return srv.output() + (srv.home / "logs" / "moltbot.log").read_text()


# ---- 1 and 2: the SQL assistant ----------------------------------------------------------------------------------

def sql(srv: Server, statement: str) -> httpx.Response:
    return httpx.post(srv.url + "/v1/plugins/sql_assistant/execute", headers=user(), json={"sql": statement},
                      timeout=60)


def test_sql_memory_and_time_are_bounded_for_any_key_holder(hardened):
    srv, _, _ = hardened
    started = time.monotonic()
    huge = sql(srv, "SELECT length(printf('%.*c', 900000000, 'x'))")
    assert huge.status_code == 422 and "printf()" in huge.json()["error"]["message"]
    doubled = sql(srv, "WITH RECURSIVE s(v, n) AS (SELECT 'x', 0 UNION ALL SELECT v || v, n + 1 FROM s "
                       "WHERE n < 30) SELECT max(length(v)) FROM s")
    assert doubled.status_code == 422 and doubled.json()["error"]["code"] == "value_too_large"
    assert time.monotonic() - started < 5
    endless = sql(srv, "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n")
    assert endless.status_code == 422 and endless.json()["error"]["code"] == "query_timeout"
    ok = sql(srv, "SELECT upper(name) FROM customers ORDER BY id")
    assert ok.status_code == 200 and ok.json()["result"]["rows"] == [["ADA"], ["GRACE"]]
    assert httpx.get(srv.url + "/health").status_code == 200


@pytest.mark.parametrize("statement, function", [
    ("SELECT fts3_tokenizer('simple')", "fts3_tokenizer"),
    ("SELECT load_extension('/tmp/x.so')", "load_extension"),
    ("SELECT zeroblob(4000000)", "zeroblob"),
])
def test_sql_functions_off_the_list_get_a_4xx_naming_them(hardened, statement, function):
    srv, _, _ = hardened
    response = sql(srv, statement)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "function_refused" and f"{function}()" in error["message"]


# ---- 5: service models forward an allow-list, within caps ------------------------------------------------------

def test_service_model_forwards_only_openai_fields_on_the_operators_key(hardened):
    srv, upstream, _ = hardened
    before = len(upstream.requests)
    response = httpx.post(srv.url + "/v1/chat/completions", headers=user(), timeout=60, json={
        "model": "upstream-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100,
        "temperature": 0.5, "n": 2, "store": True, "service_tier": "priority", "metadata": {"team": "x"},
        "model_override": "gpt-expensive", "ignore_eos": True})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "upstream says hi"
    [received] = upstream.requests[before:]
    assert received["path"] == "/v1/chat/completions"
    assert received["headers"]["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert received["body"] == {"model": "gpt-upstream", "messages": [{"role": "user", "content": "hi"}],
                                "max_tokens": 100, "temperature": 0.5, "n": 2}


@pytest.mark.parametrize("field, value", [("max_tokens", 100000000), ("max_completion_tokens", 513), ("n", 3)])
def test_service_model_caps_tokens_and_choices(hardened, field, value):
    srv, upstream, _ = hardened
    before = len(upstream.requests)
    response = httpx.post(srv.url + "/v1/chat/completions", headers=user(), timeout=60, json={
        "model": "upstream-chat", "messages": [{"role": "user", "content": "hi"}], field: value})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == field
    assert len(upstream.requests) == before  # nothing went upstream


@pytest.mark.parametrize("path, body, capped", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, "max_completion_tokens"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": None},
     "max_completion_tokens"),
    ("/v1/completions", {"prompt": "hi"}, "max_tokens"),
])
def test_service_model_request_without_a_length_is_sent_with_the_cap(hardened, path, body, capped):
    """The upstream's own default could be its model's whole context, on the operator's key: the cap goes instead."""
    srv, upstream, _ = hardened
    before = len(upstream.requests)
    response = httpx.post(srv.url + path, headers=user(), timeout=60, json={"model": "upstream-chat", **body})
    assert response.status_code == 200, response.text
    [received] = upstream.requests[before:]
    assert received["path"] == path
    lengths = {k: v for k, v in received["body"].items() if k in ("max_tokens", "max_completion_tokens")}
    assert lengths == {capped: 512}


# ---- 4: no signed URL in /ready or in the log --------------------------------------------------------------------

def test_ready_shows_counts_and_names_openly_and_no_url_secrets_anywhere(hardened):
    srv, _, signed = hardened
    open_ready = httpx.get(srv.url + "/ready").json()
    assert open_ready["failed"] == [{"model": "signed-chat"}]
    assert open_ready["counts"] == {"loaded": 3, "failed": 1}
    assert "upstream-chat" in open_ready["models"]
    detailed = httpx.get(srv.url + "/ready", headers=user()).json()
    [failure] = detailed["failed"]
    assert failure["model"] == "signed-chat" and "HTTP 404" in failure["error"]
    assert redact_urls(signed) in failure["error"]  # the host and path still say which download failed
    for text in (json.dumps(open_ready), json.dumps(detailed), logged(srv)):
        assert "X-Amz-Signature" not in text and SIGNATURE not in text and "AKIA" not in text
        assert PASSWORD not in text and "reader:" not in text
    assert "signed-chat" in logged(srv)
    for key in (USER_KEY, ADMIN_KEY, UPSTREAM_KEY):
        assert key not in logged(srv)


# ---- 6: admin keys -------------------------------------------------------------------------------------------------

def test_admin_routes_need_an_admin_key(hardened):
    srv, _, _ = hardened
    reload_url = srv.url + "/v1/plugins/reload"
    assert httpx.post(reload_url, timeout=60).status_code == 401
    refused = httpx.post(reload_url, headers=user(), timeout=60)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "admin_key_required"
    assert httpx.post(reload_url, headers={"x-api-key": ADMIN_KEY}, json={"names": ["sql_assistant"]},
                      timeout=60).status_code == 200
    # An admin key works on the ordinary routes too; an ordinary key on everything else.
    assert httpx.get(srv.url + "/v1/models", headers=admin()).status_code == 200
    assert httpx.get(srv.url + "/v1/plugins", headers=user()).status_code == 200


def test_knowledge_base_ingest_needs_an_admin_key_and_query_does_not(hardened):
    srv, _, _ = hardened
    execute = srv.url + "/v1/plugins/knowledge_base/execute"
    refused = httpx.post(execute, headers=user(), json={"action": "ingest"}, timeout=120)
    assert refused.status_code == 403 and refused.json()["error"]["type"] == "permission_error"
    ingested = httpx.post(execute, headers=admin(), json={"action": "ingest"}, timeout=120)
    assert ingested.status_code == 200, ingested.text
    query = httpx.post(execute, headers=user(), json={"action": "query", "query": "refund"}, timeout=120)
    assert query.status_code == 200 and query.json()["result"]
    ws_url = srv.url.replace("http://", "ws://") + "/v1/ws"
    with connect(ws_url, additional_headers=user(), subprotocols=["moltbot"]) as ws:  # type: ignore[list-item]
        ws.send(json.dumps({"type": "plugin", "name": "knowledge_base", "input": {"action": "ingest"}}))
        answer = json.loads(ws.recv(timeout=60))
    assert answer["type"] == "error" and answer["status"] == 403


# ---- the WebSocket: its key subprotocol only on its own upgrade, and browsers' origins ---------------------------

def key_protocol(key: str) -> str:
    return "moltbot.key." + base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def ws_handshake(srv: Server, protocols: list[str] | None = None, origin: str | None = None) -> Any:
    """The subprotocol picked (None: none) once the socket opens, else the handshake's HTTP status."""
    try:
        with connect(srv.url.replace("http://", "ws://") + "/v1/ws", subprotocols=protocols, origin=origin,
                     open_timeout=30) as ws:
            return ws.subprotocol
    except InvalidStatus as exc:
        return exc.response.status_code


def test_the_key_subprotocol_counts_only_on_the_websockets_own_upgrade(hardened):
    srv, _, _ = hardened
    assert ws_handshake(srv, ["moltbot", key_protocol(USER_KEY)]) == "moltbot"
    # A request to another route that says it is a WebSocket upgrade: the subprotocol is no key there.
    upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode(),
               "Sec-WebSocket-Protocol": f"moltbot, {key_protocol(USER_KEY)}"}
    for method, path in (("GET", "/v1/models"), ("POST", "/v1/plugins/sql_assistant/execute")):
        refused = httpx.request(method, srv.url + path, headers=upgrade, json={"sql": "SELECT 1"}, timeout=60)
        assert refused.status_code == 401, (path, refused.text)
    assert httpx.get(srv.url + "/v1/models", headers=user(), timeout=60).status_code == 200


def test_the_admin_route_is_known_by_its_route_not_its_spelling(hardened):
    srv, _, _ = hardened
    for path in ("/v1/plugins/reload", "/v1/plugins/reload/", "//v1/plugins/reload"):
        response = httpx.post(srv.url + path, headers=user(), json={"names": []}, timeout=60)
        assert response.status_code in (403, 404), (path, response.text)
        if response.status_code == 403:
            assert response.json()["error"]["code"] == "admin_key_required"
    assert httpx.post(srv.url + "/v1/plugins/reload/", headers=admin(), json={"names": []},
                      timeout=60).status_code == 200


def test_a_websocket_from_another_sites_page_is_refused_even_without_keys(server_factory):
    """Browsers let any page open a WebSocket to 127.0.0.1 (no CORS for WebSockets): with no API keys (make run),
    a website the operator visits could drive the models and plugins, were Origin not checked."""
    srv = server_factory(env={"MOLTBOT_CORS_ORIGINS": "https://app.example.com"})
    own = f"http://127.0.0.1:{srv.port}"
    assert ws_handshake(srv, ["moltbot"], origin=own) == "moltbot"  # the chat page this server serves
    assert ws_handshake(srv, ["moltbot"]) == "moltbot"  # no Origin: not a browser
    assert ws_handshake(srv, origin="https://app.example.com") is None  # listed in cors_origins
    for foreign in ("https://evil.example", f"http://localhost:{srv.port}", f"http://127.0.0.1:{srv.port + 1}",
                    f"https://127.0.0.1:{srv.port}.evil.example", "null", f"ws://127.0.0.1:{srv.port}"):
        assert ws_handshake(srv, ["moltbot"], origin=foreign) == 403, foreign
    refused = httpx.get(srv.url + "/v1/ws", timeout=30, headers={
        "Origin": "https://evil.example", "Upgrade": "websocket", "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode()})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "origin_not_allowed"


@pytest.mark.parametrize("origin, host, same", [
    ("http://127.0.0.1:8080", "127.0.0.1:8080", True),
    ("https://chat.example.com", "chat.example.com", True),  # behind a proxy that passes the Host header on
    ("https://chat.example.com", "chat.example.com:443", True),
    ("http://chat.example.com", "chat.example.com:80", True),
    ("http://[::1]:8080", "[::1]:8080", True),
    ("http://LOCALHOST:8080", "localhost:8080", True),
    ("https://chat.example.com", "chat.example.com:80", False),
    ("http://127.0.0.1:8080", "127.0.0.1:8081", False),
    ("http://localhost:8080", "127.0.0.1:8080", False),
    ("https://evil.example", "127.0.0.1:8080", False),
    ("null", "127.0.0.1:8080", False),
    ("http://127.0.0.1:80x", "127.0.0.1:80", False),
    ("http://127.0.0.1:8080", "evil@127.0.0.1:8080", False),
    ("http://127.0.0.1:8080", "", False),
])
def test_same_origin_compares_host_and_port(origin, host, same):
    from moltbot.api.app import _same_origin
    assert _same_origin(origin, host) is same
