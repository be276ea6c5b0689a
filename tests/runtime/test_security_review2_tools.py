"""Second security review (#22) item 3: the tool loop runs only the plugins a request offers. The model is a
scripted OpenAI-compatible upstream that, like a model reading a poisoned document, writes a `<tool_call>` for
whatever plugin the user's message names; the plugins note each call they run."""

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


def noting_plugin(name: str, **config: Any) -> dict[str, str]:
    return {
        "config.json": json.dumps({"name": name, "isolation": "thread", **config}),
        "__init__.py": "",
        "plugin.py": ("from pathlib import Path\n"
                      "from moltbot.plugins import BasePlugin\n\n"
                      "class Noting(BasePlugin):\n"
                      "    def execute(self, context):\n"
                      "        with open(Path(__file__).with_name('calls.log'), 'a') as log:\n"
                      "            log.write('ran\\n')\n"
                      "        return {'ran': True}\n"),
    }


PLUGINS = {"echo": {}, "secret": {}, "wipe": {"admin": True}, "hidden": {"tool": False}}


class InjectedUpstream:
    """Answers `call <name>` with text holding a <tool_call> of that name (as a model following an instruction in a
    document would); once it has a tool result, says 'done'."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                messages = body["messages"]
                if any(m["role"] == "tool" for m in messages):
                    content = "done"
                else:
                    name = messages[-1]["content"].split()[-1]
                    content = f'Following the document. <tool_call>{{"name": "{name}", "arguments": {{}}}}</tool_call>'
                reply = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "scripted",
                                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                                 "finish_reason": "stop"}],
                                    "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply.encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, defaults_dir: Path) -> Iterator[Server]:
    upstream = InjectedUpstream()
    home = tmp_path_factory.mktemp("tools")
    (home / "models").mkdir()
    (home / "models" / "scripted.json").write_text(json.dumps(
        {"name": "scripted", "type": "service", "base_url": upstream.url, "model": "scripted"}))
    for name, config in PLUGINS.items():
        folder = home / "plugins" / name
        folder.mkdir(parents=True)
        for file, text in noting_plugin(name, **config).items():
            (folder / file).write_text(text)
    srv = start_server(home, env={"MOLTBOT_DEFAULT_MODELS": "on"})
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()
        upstream.close()


def calls(srv: Server, name: str) -> int:
    log = srv.home / "plugins" / name / "calls.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def chat(srv: Server, offered: list[str], asks_for: str, **extra: Any) -> dict[str, Any]:
    tools = [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}} for n in offered]
    reply = httpx.post(srv.url + "/v1/chat/completions", timeout=60, json={
        "model": "scripted", "tools": tools, "messages": [{"role": "user", "content": f"call {asks_for}"}], **extra})
    assert reply.status_code == 200, reply.text
    return reply.json()


@pytest.mark.parametrize("offered, injected", [(["echo"], "secret"), (["echo"], "wipe"), (["hidden"], "hidden")])
def test_a_call_of_a_plugin_the_request_did_not_offer_goes_back_to_the_client(server, offered, injected):
    before = calls(server, injected)
    reply = chat(server, offered, injected)
    [choice] = reply["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert [c["function"]["name"] for c in choice["message"]["tool_calls"]] == [injected]
    assert reply.get("plugin_calls", []) == []  # none ran (with no plugin offered, the plain chat path)
    assert calls(server, injected) == before


def test_the_listing_says_which_plugins_are_offered_to_models(server):
    listed = httpx.get(server.url + "/v1/plugins", timeout=30).json()["data"]
    assert {p["name"]: p["tool"] for p in listed} == {"echo": True, "secret": True, "wipe": True, "hidden": False}


def test_an_offered_plugin_runs(server):
    before = calls(server, "echo")
    reply = chat(server, ["echo"], "echo")
    assert reply["choices"][0]["message"]["content"] == "done"
    assert reply["plugin_calls"][0]["result"] == {"ran": True}
    assert calls(server, "echo") == before + 1


def test_an_admin_plugin_call_runs_only_when_the_request_opts_in(server):
    before = calls(server, "wipe")
    refused = chat(server, ["wipe"], "wipe")
    assert refused["plugin_calls"][0]["result"]["error"]["code"] == "admin_tool_call_not_allowed"
    assert calls(server, "wipe") == before
    allowed = chat(server, ["wipe"], "wipe", allow_admin_tool_calls=True)
    assert allowed["plugin_calls"][0]["result"] == {"ran": True}
    assert calls(server, "wipe") == before + 1
