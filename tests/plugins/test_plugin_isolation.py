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
import gc, os, subprocess, time
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
        if what == "print_url":
            import sys
            print("fetching https://user:pw@files.example/a.bin?X-Amz-Signature=s3cr3t failed", file=sys.stderr)
            return {"printed": True}
        if what == "sleep":  # marks that it ran, then takes its time
            (context.data_dir / context.input["mark"]).write_text(str(os.getpid()))
            time.sleep(context.input["seconds"])
            return {"pid": os.getpid()}
        if what == "child":
            return {"child": subprocess.Popen(["sleep", "60"]).pid}
        if what == "garbage":  # writes on the protocol's pipe as a broken plugin could
            channel = next(o for o in gc.get_objects() if type(o).__name__ == "_Channel")
            channel.writer.write(b"this is not a JSON message\\n")
            channel.writer.flush()
            time.sleep(5)
            return {}
        if what == "big":
            return {"big": "x" * context.input["size"]}
        if what == "bad_request":  # a request the service cannot answer must still be answered
            try:
                context.models._channel.request("models.chat", no_messages=True)
            except PluginError as exc:
                return {"answered": exc.message}
            return {"answered": None}
        if what == "env":
            return {"env": dict(os.environ)}
        return {}

    def close(self):
        if self.config.get("hang_on_close"):
            time.sleep(30)
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
    write_plugin(plugins_root, "worker", WORKER, {"timeout": 2, "memory_mb": 512, "environment": ["PLUGIN_EXTRA"],
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


def running(pid: int) -> bool:
    """Alive and not a zombie (a worker's orphaned child is reaped by init, or not, in a container)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


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


def test_environment_names_variables_and_never_the_services_settings(plugins_root):
    from moltbot.plugins.config import read_config
    from moltbot.plugins.errors import PluginLoadError
    assert read_config(write_plugin(plugins_root, "ok", "", {"environment": ["HF_HOME"]})).environment == ["HF_HOME"]
    for bad in (["MOLTBOT_API_KEYS"], "HF_HOME", ["not a name"]):
        with pytest.raises(PluginLoadError, match="environment must be a list of environment variable names"):
            read_config(write_plugin(plugins_root, "bad", "", {"environment": bad}))


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


# ---- issue #16 review: queued calls, process groups, the protocol, close() off the loop, the environment

async def test_a_call_timing_out_in_the_queue_leaves_the_running_call_alone_and_never_runs(isolated):
    """Only the call running in the worker kills it on its timeout; one waiting behind it gives up untouched."""
    import asyncio

    plugin = isolated.get("worker")
    data_dir = isolated.data_root() / "worker"

    async def run(timeout: float, **payload):
        context = isolated._context(plugin, payload, "t", timeout, 0)
        return await isolated._run(plugin, context, timeout)

    slow = asyncio.create_task(run(5, do="sleep", seconds=2, mark="a"))
    await asyncio.sleep(0.3)  # the slow call holds the worker
    started = time.monotonic()
    with pytest.raises(PluginTimeout):
        await run(0.5, do="sleep", seconds=0, mark="b")
    assert time.monotonic() - started < 1.5
    result = await slow  # not killed by the queued call's timeout
    assert alive(result["pid"]) and (data_dir / "a").exists()
    await asyncio.sleep(0.5)
    assert not (data_dir / "b").exists()  # the call whose client got a 504 never ran
    assert (await call(isolated))["pid"] == result["pid"]  # the same worker serves on


async def test_a_killed_worker_takes_the_processes_it_started_with_it(isolated):
    child = (await call(isolated, do="child"))["child"]
    assert running(child)
    with pytest.raises(PluginTimeout):
        await call(isolated, do="loop")
    deadline = time.monotonic() + 5
    while running(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(child)


async def test_a_worker_writing_garbage_is_killed_with_a_clear_error(isolated):
    first = (await call(isolated))["pid"]
    started = time.monotonic()
    with pytest.raises(PluginFailed, match="not a JSON message"):
        await call(isolated, do="garbage")
    assert time.monotonic() - started < 2 and not alive(first)
    assert (await call(isolated))["pid"] != first


async def test_an_oversize_line_is_refused_unread_and_the_worker_killed(plugins_root, tmp_path):
    """A worker's line may be as long as a request body (max_body_bytes), no longer (issue #22 item 6)."""
    write_plugin(plugins_root, "worker", WORKER, {"timeout": 5})
    manager = PluginManager(make_settings(plugins_root, tmp_path, plugin_isolation="process", max_body_bytes=10_000))
    await manager.load_all()
    try:
        first = (await call(manager))["pid"]
        assert len((await call(manager, do="big", size=5000))["big"]) == 5000
        with pytest.raises(PluginFailed, match="a line over 10000 bytes"):
            await call(manager, do="big", size=50_000)
        assert not alive(first)
        assert (await call(manager))["pid"] != first
    finally:
        await manager.close()


async def test_a_request_the_service_fails_on_is_answered_with_an_error(isolated):
    result = await call(isolated, do="bad_request")
    assert result["answered"] == "models.chat failed: KeyError"
    assert (await call(isolated))["setting"] == "hello"  # the worker is not left waiting for an answer


async def test_the_worker_gets_only_the_allowed_environment(isolated, monkeypatch):
    monkeypatch.setenv("SOME_SERVICE_SECRET", "not for plugins")
    monkeypatch.setenv("PLUGIN_EXTRA", "asked for in config.json")
    await isolated.reload(["worker"])  # a new worker, started with this environment
    env = (await call(isolated, do="env"))["env"]
    assert "SOME_SERVICE_SECRET" not in env and not any(k.startswith("MOLTBOT_") for k in env)
    assert env["PLUGIN_EXTRA"] == "asked for in config.json" and env["PATH"] == os.environ["PATH"]


async def test_unloading_a_plugin_whose_close_hangs_does_not_block_the_event_loop(plugins_root, tmp_path):
    import asyncio
    import shutil

    write_plugin(plugins_root, "hangs", WORKER, {"isolation": "process", "settings": {"hang_on_close": True}})
    manager = PluginManager(make_settings(plugins_root, tmp_path), models=None)
    try:
        await manager.load_all()
        gaps = []

        async def ticker() -> None:
            last = time.monotonic()
            while True:
                await asyncio.sleep(0.05)
                gaps.append(time.monotonic() - last)
                last = time.monotonic()

        ticking = asyncio.create_task(ticker())
        shutil.rmtree(plugins_root / "hangs")
        started = time.monotonic()
        [outcome] = await manager.reload()  # the folder is gone: unloaded, its close() waited for (5 s)
        ticking.cancel()
        assert outcome["status"] == "removed" and time.monotonic() - started > 4
        assert gaps and max(gaps) < 1, gaps  # the loop kept serving (e.g. /health) meanwhile
    finally:
        await manager.close()


async def test_the_workers_stderr_is_logged_as_json_with_urls_redacted(isolated):
    """What a plugin writes to stderr goes through the service's logger (moltbot.plugins.<name>, WARNING) and so
    through its JSON formatter, URLs without user info or query string; never raw onto the container log."""
    import io
    import json

    from moltbot.logs import JsonFormatter

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("moltbot.plugins.worker")
    logger.addHandler(handler)
    try:
        assert (await call(isolated, do="print_url"))["printed"] is True
        deadline = time.monotonic() + 5
        while "files.example" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    entry = next(e for e in lines if "files.example" in e["message"])
    assert entry["level"] == "WARNING" and entry["logger"] == "moltbot.plugins.worker"
    assert entry["plugin"] == "worker" and entry["stream"] == "stderr"
    assert "s3cr3t" not in out.getvalue() and "pw@" not in out.getvalue()
    assert "https://files.example/a.bin" in entry["message"]
