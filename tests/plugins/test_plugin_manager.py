"""The plugin loader, its HTTP routes and the execution rules (validation, timeouts, errors, the worker pool)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from moltbot import metrics
from moltbot.plugins.loader import drop_modules
from moltbot.plugins.manager import PluginManager
from plugin_helpers import make_app, make_settings, write_plugin

pytestmark = pytest.mark.anyio

# The article's example, verbatim apart from indentation.
README_EXAMPLE = '''
from moltbot.plugins import BasePlugin
class CustomPlugin(BasePlugin):
    def __init__(self, config):
        super().__init__(config)
        self.api_key = config.get('api_key')
    def execute(self, context):
        # business logic
        return {"result": "processed"}
'''

ASYNC_EXAMPLE = '''
import asyncio
from moltbot.plugins import BasePlugin
class Echo(BasePlugin):
    async def execute(self, context):
        await asyncio.sleep(0)
        return {"echo": context.input, "request_id": context.request_id, "prefix": self.config["prefix"]}
'''


def load_errors(name: str) -> float:
    return metrics.REGISTRY.get_sample_value("moltbot_plugin_load_errors_total", {"plugin": name}) or 0.0


def calls(name: str, outcome: str) -> float:
    return metrics.REGISTRY.get_sample_value("moltbot_plugin_calls_total", {"plugin": name, "outcome": outcome}) or 0.0


async def started(plugins_root: Path, tmp_path: Path, **settings) -> PluginManager:
    manager = PluginManager(make_settings(plugins_root, tmp_path, **settings))
    await manager.load_all()
    return manager


async def test_article_example_runs_unchanged_over_http(plugins_root, tmp_path):
    write_plugin(plugins_root, "custom_plugin", README_EXAMPLE,
                 {"name": "custom_plugin", "version": "1.0.0", "description": "The article's example"})
    write_plugin(plugins_root, "echo", ASYNC_EXAMPLE, {"settings": {"prefix": ">"}})
    manager = await started(plugins_root, tmp_path)
    app = make_app(manager)

    _, listing = await app.asgi_client.get("/v1/plugins")
    assert listing.status == 200
    plugins = {p["name"]: p for p in listing.json["data"]}
    assert plugins["custom_plugin"]["status"] == "loaded"
    assert plugins["custom_plugin"]["version"] == "1.0.0"
    assert plugins["custom_plugin"]["input_schema"] == {"type": "object"}
    assert plugins["echo"]["enabled"] is True

    _, reply = await app.asgi_client.post("/v1/plugins/custom_plugin/execute", json={})
    assert reply.status == 200, reply.body
    assert reply.json["result"] == {"result": "processed"}
    assert reply.json["plugin"] == "custom_plugin"

    _, reply = await app.asgi_client.post("/v1/plugins/echo/execute", json={"text": "hi"})
    assert reply.status == 200
    assert reply.json["result"]["echo"] == {"text": "hi"}
    assert reply.json["result"]["prefix"] == ">"
    assert reply.json["result"]["request_id"] == reply.json["request_id"]
    await manager.close()


async def test_broken_plugins_are_listed_counted_and_do_not_stop_the_others(plugins_root, tmp_path):
    write_plugin(plugins_root, "good", README_EXAMPLE, {})
    write_plugin(plugins_root, "import_error", "import module_that_does_not_exist\n", {})
    write_plugin(plugins_root, "syntax_error", "def broken(:\n", {})
    write_plugin(plugins_root, "bad_json", README_EXAMPLE, '{"name": "bad_json",')
    write_plugin(plugins_root, "no_class", "X = 1\n", {})
    write_plugin(plugins_root, "init_raises", '''
        from moltbot.plugins import BasePlugin
        class Fragile(BasePlugin):
            def __init__(self, config):
                raise ValueError("needs a database")
    ''', {})
    write_plugin(plugins_root, "no_secret", README_EXAMPLE,
                 {"settings": {"api_key": {"env": "MOLTBOT_TEST_UNSET_KEY"}}})
    write_plugin(plugins_root, "bad_schema", README_EXAMPLE, {"input_schema": {"type": "no-such-type"}})
    write_plugin(plugins_root, "no_config", README_EXAMPLE)
    write_plugin(plugins_root, "exits", "import sys\nsys.exit(3)\n", {})
    before = {n: load_errors(n) for n in ("import_error", "syntax_error", "bad_json", "no_class", "init_raises")}

    manager = await started(plugins_root, tmp_path)
    status = {p["name"]: p for p in manager.describe()}
    assert status["good"]["status"] == "loaded"
    expected_errors = {
        "import_error": "No module named 'module_that_does_not_exist'",
        "syntax_error": "plugin.py line 1",
        "bad_json": "config.json is not valid JSON",
        "no_class": "defines no subclass of moltbot.plugins.BasePlugin",
        "init_raises": "Fragile.__init__ raised ValueError: needs a database",
        "no_secret": "environment variable MOLTBOT_TEST_UNSET_KEY is not set",
        "bad_schema": "input_schema is not a valid JSON Schema",
        "no_config": "config.json is missing",
        "exits": "import failed: SystemExit: 3 (plugin.py line 2)",
    }
    for name, text in expected_errors.items():
        assert status[name]["status"] == "error", name
        assert text in status[name]["error"], (name, status[name]["error"])
    for name, count in before.items():
        assert load_errors(name) == count + 1

    app = make_app(manager)
    _, reply = await app.asgi_client.post("/v1/plugins/init_raises/execute", json={})
    assert reply.status == 409
    assert "needs a database" in reply.json["error"]["message"]
    _, reply = await app.asgi_client.post("/v1/plugins/good/execute", json={})
    assert reply.status == 200
    await manager.close()


async def test_secrets_come_from_the_environment_and_are_never_written_back(plugins_root, tmp_path, monkeypatch,
                                                                            caplog):
    monkeypatch.setenv("MOLTBOT_TEST_API_KEY", "s3cr3t-value")
    config = {"name": "secretive",
              "settings": {"api_key": {"env": "MOLTBOT_TEST_API_KEY"},
                           "url": "https://user:${MOLTBOT_TEST_API_KEY}@example.invalid/",
                           "region": "${MOLTBOT_TEST_UNSET_REGION:-eu}"},
              "legacy_top_level": 7}
    folder = write_plugin(plugins_root, "secretive", '''
        from moltbot.plugins import BasePlugin
        class Secretive(BasePlugin):
            def __init__(self, config):
                super().__init__(config)
                self.api_key = config.get("api_key")
            def execute(self, context):
                return {"key_length": len(self.api_key), "url_has_key": "s3cr3t-value" in context.settings["url"],
                        "region": context.config["region"], "legacy": context.settings["legacy_top_level"]}
    ''', config)
    original = (folder / "config.json").read_bytes()
    caplog.set_level(logging.DEBUG)
    manager = await started(plugins_root, tmp_path, log_prompts=True)
    result = await manager.execute("secretive", {}, request_id="req-1")
    assert result == {"key_length": 12, "url_has_key": True, "region": "eu", "legacy": 7}
    assert (folder / "config.json").read_bytes() == original
    assert "s3cr3t-value" not in json.dumps(manager.describe())
    assert "s3cr3t-value" not in caplog.text
    await manager.close()


async def test_input_is_validated_against_the_schema_naming_the_field(plugins_root, tmp_path):
    schema = {"type": "object", "required": ["query"], "additionalProperties": False,
              "properties": {"query": {"type": "string", "minLength": 1},
                             "top_k": {"type": "integer", "minimum": 1, "maximum": 20},
                             "filters": {"type": "object", "properties": {"tags": {"type": "array",
                                                                                    "items": {"type": "string"}}}}}}
    write_plugin(plugins_root, "search", README_EXAMPLE, {"input_schema": schema})
    manager = await started(plugins_root, tmp_path)
    app = make_app(manager)
    before = calls("search", "invalid")
    cases = [
        ({}, "query", "'query' is a required property"),
        ({"query": "x", "top_k": "5"}, "top_k", "is not of type 'integer'"),
        ({"query": "x", "top_k": 50}, "top_k", "maximum"),
        ({"query": "x", "filters": {"tags": ["a", 3]}}, "filters.tags[1]", "is not of type 'string'"),
        ({"query": "x", "colour": "red"}, "colour", "Additional properties"),
    ]
    for body, param, text in cases:
        _, reply = await app.asgi_client.post("/v1/plugins/search/execute", json=body)
        assert reply.status == 400, body
        error = reply.json["error"]
        assert error["param"] == param, (body, error)
        assert text in error["message"], (body, error)
        assert error["type"] == "invalid_request_error"
    assert calls("search", "invalid") == before + len(cases)

    _, reply = await app.asgi_client.post("/v1/plugins/search/execute", content=b"{not json")
    assert reply.status == 400 and reply.json["error"]["code"] == "invalid_json"
    _, reply = await app.asgi_client.post("/v1/plugins/search/execute", json={"query": "ok", "top_k": 3})
    assert reply.status == 200
    await manager.close()


async def test_timeouts_give_504_for_blocking_and_async_plugins(plugins_root, tmp_path):
    write_plugin(plugins_root, "slow_sync", '''
        import time
        from moltbot.plugins import BasePlugin
        class Slow(BasePlugin):
            def execute(self, context):
                time.sleep(3)
                return {}
    ''', {"timeout": 0.3})
    write_plugin(plugins_root, "slow_async", '''
        import asyncio
        from moltbot.plugins import BasePlugin
        class Slow(BasePlugin):
            async def execute(self, context):
                await asyncio.sleep(3)
                return {}
    ''', {})
    manager = await started(plugins_root, tmp_path, plugin_timeout=0.3)
    app = make_app(manager)
    before = calls("slow_async", "timeout")
    for name in ("slow_sync", "slow_async"):
        began = time.perf_counter()
        _, reply = await app.asgi_client.post(f"/v1/plugins/{name}/execute", json={})
        assert reply.status == 504
        assert reply.json["error"]["code"] == "plugin_timeout"
        assert "0.3 s" in reply.json["error"]["message"]
        assert time.perf_counter() - began < 2
    assert calls("slow_async", "timeout") == before + 1
    await manager.close()


async def test_exceptions_give_500_with_plugin_and_request_id_but_no_traceback(plugins_root, tmp_path, caplog):
    write_plugin(plugins_root, "crashy", '''
        from moltbot.plugins import BasePlugin
        class Crashy(BasePlugin):
            def execute(self, context):
                raise KeyError("internal detail")
    ''', {})
    write_plugin(plugins_root, "bad_result", '''
        from moltbot.plugins import BasePlugin
        class BadResult(BasePlugin):
            def execute(self, context):
                return ["not", "a", "dict"]
    ''', {})
    write_plugin(plugins_root, "quits", '''
        import sys
        from moltbot.plugins import BasePlugin
        class Quits(BasePlugin):
            def execute(self, context):
                sys.exit(1)
    ''', {})
    write_plugin(plugins_root, "quits_async", '''
        import sys
        from moltbot.plugins import BasePlugin
        class QuitsAsync(BasePlugin):
            async def execute(self, context):
                sys.exit(1)
    ''', {})
    write_plugin(plugins_root, "refuses", '''
        from moltbot.plugins import BasePlugin, PluginError
        class Refuses(BasePlugin):
            def execute(self, context):
                raise PluginError("writes are not allowed", code="write_refused")
    ''', {})
    manager = await started(plugins_root, tmp_path)
    app = make_app(manager)
    caplog.set_level(logging.ERROR)
    _, reply = await app.asgi_client.post("/v1/plugins/crashy/execute", json={})
    assert reply.status == 500
    error = reply.json["error"]
    assert "'crashy'" in error["message"] and error["code"] == "plugin_failed"
    request_id = reply.headers.get("x-request-id") or error["message"].split("request id ")[1].split(")")[0]
    assert request_id in error["message"]
    assert "Traceback" not in reply.body.decode() and "internal detail" not in reply.body.decode()
    assert "internal detail" in caplog.text  # the details go to the log, with the traceback

    for name in ("quits", "quits_async"):
        _, reply = await app.asgi_client.post(f"/v1/plugins/{name}/execute", json={})
        assert reply.status == 500 and reply.json["error"]["code"] == "plugin_failed", name

    _, reply = await app.asgi_client.post("/v1/plugins/bad_result/execute", json={})
    assert reply.status == 500 and "returned list" in reply.json["error"]["message"]

    _, reply = await app.asgi_client.post("/v1/plugins/refuses/execute", json={})
    assert reply.status == 422
    assert reply.json["error"] == {"message": "writes are not allowed", "type": "plugin_error", "param": None,
                                   "code": "write_refused"}

    _, reply = await app.asgi_client.post("/v1/plugins/nope/execute", json={})
    assert reply.status == 404 and reply.json["error"]["code"] == "plugin_not_found"
    await manager.close()


async def test_disabled_plugin_is_listed_but_not_run(plugins_root, tmp_path):
    write_plugin(plugins_root, "off", "raise RuntimeError('must not be imported')\n", {"enabled": False})
    manager = await started(plugins_root, tmp_path)
    [status] = manager.describe()
    assert status["status"] == "disabled" and status["enabled"] is False and status["error"] is None
    app = make_app(manager)
    _, reply = await app.asgi_client.post("/v1/plugins/off/execute", json={})
    assert reply.status == 409 and "disabled" in reply.json["error"]["message"]
    await manager.close()


VERSIONED = '''
from moltbot.plugins import BasePlugin
from .helper import VALUE
class Versioned(BasePlugin):
    def execute(self, context):
        return {"value": VALUE}
'''


async def test_reload_swaps_versions_and_keeps_the_previous_one_when_the_new_one_fails(plugins_root, tmp_path):
    folder = write_plugin(plugins_root, "versioned", VERSIONED, {"version": "1"})
    (folder / "helper.py").write_text("VALUE = 'one'\n")
    manager = await started(plugins_root, tmp_path)
    app = make_app(manager)
    assert await manager.execute("versioned", {}, request_id="r") == {"value": "one"}

    (folder / "helper.py").write_text("VALUE = 'two'\n")
    (folder / "config.json").write_text(json.dumps({"version": "2"}))
    _, reply = await app.asgi_client.post("/v1/plugins/reload", json={})
    assert reply.status == 200
    assert {"name": "versioned", "status": "loaded", "error": None, "version": "2"} in reply.json["results"]
    assert await manager.execute("versioned", {}, request_id="r") == {"value": "two"}

    (folder / "helper.py").write_text("VALUE = \n")  # a syntax error in the new version
    (folder / "config.json").write_text(json.dumps({"version": "3"}))
    _, reply = await app.asgi_client.post("/v1/plugins/reload", json={"names": ["versioned"]})
    assert reply.status == 200
    [outcome] = reply.json["results"]
    assert outcome["status"] == "kept_previous" and "helper.py line 1" in outcome["error"]
    [listed] = reply.json["data"]
    assert listed["status"] == "loaded" and listed["version"] == "2"
    assert "still serving version 2" in listed["error"]
    _, reply = await app.asgi_client.post("/v1/plugins/versioned/execute", json={})
    assert reply.status == 200 and reply.json["result"] == {"value": "two"} and reply.json["version"] == "2"

    write_plugin(plugins_root, "added", README_EXAMPLE, {})
    (folder / "helper.py").write_text("VALUE = 'three'\n")
    await manager.reload()
    assert await manager.execute("versioned", {}, request_id="r") == {"value": "three"}
    assert manager.describe()[0]["name"] == "added"

    shutil.rmtree(folder)
    outcomes = await manager.reload()
    assert {"name": "versioned", "status": "removed", "error": None} in outcomes
    assert manager.runnable_names() == ["added"]

    _, reply = await app.asgi_client.post("/v1/plugins/reload", json={"names": ["ghost"]})
    assert reply.status == 404
    _, reply = await app.asgi_client.post("/v1/plugins/reload", json={"names": "added"})
    assert reply.status == 400 and reply.json["error"]["param"] == "names"
    await manager.close()


async def test_two_folders_with_one_name_keep_the_first(plugins_root, tmp_path):
    write_plugin(plugins_root, "a_first", README_EXAMPLE, {"name": "twin"})
    write_plugin(plugins_root, "b_second", "raise RuntimeError('x')\n", {"name": "twin"})
    manager = await started(plugins_root, tmp_path)
    listing = manager.describe()
    assert [p["status"] for p in listing] == ["loaded", "error"]
    assert "a_first/ already uses the name 'twin'" in listing[1]["error"]
    assert await manager.execute("twin", {}, request_id="r") == {"result": "processed"}
    await manager.close()


async def test_blocking_execute_runs_in_a_bounded_pool_off_the_event_loop(plugins_root, tmp_path):
    write_plugin(plugins_root, "sleeper", '''
        import threading, time
        from moltbot.plugins import BasePlugin
        class Sleeper(BasePlugin):
            active = 0
            peak = 0
            lock = threading.Lock()
            def execute(self, context):
                with self.lock:
                    Sleeper.active += 1
                    Sleeper.peak = max(Sleeper.peak, Sleeper.active)
                time.sleep(0.3)
                with self.lock:
                    Sleeper.active -= 1
                return {"thread": threading.current_thread().name, "peak": Sleeper.peak}
    ''', {})
    manager = await started(plugins_root, tmp_path, plugin_workers=2)
    ticks = 0

    async def heartbeat():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    beat = asyncio.create_task(heartbeat())
    began = time.perf_counter()
    results = await asyncio.gather(*(manager.execute("sleeper", {}, request_id=str(i)) for i in range(4)))
    elapsed = time.perf_counter() - began
    beat.cancel()
    assert all(r["thread"].startswith("moltbot-plugin") for r in results)
    assert max(r["peak"] for r in results) == 2  # never more threads than plugin_workers
    assert elapsed > 0.55  # 4 calls of 0.3 s on 2 workers: at least two rounds
    assert ticks >= 10  # the loop kept running while the plugin code blocked
    await manager.close()


async def test_context_gives_logger_data_dir_other_plugins_and_a_bounded_call_depth(plugins_root, tmp_path, caplog):
    write_plugin(plugins_root, "caller", '''
        from moltbot.plugins import BasePlugin
        class Caller(BasePlugin):
            def execute(self, context):
                context.logger.info("calling upper")
                (context.data_dir / "seen.txt").write_text("ok")
                inner = context.plugins.call("upper", {"text": context.input["text"]})
                return {"inner": inner, "others": context.plugins.names(), "left": context.time_left() > 0}
    ''', {})
    write_plugin(plugins_root, "upper", '''
        from moltbot.plugins import BasePlugin
        class Upper(BasePlugin):
            input_schema = {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}}
            async def execute(self, context):
                return {"text": context.input["text"].upper(), "request_id": context.request_id}
    ''', {})
    write_plugin(plugins_root, "loop", '''
        from moltbot.plugins import BasePlugin
        class Loop(BasePlugin):
            async def execute(self, context):
                return await context.plugins.acall("loop", {})
    ''', {})
    write_plugin(plugins_root, "blocks_loop", '''
        from moltbot.plugins import BasePlugin
        class BlocksLoop(BasePlugin):
            async def execute(self, context):
                return context.models.embed(["x"])
    ''', {})
    write_plugin(plugins_root, "wants_models", '''
        from moltbot.plugins import BasePlugin
        class WantsModels(BasePlugin):
            def execute(self, context):
                return {"vectors": context.models.embed(["x"])}
    ''', {})
    caplog.set_level(logging.INFO, logger="moltbot.plugins")
    manager = await started(plugins_root, tmp_path)
    result = await manager.execute("caller", {"text": "abc"}, request_id="req-42")
    assert result == {"inner": {"text": "ABC", "request_id": "req-42"},
                      "others": ["blocks_loop", "caller", "loop", "upper", "wants_models"], "left": True}
    assert (manager.data_root() / "caller" / "seen.txt").read_text() == "ok"
    records = [r for r in caplog.records if r.getMessage() == "calling upper"]
    assert records and records[0].request_id == "req-42" and records[0].plugin == "caller"

    from moltbot.plugins.errors import PluginError, PluginFailed, PluginInputError
    with pytest.raises(PluginError, match="more than 4 levels"):
        await manager.execute("loop", {}, request_id="r")
    with pytest.raises(PluginInputError, match="'text' is a required property"):
        await manager.execute("upper", {}, request_id="r")
    with pytest.raises(PluginFailed):  # a blocking call inside async execute is a plugin bug, reported as such
        await manager.execute("blocks_loop", {}, request_id="r")
    assert "use the `a`-prefixed method" in caplog.text
    with pytest.raises(PluginError, match="no models are available"):
        await manager.execute("wants_models", {}, request_id="r")
    await manager.close()


async def test_watching_the_folder_reloads_edited_new_and_removed_plugins(plugins_root, tmp_path):
    folder = write_plugin(plugins_root, "versioned", VERSIONED, {"version": "1"})
    (folder / "helper.py").write_text("VALUE = 'one'\n")
    # plugin_watch_interval above 0 (MOLTBOT_PLUGIN_WATCH_INTERVAL) makes load_all start watching.
    settings = make_settings(plugins_root, tmp_path, plugin_watch_interval=0.05)
    manager = PluginManager(settings)
    await manager.load_all()

    async def until(condition) -> None:
        for _ in range(200):
            await asyncio.sleep(0.05)
            if condition():
                return
        raise AssertionError(f"not seen: {manager.describe()}")

    await asyncio.sleep(0.2)
    (folder / "helper.py").write_text("VALUE = 'two'\n")
    (folder / "config.json").write_text(json.dumps({"version": "2"}))
    await until(lambda: manager.describe()[0]["version"] == "2")
    assert await manager.execute("versioned", {}, request_id="r") == {"value": "two"}

    write_plugin(plugins_root, "newcomer", README_EXAMPLE, {})
    await until(lambda: "newcomer" in manager.runnable_names())
    (folder / "helper.py").write_text("VALUE = (\n")  # broken: version 2 keeps serving
    await until(lambda: "still serving version 2" in (manager.describe()[1]["error"] or ""))
    assert await manager.execute("versioned", {}, request_id="r") == {"value": "two"}

    shutil.rmtree(folder)
    await until(lambda: manager.runnable_names() == ["newcomer"])
    await manager.close()


async def test_reload_sees_edits_of_the_same_size_in_the_same_second(plugins_root, tmp_path, monkeypatch):
    """Bytecode caches are keyed on mtime (seconds) and size: plugins must be compiled from source each load."""
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    folder = write_plugin(plugins_root, "versioned", VERSIONED, {})
    manager = await started(plugins_root, tmp_path)
    for value in range(1000, 1010):
        (folder / "helper.py").write_text(f"VALUE = {value}\n")
        os.utime(folder / "helper.py", ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
        await manager.reload()
        assert await manager.execute("versioned", {}, request_id="r") == {"value": value}
    assert not (folder / "__pycache__").exists()  # nothing written into the operator's folder
    await manager.close()


async def test_syntax_errors_name_file_and_line_once(plugins_root, tmp_path):
    write_plugin(plugins_root, "typo", "from moltbot.plugins import BasePlugin\nclass P(BasePlugin)\n", {})
    manager = await started(plugins_root, tmp_path)
    [status] = manager.describe()
    assert status["error"] == "import failed: SyntaxError: expected ':' (plugin.py line 2)"
    await manager.close()


def test_plugin_modules_are_dropped_while_other_threads_change_sys_modules():
    """Plugins are unloaded on worker threads (close(), reload()) while other threads import and drop modules:
    dropping a plugin's modules must not iterate sys.modules itself (it failed in CI with "dictionary changed
    size during iteration" when close() unloaded several plugins at once)."""
    import sys
    import threading
    import types

    stop = threading.Event()

    def churn() -> None:
        for i in range(200_000):  # bounded
            if stop.is_set():
                return
            sys.modules[f"_moltbot_churn_{i % 50}"] = types.ModuleType("churn")
            sys.modules.pop(f"_moltbot_churn_{(i + 25) % 50}", None)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch as often as they can: the race shows in a few rounds
    worker = threading.Thread(target=churn)
    worker.start()
    try:
        for round_ in range(300):
            sys.modules[f"_moltbot_dropped_{round_}"] = types.ModuleType("dropped")
            sys.modules[f"_moltbot_dropped_{round_}.sub"] = types.ModuleType("dropped.sub")
            drop_modules(f"_moltbot_dropped_{round_}")
            assert f"_moltbot_dropped_{round_}.sub" not in sys.modules
    finally:
        stop.set()
        worker.join()
        sys.setswitchinterval(interval)
        for name in [m for m in list(sys.modules) if m.startswith("_moltbot_churn_")]:
            sys.modules.pop(name, None)
