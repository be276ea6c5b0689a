"""Second security review (#22) item 4 in a real browser (headless Chromium): a page on another 127.0.0.1 port
cannot make a keyless server run a plugin or reload plugins with a no-preflight text/plain POST, nor with a JSON
one (preflighted, not granted). DNS rebinding is tested with forged Host headers and a WebSocket handshake in
tests/runtime/test_security_review2_http.py."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Server, start_server

PROBE = {
    "config.json": json.dumps({"name": "probe", "isolation": "thread"}),
    "__init__.py": "",
    "plugin.py": ("from pathlib import Path\nfrom moltbot.plugins import BasePlugin\n\n"
                  "class Probe(BasePlugin):\n    def execute(self, context):\n"
                  "        with open(Path(__file__).with_name('calls.log'), 'a') as log:\n"
                  "            log.write('ran\\n')\n        return {'ran': True}\n"),
}
ATTACK = "<!doctype html><title>a website</title><p>hello</p>"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, defaults_dir: Path) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("cross-site")
    folder = home / "plugins" / "probe"
    folder.mkdir(parents=True)
    for name, text in PROBE.items():
        (folder / name).write_text(text)
    srv = start_server(home)
    srv.wait_ready()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def website() -> Iterator[str]:
    """Another site's page, on another 127.0.0.1 port."""
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            body = ATTACK.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def calls(srv: Server) -> int:
    log = srv.home / "plugins" / "probe" / "calls.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_a_cross_site_text_plain_post_runs_nothing(server, website, browser):
    page = browser.new_page()
    page.goto(website)
    for path in ("/v1/plugins/probe/execute", "/v1/plugins/reload"):
        sent = page.evaluate("""async (url) => {
            try { await fetch(url, {method: 'POST', mode: 'no-cors', body: '{}',
                                    headers: {'Content-Type': 'text/plain'}}); return 'sent'; }
            catch (e) { return 'failed: ' + e; } }""", server.url + path)
        assert sent == "sent"  # the browser sent it (no preflight for text/plain): the server must refuse it
    page.close()
    assert calls(server) == 0
    # The same call as JSON from a page is a preflighted request the server does not grant: nothing runs either.
    page = browser.new_page()
    page.goto(website)
    outcome = page.evaluate("""async (url) => {
        try { await fetch(url, {method: 'POST', body: '{}', headers: {'Content-Type': 'application/json'}});
              return 'answered'; } catch (e) { return 'blocked'; } }""", server.url + "/v1/plugins/probe/execute")
    page.close()
    assert outcome == "blocked" and calls(server) == 0
