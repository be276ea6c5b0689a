"""The chat page at / and /ui/, in headless Chromium (Debian's package, driven by Playwright) against a live
`moltbot serve`: loading without console errors or CSP violations, streaming over /v1/ws, stopping (the server's
running-requests gauge drops), API keys, plugin tool calls shown inline, model markup shown as text."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Server, start_server
from tests.ui.conftest import PageProblems, ScriptedUpstream, metric, screenshot_dir

RUNNING = 'moltbot_running_requests{model="tiny-chat"}'
GENERATED = 'moltbot_generation_tokens_total{model="tiny-chat"}'


def wait_ready(page: Any) -> None:
    page.wait_for_selector('body[data-state="ready"]', timeout=30_000)


def ask(page: Any, model: str, text: str) -> Any:
    """Sends `text` to `model`; returns the locator of the answer (the last message)."""
    page.select_option("#model", model)
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")
    return page.locator("#messages article").last


def wait_finished(answer: Any, timeout: float = 30_000) -> str:
    answer.page.wait_for_function(
        "el => el.dataset.status && el.dataset.status !== 'streaming'", arg=answer.element_handle(), timeout=timeout)
    return str(answer.get_attribute("data-status"))


def set_options(page: Any, temperature: str = "", max_tokens: str = "") -> None:
    if not page.evaluate("document.getElementById('options').open"):
        page.click("#options summary")
    page.fill("#temperature", temperature)
    page.fill("#max-tokens", max_tokens)


def assert_clean(page: Any, problems: PageProblems) -> None:
    assert problems.console_errors == []
    assert problems.page_errors == []
    assert problems.csp_violations(page) == []


# ---- headers, off switch (plain HTTP) ------------------------------------------------------------------
def test_page_and_files_are_served_with_strict_headers(ui_server: Server) -> None:
    with httpx.Client(base_url=ui_server.url, timeout=10) as http:
        for path in ("/", "/ui/", "/ui"):
            page = http.get(path)
            assert page.status_code == 200, path
            assert page.headers["content-type"].startswith("text/html")
            csp = page.headers["content-security-policy"]
            assert "default-src 'none'" in csp and "script-src 'self'" in csp and "style-src 'self'" in csp
            assert "unsafe-inline" not in csp and "unsafe-eval" not in csp and "frame-ancestors 'none'" in csp
            assert page.headers["x-content-type-options"] == "nosniff"
            assert page.headers["cache-control"] == "no-cache"
        etag = page.headers["etag"]
        assert http.get("/", headers={"if-none-match": etag}).status_code == 304
        html = page.text
        assert "<script>" not in html and "style=" not in html  # nothing inline
        scripts = [part.split('"')[0] for part in html.split('src="')[1:]]
        assert [s.split("?")[0] for s in scripts] == ["/ui/vendor/purify.min.js", "/ui/vendor/marked.umd.js",
                                                      "/ui/app.js"]
        for url in scripts:
            asset = http.get(url)
            assert asset.status_code == 200, url
            assert asset.headers["content-type"].startswith("text/javascript")
            assert asset.headers["x-content-type-options"] == "nosniff"
            assert asset.headers["cache-control"] == "public, max-age=86400"
            assert "?v=" in url  # the content hash: a changed file gets a new URL
        assert http.get("/ui/app.css").headers["content-type"].startswith("text/css")
        assert http.get("/ui/nope.js").status_code == 404
        assert http.get("/ui/../settings.py").status_code == 404
        assert http.get("/v1/models").status_code == 200  # the API is untouched


def test_the_websocket_picks_the_page_subprotocol_and_still_takes_clients_offering_none(ui_server: Server) -> None:
    from websockets.sync.client import connect

    url = f"ws://127.0.0.1:{ui_server.port}/v1/ws"
    with connect(url) as plain:
        assert plain.subprotocol is None
        plain.send(json.dumps({"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}],
                               "max_tokens": 2}))
        while json.loads(plain.recv(timeout=30))["type"] != "done":
            pass
    with connect(url, subprotocols=["moltbot"]) as page_like:  # type: ignore[list-item]
        assert page_like.subprotocol == "moltbot"


def test_moltbot_ui_off_answers_404(server_factory: Any) -> None:
    srv = server_factory("off", env={"MOLTBOT_UI": "off", "MOLTBOT_DEFAULT_MODELS": "off"})
    for path in ("/", "/ui/", "/ui/app.js"):
        assert httpx.get(srv.url + path, timeout=10).status_code == 404, path
    assert httpx.get(srv.url + "/health", timeout=10).status_code == 200


# ---- in the browser ------------------------------------------------------------------------------------
def test_a_message_streams_an_answer_from_the_small_model(ui_server: Server, open_page: Any) -> None:
    page, problems = open_page(ui_server.url + "/")
    frames: list[str] = []
    page.on("websocket", lambda ws: ws.on("framereceived", lambda payload: frames.append(str(payload))))
    wait_ready(page)
    models = page.eval_on_selector_all("#model option", "els => els.map(e => e.value)")
    assert "tiny-chat" in models and "scripted" in models
    assert "all-minilm-l6-v2" not in models  # not a chat model
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(255, 255, 255)"  # light
    set_options(page, temperature="0", max_tokens="24")
    answer = ask(page, "tiny-chat", "Hello there")
    assert wait_finished(answer) in ("done", "length")
    chunks = [json.loads(f) for f in frames if json.loads(f)["type"] == "chunk"]
    assert len(chunks) > 3  # token by token, not in one piece
    done = next(json.loads(f) for f in frames if json.loads(f)["type"] == "done")
    text = done["data"]["choices"][0]["message"]["content"]
    assert text.strip()
    shown = answer.locator(".content").inner_text()
    assert shown.split()[0] in text  # what streamed is what is shown
    assert_clean(page, problems)

    # The conversation is in this tab's sessionStorage: a reload shows it again; New chat empties it.
    stored = json.loads(page.evaluate("sessionStorage.getItem('moltbot.conversation')"))
    assert [m["role"] for m in stored["messages"]] == ["user", "assistant"]
    assert stored["messages"][1]["content"] == text
    page.reload()
    wait_ready(page)
    assert page.locator("#messages article").count() == 2
    page.click("#new-chat")
    assert page.locator("#messages article").count() == 0
    assert json.loads(page.evaluate("sessionStorage.getItem('moltbot.conversation')"))["messages"] == []
    assert_clean(page, problems)


def test_stop_cancels_the_generation_on_the_server(ui_server: Server, open_page: Any) -> None:
    page, problems = open_page(ui_server.url + "/ui/")

    # A random-weight model may stop early: ignore_eos (an API extension the page does not send) makes it run
    # the whole max_tokens unless cancelled. Added to what the page sends, in the page (before its next message).
    page.evaluate("""() => {
        const send = WebSocket.prototype.send;
        WebSocket.prototype.send = function (data) {
            return send.call(this, JSON.stringify({...JSON.parse(data), ignore_eos: true}));
        };
    }""")
    wait_ready(page)
    set_options(page, max_tokens="1900")
    before = metric(ui_server, GENERATED) or 0.0
    answer = ask(page, "tiny-chat", "Tell me a long story")
    deadline = time.monotonic() + 20
    while metric(ui_server, RUNNING) != 1.0 or not answer.locator(".content").inner_text().strip():
        assert time.monotonic() < deadline, "the generation never showed as running"
        time.sleep(0.05)
    page.click("#stop")
    assert answer.get_attribute("data-status") == "stopped"
    deadline = time.monotonic() + 15  # seconds at most, even on a loaded machine
    while metric(ui_server, RUNNING) != 0.0:
        assert time.monotonic() < deadline, "the running-requests gauge did not drop after Stop"
        time.sleep(0.05)
    generated = (metric(ui_server, GENERATED) or 0.0) - before
    assert generated < 1900  # cancelled long before its 1900 tokens
    time.sleep(0.5)
    assert (metric(ui_server, GENERATED) or 0.0) - before == generated  # and nothing more is generated
    assert "stopped" in answer.locator(".status").inner_text()

    # The page goes on: the next message opens a new socket.
    set_options(page, max_tokens="4")
    assert wait_finished(ask(page, "tiny-chat", "Again")) in ("done", "length")
    assert_clean(page, problems)


def test_a_plugin_tool_call_is_shown_inline(ui_server: Server, open_page: Any, upstream: ScriptedUpstream,
                                            tmp_path: Any) -> None:
    page, problems = open_page(ui_server.url + "/")
    wait_ready(page)
    first = ask(page, "scripted", "What is Moltbot?")
    assert wait_finished(first) == "done"
    assert first.locator("pre code").count() == 1 and first.locator("li").count() == 2
    page.click("#options summary")
    page.check('input[data-plugin="echo"]')
    page.click("#options summary")
    answer = ask(page, "scripted", "Please echo moltbot")
    assert wait_finished(answer) == "done"
    call = answer.locator(".tool-call")
    assert call.count() == 1
    assert call.locator("summary").inner_text() == 'Tool call: echo({"word": "moltbot"})'
    assert '"echoed": "MOLTBOT"' in call.locator("pre").inner_text()
    assert 'The echo tool answered {"echoed": "MOLTBOT"}.' in answer.locator(".content").inner_text()
    sent = upstream.requests[-2]  # the round that asked for the tool
    assert [tool["function"]["name"] for tool in sent["tools"]] == ["echo"]
    assert sent["tools"][0]["function"]["parameters"]["required"] == ["word"]  # the plugin's input schema
    assert_clean(page, problems)
    page.screenshot(path=str(screenshot_dir(tmp_path) / "ui-chat-tool-call.png"))


def test_the_real_default_model_answers_on_the_page(real_ui_server: Server, open_page: Any, tmp_path: Any) -> None:
    """smollm2-135m-instruct, greedy: a fact it knows, then a code block; the README's screenshot."""
    page, problems = open_page(real_ui_server.url + "/")
    wait_ready(page)
    assert page.eval_on_selector_all("#model option", "els => els.map(e => e.value)") == ["smollm2-135m-instruct"]
    set_options(page, temperature="0", max_tokens="96")
    answer = ask(page, "smollm2-135m-instruct", "What is the capital of France? Answer in one sentence.")
    assert wait_finished(answer, timeout=120_000) == "done"
    assert "Paris" in answer.locator(".content").inner_text()
    code = ask(page, "smollm2-135m-instruct", "Write a Python function add(a, b) that returns the sum of a and b.")
    assert wait_finished(code, timeout=120_000) in ("done", "length")
    assert "return a + b" in code.locator("pre code").first.inner_text()  # the name it picks varies
    assert_clean(page, problems)
    page.screenshot(path=str(screenshot_dir(tmp_path) / "ui-chat.png"))


