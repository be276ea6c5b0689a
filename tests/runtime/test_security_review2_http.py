"""Second security review (#22), the HTTP side: what a website can make a keyless server do (items 4, 5), the
metrics key on every spelling of the route (8) and redacted plugin load errors (9). A live `moltbot serve` for the
browser-facing checks; the app in process (Sanic's ASGI client) where no model is needed."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sanic import Sanic
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from moltbot.api.app import create_app
from moltbot.api.server import check_exposure
from moltbot.settings import Settings, SettingsError
from tests.conftest import Server, start_server

# A plugin that notes every call it runs, so that a test can tell a refused request from one that ran.
PROBE_PLUGIN = {
    "config.json": json.dumps({"name": "probe", "version": "1.0.0", "isolation": "thread",
                               "description": "Notes each call in calls.log."}),
    "__init__.py": "",
    "plugin.py": ("from pathlib import Path\n"
                  "from moltbot.plugins import BasePlugin\n\n"
                  "class ProbePlugin(BasePlugin):\n"
                  "    def execute(self, context):\n"
                  "        with open(Path(__file__).with_name('calls.log'), 'a') as log:\n"
                  "            log.write('ran\\n')\n"
                  "        return {'ran': True}\n"),
}
SECRET_URL = "postgresql://admin:s3cret-db-password@db.example:5432/shop?sslpassword=tok-123"
BROKEN_PLUGIN = {
    "config.json": json.dumps({"name": "broken", "isolation": "thread"}),
    "__init__.py": "",
    "plugin.py": f"raise RuntimeError('cannot reach {SECRET_URL}')\n",
}
LISTED_ORIGIN = "https://app.example.com"
ALLOWED_NAME = "chat.example.com"


def write_plugin(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def probe_calls(srv: Server) -> int:
    log = srv.home / "plugins" / "probe" / "calls.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


@pytest.fixture(scope="module")
def keyless(tmp_path_factory: pytest.TempPathFactory, defaults_dir: Path) -> Iterator[Server]:
    """`make run`'s kind of server: no keys, on 127.0.0.1, with the probe plugin; one name allowed, one origin
    listed in cors_origins."""
    home = tmp_path_factory.mktemp("keyless")
    write_plugin(home / "plugins" / "probe", PROBE_PLUGIN)
    write_plugin(home / "plugins" / "broken", BROKEN_PLUGIN)
    srv = start_server(home, env={"MOLTBOT_ALLOWED_HOSTS": ALLOWED_NAME.upper(),
                                  "MOLTBOT_CORS_ORIGINS": LISTED_ORIGIN})
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


# ---- item 4: only JSON bodies, so that no cross-site form or text/plain POST runs without a preflight -----------

@pytest.mark.parametrize("path", ["/v1/plugins/reload", "/v1/plugins/probe/execute", "/v1/chat/completions"])
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", None])
def test_a_post_that_is_not_json_is_refused_before_it_runs(keyless, path, content_type):
    before = probe_calls(keyless)
    headers = {"content-type": content_type} if content_type else {}
    body = b'{"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}]}' if content_type else b""
    refused = httpx.post(keyless.url + path, content=body, headers=headers, timeout=30)
    assert refused.status_code == 415, refused.text
    assert refused.json()["error"]["code"] == "unsupported_media_type"
    assert probe_calls(keyless) == before


def test_a_json_post_still_runs(keyless):
    before = probe_calls(keyless)
    ran = httpx.post(keyless.url + "/v1/plugins/probe/execute", content=b"{}",
                     headers={"content-type": "Application/JSON; charset=utf-8"}, timeout=30)
    assert ran.status_code == 200 and ran.json()["result"] == {"ran": True}
    assert probe_calls(keyless) == before + 1


# ---- item 4: the Host header of a keyless server (DNS rebinding) ---------------------------------------------------

@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1.evil.example:{port}",
                                  "localhost.evil.example", "user@127.0.0.1:{port}", "127.0.0.1:port", "[::1"])
def test_a_keyless_server_refuses_a_host_that_names_another_site(keyless, host):
    before = probe_calls(keyless)
    header = {"host": host.format(port=keyless.port)}
    for method, path, body in (("GET", "/v1/models", None), ("GET", "/", None), ("GET", "/v1/plugins", None),
                               ("POST", "/v1/plugins/probe/execute", {})):
        refused = httpx.request(method, keyless.url + path, headers=header, json=body, timeout=30)
        assert refused.status_code == 421, (host, path, refused.text)
        assert refused.json()["error"]["code"] == "host_not_allowed"
    assert probe_calls(keyless) == before


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST.", "[::1]:{port}",
                                  "chat.localhost:{port}", "192.0.2.7:8080", "[2001:db8::1]", ALLOWED_NAME,
                                  f"{ALLOWED_NAME}:443"])
def test_a_keyless_server_answers_this_machine_ip_addresses_and_allowed_names(keyless, host):
    answered = httpx.get(keyless.url + "/v1/models", headers={"host": host.format(port=keyless.port)}, timeout=30)
    assert answered.status_code == 200, (host, answered.text)


def test_probes_and_metrics_answer_any_host_and_ready_gives_it_the_short_form(keyless):
    header = {"host": "evil.example"}
    assert httpx.get(keyless.url + "/health", headers=header, timeout=30).status_code == 200
    assert "moltbot_requests_total" in httpx.get(keyless.url + "/metrics/", headers=header, timeout=30).text
    ready = httpx.get(keyless.url + "/ready", headers=header, timeout=30)
    assert ready.status_code == 200 and ready.json()["counts"]["loaded"] == 2


def test_a_rebound_websocket_is_refused_though_its_origin_matches_its_host(keyless):
    """After DNS rebinding the page's Origin and the request's Host both name the website: the Origin check alone
    lets that through, the Host check does not."""
    name = f"rebind.example:{keyless.port}"
    with socket.create_connection(("127.0.0.1", keyless.port), timeout=30) as sock, \
            pytest.raises(InvalidStatus) as refused, \
            connect(f"ws://{name}/v1/ws", sock=sock, origin=f"http://{name}", subprotocols=["moltbot"], open_timeout=9):
        pass
    assert refused.value.response.status_code == 421
    own = f"127.0.0.1:{keyless.port}"
    with connect(f"ws://{own}/v1/ws", origin=f"http://{own}", subprotocols=["moltbot"], open_timeout=30) as ws:
        assert ws.subprotocol == "moltbot"


# ---- item 4: Private Network Access preflights -----------------------------------------------------------------------

def pna_preflight(srv: Server, origin: str, path: str = "/v1/plugins/reload") -> httpx.Response:
    return httpx.options(srv.url + path, timeout=30, headers={
        "origin": origin, "access-control-request-method": "POST",
        "access-control-request-headers": "content-type", "access-control-request-private-network": "true"})


@pytest.mark.parametrize("path", ["/v1/plugins/reload", "/v1/models", "/v1/chat/completions"])
def test_a_private_network_access_preflight_is_refused(keyless, path):
    refused = pna_preflight(keyless, "https://evil.example", path)
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["code"] == "private_network_access_refused"
    assert "access-control-allow-private-network" not in refused.headers
    assert "access-control-allow-origin" not in refused.headers


def test_an_origin_listed_by_name_may_reach_the_private_network(keyless):
    allowed = pna_preflight(keyless, LISTED_ORIGIN)
    assert allowed.status_code == 204
    assert allowed.headers["access-control-allow-private-network"] == "true"
    assert allowed.headers["access-control-allow-origin"] == LISTED_ORIGIN


# ---- item 5: no keys on an address others can reach -----------------------------------------------------------------

def settings(**environ: str) -> Settings:
    return Settings.load(environ={f"MOLTBOT_{k.upper()}": v for k, v in environ.items()})


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.0.2.7", "moltbot.example.com"])
def test_serving_without_keys_on_a_reachable_address_is_refused(host):
    with pytest.raises(SettingsError, match="MOLTBOT_ALLOW_UNAUTHENTICATED=true") as refused:
        check_exposure(settings(host=host))
    assert "no API keys" in str(refused.value) and "MOLTBOT_API_KEYS_FILE" in str(refused.value)


@pytest.mark.parametrize("environ", [
    {"host": "127.0.0.1"}, {"host": "127.0.0.2"}, {"host": "::1"}, {"host": "[::1]"}, {"host": "localhost"},
    {"host": "0.0.0.0", "api_keys": "k"}, {"host": "0.0.0.0", "admin_api_keys": "a"},
    {"host": "0.0.0.0", "allow_unauthenticated": "true"},
])
def test_loopback_keys_or_the_opt_in_may_serve(environ):
    check_exposure(settings(**environ))


def test_moltbot_serve_exits_non_zero_with_the_reason(tmp_path):
    environ = {"PATH": "/usr/bin:/bin", "MOLTBOT_HOST": "0.0.0.0", "MOLTBOT_PORT": "9",  # never bound
               "MOLTBOT_LOGS_DIR": str(tmp_path / "logs"), "MOLTBOT_MODELS_DIR": str(tmp_path / "models")}
    result = subprocess.run([sys.executable, "-m", "moltbot", "serve"], env=environ, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2, result.stderr
    assert "moltbot: refusing to serve: host: 0.0.0.0 is not a loopback address and no API keys are set" \
        in result.stderr
    assert "MOLTBOT_ALLOW_UNAUTHENTICATED=true" in result.stderr and "Traceback" not in result.stderr


# ---- items 8 and 9, in process ----------------------------------------------------------------------------------

def in_process(tmp_path: Path, **environ: str) -> Any:
    Sanic.test_mode = True
    base = {"MOLTBOT_MODELS_DIR": str(tmp_path / "models"), "MOLTBOT_PLUGINS_DIR": str(tmp_path / "plugins"),
            "MOLTBOT_LOGS_DIR": str(tmp_path / "logs"), "MOLTBOT_DEFAULT_MODELS": "off"}
    return create_app(Settings.load(environ={**base, **{f"MOLTBOT_{k.upper()}": v for k, v in environ.items()}}),
                      name=f"review2_{len(environ)}_{tmp_path.name}")


def test_metrics_need_the_key_on_every_spelling_of_the_route(tmp_path):
    app = in_process(tmp_path, api_keys="sk-metrics", metrics_require_key="true")

    async def scenario() -> None:
        for path in ("/metrics", "/metrics/"):
            _, refused = await app.asgi_client.get(path)
            assert refused.status_code == 401, path
            _, allowed = await app.asgi_client.get(path, headers={"authorization": "Bearer sk-metrics"})
            assert allowed.status_code == 200 and "moltbot_requests_total" in allowed.text, path

    asyncio.run(scenario())


def test_plugin_load_errors_are_redacted_in_the_listing_the_reload_and_the_409(keyless):
    listing = httpx.get(keyless.url + "/v1/plugins", timeout=30)
    reloaded = httpx.post(keyless.url + "/v1/plugins/reload", json={"names": ["broken"]}, timeout=60)
    refused = httpx.post(keyless.url + "/v1/plugins/broken/execute", json={}, timeout=30)
    assert refused.status_code == 409, refused.text
    [entry] = [e for e in listing.json()["data"] if e["name"] == "broken"]
    assert "postgresql://db.example:5432/shop" in entry["error"]
    for text in (listing.text, reloaded.text, refused.text):
        assert "db.example" in text, text
        assert "s3cret-db-password" not in text and "tok-123" not in text and "admin:" not in text, text
