"""Plugins in a real `moltbot serve`: discovery at start, API keys, request ids, metrics, reload, real models."""

from __future__ import annotations

import json
import shutil

import httpx

from plugin_helpers import BUILTIN_PLUGINS, write_plugin

ARTICLE_EXAMPLE = '''
from moltbot.plugins import BasePlugin
class CustomPlugin(BasePlugin):
    def __init__(self, config):
        super().__init__(config)
        self.api_key = config.get('api_key')
    def execute(self, context):
        # business logic
        return {"result": "processed", "has_key": bool(self.api_key)}
'''


def test_plugins_in_the_running_service(server_factory, tmp_path):
    home = tmp_path / "srv"
    plugins = home / "plugins"
    folder = write_plugin(plugins, "custom_plugin", ARTICLE_EXAMPLE,
                          {"version": "1.0.0", "settings": {"api_key": "${CUSTOM_PLUGIN_KEY}"}})
    write_plugin(plugins, "broken", "import this_module_is_missing\n", {})
    shutil.copytree(BUILTIN_PLUGINS / "support_faq", plugins / "support_faq")
    server = server_factory("srv", env={"MOLTBOT_API_KEYS": "test-key", "CUSTOM_PLUGIN_KEY": "k-123"})
    auth = {"Authorization": "Bearer test-key"}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        assert client.get("/v1/plugins").status_code == 401
        listing = client.get("/v1/plugins", headers=auth).json()["data"]
        status = {p["name"]: p for p in listing}
        assert status["custom_plugin"]["status"] == "loaded" and status["support_faq"]["status"] == "loaded"
        assert status["broken"]["status"] == "error" and "this_module_is_missing" in status["broken"]["error"]

        reply = client.post("/v1/plugins/custom_plugin/execute", json={},
                            headers={**auth, "x-request-id": "req-e2e-1"})
        assert reply.status_code == 200
        assert reply.headers["x-request-id"] == "req-e2e-1" and reply.json()["request_id"] == "req-e2e-1"
        assert reply.json()["result"] == {"result": "processed", "has_key": True}

        faq = client.post("/v1/plugins/support_faq/execute", json={"question": "Where is my parcel?"}, headers=auth)
        assert faq.status_code == 200, faq.text
        assert faq.json()["result"]["matched_question"] == "How can I track my order?"

        bad = client.post("/v1/plugins/support_faq/execute", json={"question": 42}, headers=auth)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "question"

        (folder / "config.json").write_text(json.dumps({"version": "1.1.0"}))
        reloaded = client.post("/v1/plugins/reload", json={"names": ["custom_plugin"]}, headers=auth)
        assert reloaded.status_code == 200 and reloaded.json()["results"][0]["version"] == "1.1.0"
        again = client.post("/v1/plugins/custom_plugin/execute", json={}, headers=auth).json()
        assert again["version"] == "1.1.0" and again["result"]["has_key"] is False

        assert "/v1/plugins/{name}/execute" in client.get("/openapi.json").json()["paths"]
        metrics = client.get("/metrics").text
        assert 'moltbot_plugin_load_errors_total{plugin="broken"} 1.0' in metrics
        assert 'moltbot_plugin_calls_total{outcome="ok",plugin="custom_plugin"} 2.0' in metrics
        assert 'moltbot_plugin_calls_total{outcome="invalid",plugin="support_faq"} 1.0' in metrics
    assert "k-123" not in server.output()