def test_model_markup_is_shown_as_text_never_run(ui_server: Server, open_page: Any, tmp_path: Any) -> None:
    page, problems = open_page(ui_server.url + "/", width=390, height=844, color_scheme="dark")
    wait_ready(page)
    answer = ask(page, "scripted", "show me some markup")
    assert wait_finished(answer) == "done"
    text = answer.locator(".content").inner_text()
    assert '<img src=x onerror="window.__pwned = 1">' in text
    assert "<script>window.__pwned = 2</script>" in text
    assert page.evaluate("window.__pwned") is None
    assert page.locator("#messages img, #messages script, #messages iframe").count() == 0
    assert page.locator('#messages a[href^="javascript"]').count() == 0
    assert answer.locator("strong").inner_text() == "bold"  # Markdown is still rendered
    # Code blocks have a copy button that copies the code.
    answer.locator("pre .copy").click()
    assert page.evaluate("navigator.clipboard.readText()").strip() == 'print("hello from a code block")'
    assert answer.locator("pre .copy").inner_text() == "Copied"
    # The dark style follows the system setting (this context prefers dark).
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(21, 24, 28)"
    # Usable at phone width: nothing wider than the screen, the composer on screen.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    box = page.locator("#prompt").bounding_box()
    assert box is not None and box["y"] + box["height"] <= 844
    assert_clean(page, problems)
    page.screenshot(path=str(screenshot_dir(tmp_path) / "ui-chat-phone-dark.png"))


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory, defaults_dir: Path) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("keyed"), env={"MOLTBOT_API_KEYS": "sk-right-key",
                                                               "MOLTBOT_DEFAULT_MODELS": "on"})
    srv.wait_ready()
    yield srv
    srv.stop()


