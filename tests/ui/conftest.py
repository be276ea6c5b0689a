"""Fixtures of the chat-page tests: Debian's Chromium driven by Playwright (its wheel's driver, no downloaded
browser), a live `moltbot serve` with the small default models, a scripted OpenAI-compatible upstream (a
`service` model whose answers the tests choose) and an `echo` plugin."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Server, start_server
from tests.ui.browser import launched_chromium, playwright_missing

REPO = Path(__file__).resolve().parents[2]

ECHO_PLUGIN = {
    "config.json": json.dumps({"name": "echo", "version": "1.0.0", "description": "Echoes a word back, upper-cased.",
                               "input_schema": {"type": "object", "properties": {"word": {"type": "string"}},
                                                "required": ["word"]}}),
    "__init__.py": "",
    "plugin.py": ("from moltbot.plugins import BasePlugin\n\n"
                  "class EchoPlugin(BasePlugin):\n"
                  "    def execute(self, context):\n"
                  "        return {'echoed': context.input['word'].upper()}\n"),
}

# What the scripted model says, by a word in the last user message.
HOSTILE = ('Here is markup: <img src=x onerror="window.__pwned = 1"> and <script>window.__pwned = 2</script> '
           'and [a link](javascript:window.__pwned=3) and **bold**.\n\n'
           '```python\nprint("hello from a code block")\n```\n')
FRIENDLY = ("Moltbot serves models over an **OpenAI-compatible API**. A first request:\n\n"
            "```sh\ncurl http://127.0.0.1:8080/v1/chat/completions \\\n  -H 'Content-Type: application/json' \\\n"
            "  -d '{\"model\": \"tiny-chat\", \"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}]}'\n```\n\n"
            "- streaming over SSE or the WebSocket\n- plugins as tools\n")


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    reason = playwright_missing()
    if reason:
        pytest.skip(reason)
    with launched_chromium() as browser:
        yield browser


@dataclass
class PageProblems:
    """Console errors, uncaught exceptions and CSP violations seen on a page."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def csp_violations(self, page: Any) -> list[str]:
        return list(page.evaluate("window.__cspViolations || []"))


# Added before the page's own scripts (through the DevTools protocol, so not subject to the page's CSP).
CSP_LISTENER = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation',
  (e) => window.__cspViolations.push(e.violatedDirective + ' ' + e.blockedURI));
"""


@pytest.fixture
def open_page(browser: Any) -> Iterator[Any]:
    """open_page(url, width=1100, height=800) -> (page, problems); the browser context closes after the test."""
    contexts: list[Any] = []

    def opener(url: str, width: int = 1100, height: int = 800, color_scheme: str = "light") -> tuple[Any, PageProblems]:
        context = browser.new_context(viewport={"width": width, "height": height}, color_scheme=color_scheme)
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=url.split("/ui")[0].rstrip("/"))
        contexts.append(context)
        page = context.new_page()
        problems = PageProblems()
        page.on("console", lambda msg: problems.console_errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: problems.page_errors.append(str(exc)))
        page.add_init_script(CSP_LISTENER)
        page.goto(url)
        return page, problems

    yield opener
    for context in contexts:
        context.close()


class ScriptedUpstream:
    """An OpenAI-compatible chat upstream (streamed or not): asks for `echo` when given tools and no tool result
    yet, repeats the tool's result once given it, says HOSTILE when asked for 'markup', FRIENDLY otherwise."""

    def __init__(self) -> None:
        outer = self
        self.requests: list[dict[str, Any]] = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                message, finish = outer.answer(body)
                if body.get("stream"):
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.end_headers()
                    text = message.get("content") or ""
                    pieces = [text[i:i + 12] for i in range(0, len(text), 12)] or [""]
                    for number, piece in enumerate(pieces):
                        last = number == len(pieces) - 1
                        chunk = {"id": "s", "object": "chat.completion.chunk", "created": 0, "model": "scripted",
                                 "choices": [{"index": 0, "delta": {"content": piece},
                                              "finish_reason": finish if last else None}]}
                        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                        self.wfile.flush()
                        time.sleep(0.02)
                    self.wfile.write(b"data: [DONE]\n\n")
                    return
                reply = json.dumps({"id": "s", "object": "chat.completion", "created": 0, "model": "scripted",
                                    "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                                    "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply.encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @staticmethod
    def answer(body: dict[str, Any]) -> tuple[dict[str, Any], str]:
        messages = body["messages"]
        tool_results = [m for m in messages if m["role"] == "tool"]
        last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        if body.get("tools") and not tool_results:
            word = last_user.split()[-1] if last_user.split() else "moltbot"
            return {"role": "assistant", "content": None, "tool_calls": [{
                "id": "call_1", "type": "function",
                "function": {"name": "echo", "arguments": json.dumps({"word": word})}}]}, "tool_calls"
        if tool_results:
            return {"role": "assistant", "content": f"The echo tool answered `{tool_results[-1]['content']}`."}, "stop"
        if "markup" in last_user:
            return {"role": "assistant", "content": HOSTILE}, "stop"
        return {"role": "assistant", "content": FRIENDLY}, "stop"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def prepare_home(home: Path, upstream: ScriptedUpstream) -> Path:
    (home / "models").mkdir(parents=True, exist_ok=True)
    (home / "models" / "scripted.json").write_text(json.dumps(
        {"name": "scripted", "type": "service", "base_url": upstream.url, "model": "scripted"}))
    plugin_dir = home / "plugins" / "echo"
    plugin_dir.mkdir(parents=True, exist_ok=True)
    for name, text in ECHO_PLUGIN.items():
        (plugin_dir / name).write_text(text)
    return home


@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptedUpstream]:
    scripted = ScriptedUpstream()
    yield scripted
    scripted.close()


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory: pytest.TempPathFactory, defaults_dir: Path,
              upstream: ScriptedUpstream) -> Iterator[Server]:
    """tiny-chat and all-minilm-l6-v2 (the embedded defaults), `scripted` and the `echo` plugin; no API keys."""
    home = prepare_home(tmp_path_factory.mktemp("ui"), upstream)
    srv = start_server(home, env={"MOLTBOT_DEFAULT_MODELS": "on"})
    srv.wait_ready()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def real_ui_server(tmp_path_factory: pytest.TempPathFactory, real_defaults_dir: Path) -> Iterator[Server]:
    """The product's defaults (smollm2-135m-instruct, all-minilm-l6-v2) as `make run` serves them."""
    srv = start_server(tmp_path_factory.mktemp("ui-real"), defaults=real_defaults_dir)
    srv.wait_ready()
    yield srv
    srv.stop()


def metric(srv: Server, series: str) -> float | None:
    """One series' value from /metrics, e.g. metric(srv, 'moltbot_running_requests{model="tiny-chat"}')."""
    for line in httpx.get(srv.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[-1])
    return None


def screenshot_dir(tmp_path: Path) -> Path:
    """Where screenshots go: the test's temporary folder, or docs/images with MOLTBOT_SCREENSHOTS=docs."""
    if os.environ.get("MOLTBOT_SCREENSHOTS") == "docs":
        target = REPO / "docs" / "images"
        target.mkdir(parents=True, exist_ok=True)
        return target
    return tmp_path
