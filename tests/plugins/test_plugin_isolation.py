"""Plugins in worker processes (issue #16, item 7): a timeout or a crash kills and restarts the worker, a memory
limit holds, the service stays healthy; context.models / context.plugins / logging work across the process
boundary. Real worker processes, the real model registry, and a live `moltbot serve`."""

from __future__ import annotations

import logging
import os
import time

import httpx
import pytest

from moltbot.plugins.errors import PluginError, PluginFailed, PluginTimeout
from moltbot.plugins.manager import PluginManager
from plugin_helpers import make_settings, write_plugin

pytestmark = pytest.mark.anyio

WORKER = '''
import os, time
from moltbot.plugins import BasePlugin, PluginError


class Worker(BasePlugin):
    def execute(self, context):
        what = context.input.get("do", "pid")
        if what == "pid":
            context.logger.info("running in %d", os.getpid())
            return {"pid": os.getpid(), "secret_env": os.environ.get("MOLTBOT_API_KEYS"),
                    "setting": context.settings.get("greeting"), "left": context.time_left() > 0}
        if what == "loop":
            while True:
                pass
        if what == "exit":
            os._exit(3)
        if what == "memory":
            block = bytearray(1024 * 1024 * 1024)
            return {"size": len(block)}
        if what == "refuse":
            raise PluginError("not today", code="refused")
        if what == "bug":
            raise ValueError("a bug")
        if what == "models":
            reply = context.models.chat([{"role": "user", "content": "hi"}], max_tokens=2)
            return {"names": context.models.names("embeddings"), "content": reply["content"] is not None,
                    "echo": context.plugins.call("echo", {"text": "via the service"})}
        if what == "print":
            print("this goes to stderr, not into the protocol")
            return {"printed": True}
        return {}
'''
ECHO = '''
from moltbot.plugins import BasePlugin

class Echo(BasePlugin):
    async def execute(self, context):
        return {"echo": context.input["text"], "pid": __import__("os").getpid()}
'''


@pytest.fixture
async def isolated(plugins_root, tmp_path, models, monkeypatch):
    monkeypatch.setenv("MOLTBOT_API_KEYS", "sk-service-key-not-for-plugins")
    write_plugin(plugins_root, "worker", WORKER, {"timeout": 2, "memory_mb": 512,
                                                   "settings": {"greeting": "hello"}})
    write_plugin(plugins_root, "echo", ECHO, {})
    manager = PluginManager(make_settings(plugins_root, tmp_path, plugin_isolation="process"), models=models)
    await manager.load_all()
    yield manager
    await manager.close()


async def call(manager: PluginManager, **payload):
    return await manager.execute("worker", payload, request_id="t")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed child is a zombie until reaped: the manager reaps it (Popen.wait), so it is gone here.
    return True


async def test_a_plugin_runs_in_its_own_process_without_the_services_settings(isolated, caplog):
    with caplog.at_level(logging.INFO, logger="moltbot.plugins"):
        result = await call(isolated)
    assert result["pid"] != os.getpid() and alive(result["pid"])
    assert result["secret_env"] is None  # MOLTBOT_* (the service's keys) do not reach the worker
    assert result["setting"] == "hello" and result["left"] is True
    assert f"running in {result['pid']}" in caplog.text  # the worker's log records come back to the service
    listed = {p["name"]: p for p in isolated.describe()}
    assert (listed["worker"]["status"], listed["worker"]["isolation"]) == ("loaded", "process")
    assert (await call(isolated, do="print")) == {"printed": True}  # stdout of the plugin is not the protocol


async def test_a_timeout_kills_the_worker_and_the_next_call_gets_a_new_one(isolated):
    first = (await call(isolated))["pid"]
    started = time.monotonic()
    with pytest.raises(PluginTimeout):
        await call(isolated, do="loop")
    assert time.monotonic() - started < 4
    assert not alive(first)  # killed, not left spinning as a thread would be
    second = (await call(isolated))["pid"]
    assert second != first and alive(second)


async def test_a_crash_is_a_500_and_the_worker_restarts(isolated):
    first = (await call(isolated))["pid"]
    with pytest.raises(PluginFailed, match="worker process died \\(exit code 3\\)"):
        await call(isolated, do="exit")
    assert (await call(isolated))["pid"] != first


async def test_the_memory_limit_holds_and_the_service_is_untouched(isolated):
    with pytest.raises(PluginFailed):
        await call(isolated, do="memory")
    assert (await call(isolated))["pid"] != os.getpid()


async def test_errors_keep_their_meaning_across_the_boundary(isolated, caplog):
    with pytest.raises(PluginError) as refused:
        await call(isolated, do="refuse")
    assert (refused.value.message, refused.value.code) == ("not today", "refused")
    with caplog.at_level(logging.ERROR, logger="moltbot.plugins"), pytest.raises(PluginFailed) as bug:
        await call(isolated, do="bug")
    assert "a bug" not in bug.value.message and "ValueError: a bug" in caplog.text


async def test_models_and_other_plugins_are_reached_from_the_worker(isolated, models):
    result = await call(isolated, do="models")
    assert result["names"] == ["all-minilm-l6-v2"] and result["content"] is True
    assert result["echo"]["echo"] == "via the service" and result["echo"]["pid"] != os.getpid()
    assert models.chat_calls and models.chat_calls[-1]["messages"] == [{"role": "user", "content": "hi"}]


async def test_an_import_error_in_the_worker_is_a_load_error(plugins_root, tmp_path):
    write_plugin(plugins_root, "broken", "from moltbot.plugins import BasePlugin\nclass B(BasePlugin):\n  def x(:\n",
                 {"isolation": "process"})
    manager = PluginManager(make_settings(plugins_root, tmp_path), models=None)
    try:
        [outcome] = await manager.load_all()
        assert outcome["status"] == "error" and "SyntaxError" in outcome["error"] and "line 3" in outcome["error"]
    finally:
        await manager.close()


def test_isolation_must_be_process_or_thread(plugins_root, tmp_path):
    from moltbot.plugins.config import read_config
    from moltbot.plugins.errors import PluginLoadError
    folder = write_plugin(plugins_root, "odd", "", {"isolation": "container"})
    with pytest.raises(PluginLoadError, match="isolation must be one of process, thread"):
        read_config(folder)


def test_a_live_server_stays_healthy_while_a_plugin_loops(server_factory, tmp_path):
    home = tmp_path / "srv"
    write_plugin(home / "plugins", "spinner", '''
from moltbot.plugins import BasePlugin

class Spinner(BasePlugin):
    def execute(self, context):
        if context.input.get("spin"):
            while True:
                pass
        return {"ok": True}
''', {"timeout": 1})
    srv = server_factory("srv")
    url = srv.url + "/v1/plugins/spinner/execute"
    with httpx.Client(timeout=30) as client:
        for _ in range(5):  # more spinning calls than the pool (4 threads) holds: in-process, they would spin on
            assert client.post(url, json={"spin": True}).status_code == 504
            assert client.get(srv.url + "/health").status_code == 200
        assert client.post(url, json={}).json()["result"] == {"ok": True}
    assert "worker process" in srv.output()