def test_the_websocket_takes_the_key_as_a_subprotocol(keyed_server: Server) -> None:
    """A browser cannot set headers on a WebSocket: the page offers `moltbot` and `moltbot.key.<base64url>`."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    def key_protocol(key: str) -> Any:
        return "moltbot.key." + base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")

    def handshake(protocols: list[Any], headers: dict[str, str] | None = None) -> Any:
        try:
            with connect(f"ws://127.0.0.1:{keyed_server.port}/v1/ws", subprotocols=protocols or None,
                         additional_headers=headers) as ws:
                return ws.subprotocol
        except InvalidStatus as exc:
            return exc.response.status_code

    assert handshake(["moltbot", key_protocol("sk-wrong")]) == 401
    assert handshake(["moltbot", "moltbot.key.%%%"]) == 401  # not base64: no key
    assert handshake(["moltbot"]) == 401
    assert handshake([]) == 401
    assert handshake(["moltbot", key_protocol("sk-right-key")]) == "moltbot"
    assert handshake([], {"Authorization": "Bearer sk-right-key"}) is None  # headers still work
    # Only on the WebSocket's own upgrade: another route is not let in by the subprotocol, even on a request
    # that says it is an upgrade.
    for upgrade in ({}, {"upgrade": "websocket", "connection": "Upgrade", "sec-websocket-version": "13",
                         "sec-websocket-key": base64.b64encode(b"0123456789abcdef").decode()}):
        plain = httpx.get(keyed_server.url + "/v1/models", timeout=10,
                          headers={"sec-websocket-protocol": key_protocol("sk-right-key"), **upgrade})
        assert plain.status_code == 401


def test_a_key_protected_server_refuses_a_wrong_key_and_takes_a_right_one(
        keyed_server: Server, open_page: Any, tmp_path: Any) -> None:
    srv = keyed_server
    page, problems = open_page(srv.url + "/")
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    page.on("websocket", lambda ws: urls.append(ws.url))
    page.wait_for_selector("#key-form:not(.hidden)")
    page.fill("#key", "sk-wrong")
    page.click("#key-submit")
    page.wait_for_selector("#key-error:not(.hidden)")
    assert "Wrong API key" in page.inner_text("#key-error")
    assert page.evaluate("sessionStorage.getItem('moltbot.key')") is None
    page.fill("#key", "sk-right-key")
    page.click("#key-submit")
    wait_ready(page)
    assert page.is_hidden("#key-form")
    set_options(page, max_tokens="4")
    assert wait_finished(ask(page, "tiny-chat", "Hello")) in ("done", "length")
    assert page.evaluate("sessionStorage.getItem('moltbot.key')") == "sk-right-key"
    assert urls and not any("sk-" in url for url in urls)  # never in a URL
    # The only console errors are the browser's own lines for the 401 answers the page handled.
    assert all("401" in line for line in problems.console_errors), problems.console_errors
    assert problems.page_errors == [] and problems.csp_violations(page) == []
    page.screenshot(path=str(tmp_path / "keyed.png"))
