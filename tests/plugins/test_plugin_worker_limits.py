"""What the service reads from a worker is bounded (issue #22, item 6): a line at most max_body_bytes, parsed only
within a depth and value budget, log records and stderr lines cut at a few KB and rate-limited. Real worker
processes; the memory figures are the service's own peak RSS, measured in a fresh process."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import textwrap
import time

import pytest

from moltbot.plugins.errors import PluginFailed
from moltbot.plugins.isolation import MAX_LOG_CHARS, MAX_LOGS_PER_CALL, STDERR_BURST, MessageTooLarge, bounded_loads
from moltbot.plugins.manager import PluginManager
from plugin_helpers import REPO, make_settings, write_plugin

pytestmark = pytest.mark.anyio

NOISY = '''
import gc, json, sys
from moltbot.plugins import BasePlugin


class Noisy(BasePlugin):
    def execute(self, context):
        what = context.input["do"]
        if what == "deep":
            value = {}
            for _ in range(context.input["levels"]):
                value = {"a": value}
            return value
        if what == "wide":
            return {"zeros": [0] * context.input["count"]}
        if what == "long_log":
            context.logger.warning("start " + "y" * 100_000)
            return {}
        if what == "many_logs":
            for i in range(context.input["count"]):
                context.logger.info("record %d", i)
            return {}
        if what == "long_stderr":
            print("start " + "z" * 100_000, file=sys.stderr, flush=True)
            return {}
        if what == "many_stderr":
            for i in range(context.input["count"]):
                print(f"stderr line {i}", file=sys.stderr)
            sys.stderr.flush()
            return {}
        if what == "raw":  # a legal result line of `size` bytes of `[{},{},...]`, written as a broken plugin could
            channel = next(o for o in gc.get_objects() if type(o).__name__ == "_Channel")
            count = (context.input["size"] - 40) // 3
            channel.writer.write(b'{"op": "result", "result": {"a": [' + b"{}," * count + b'{}]}}\\n')
            channel.writer.flush()
            return {}
        return {"ok": True}
'''


@pytest.fixture
async def noisy(plugins_root, tmp_path):
    write_plugin(plugins_root, "noisy", NOISY, {"timeout": 20, "memory_mb": 1024})
    manager = PluginManager(make_settings(plugins_root, tmp_path, plugin_isolation="process"))
    await manager.load_all()
    yield manager
    await manager.close()


async def call(manager: PluginManager, **payload):
    return await manager.execute("noisy", payload, request_id="t")


def test_the_parse_budget_counts_structure_not_string_contents():
    text = json.dumps({"op": "result", "result": {"s": "[[[[{{{{,,,,::::" * 1000, "q": 'a "quoted" \\ one'}})
    assert bounded_loads(text.encode(), max_depth=2, max_values=10)["result"]["q"] == 'a "quoted" \\ one'
    with pytest.raises(MessageTooLarge, match="nested deeper than 3 levels"):
        bounded_loads(b'{"a": [[{"b": 1}]]}', max_depth=3)
    assert bounded_loads(b'{"a": [[{"b": 1}]]}', max_depth=4) == {"a": [[{"b": 1}]]}
    with pytest.raises(MessageTooLarge, match="more than 100 values"):
        bounded_loads(json.dumps(list(range(101))).encode(), max_values=100)


async def test_a_result_that_nests_or_fans_out_too_much_is_refused_with_a_clear_error(noisy, caplog):
    assert (await call(noisy, do="deep", levels=40))["a"]["a"]  # within the budget
    with caplog.at_level(logging.ERROR, logger="moltbot.plugins"), pytest.raises(PluginFailed) as deep:
        await call(noisy, do="deep", levels=200)
    assert "too large to parse (nested deeper than 64 levels" in deep.value.message
    assert len((await call(noisy, do="wide", count=100_000))["zeros"]) == 100_000
    with pytest.raises(PluginFailed, match="too large to parse \\(more than 500000 values"):
        await call(noisy, do="wide", count=600_000)
    assert (await call(noisy, do="ok")) == {"ok": True}  # a new worker serves on


async def test_log_records_are_cut_and_limited_per_call(noisy, caplog):
    with caplog.at_level(logging.INFO, logger="moltbot.plugins"):
        await call(noisy, do="long_log")
        await call(noisy, do="many_logs", count=1000)
    [long] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("start ")]
    kept = long.index(" [... ")
    assert len(long) <= MAX_LOG_CHARS and long.endswith(f" [... {100_006 - kept} more characters cut]")
    records = [r.getMessage() for r in caplog.records if r.getMessage().startswith("record ")]
    assert records == [f"record {i}" for i in range(MAX_LOGS_PER_CALL)]
    assert f"logged 800 more records in this call than the {MAX_LOGS_PER_CALL} logged" in caplog.text


async def test_stderr_lines_are_cut_and_rate_limited(noisy):
    import asyncio

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    logger = logging.getLogger("moltbot.plugins.noisy")
    logger.addHandler(handler)
    try:
        await call(noisy, do="long_stderr")
        await call(noisy, do="many_stderr", count=5000)
        await asyncio.sleep(1)  # the bucket refills (20 lines a second)
        await call(noisy, do="long_stderr")  # comes after the flood: logged with the count of what was dropped
        deadline = time.monotonic() + 10
        while out.getvalue().count("start ") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        logger.removeHandler(handler)
    lines = out.getvalue().splitlines()
    long = [line for line in lines if "start " in line]
    assert len(long) == 2 and all(len(line) < MAX_LOG_CHARS + 200 for line in long)
    assert long[0].endswith(f"[... {100_007 - MAX_LOG_CHARS} more bytes cut]")
    flood = [line for line in lines if line.startswith("stderr line ")]
    assert STDERR_BURST - 10 <= len(flood) < 5000
    assert "stderr lines dropped: over 20 a second]" in long[1]


PEAK_RSS = '''
import asyncio, json, resource, sys
from pathlib import Path
from moltbot.plugins.errors import PluginFailed
from moltbot.plugins.manager import PluginManager
from moltbot.settings import Settings


async def main(root, size, max_body):
    settings = Settings(plugins_dir=Path(root) / "plugins", cache_dir=Path(root) / "cache",
                        plugin_isolation="process", max_body_bytes=max_body).validate()
    manager = PluginManager(settings)
    await manager.load_all()
    await manager.execute("noisy", {"do": "ok"}, request_id="warm")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        await manager.execute("noisy", {"do": "raw", "size": size}, request_id="big")
        outcome = "parsed"
    except PluginFailed as exc:
        outcome = exc.message
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    await manager.close()
    print(json.dumps({"growth_mb": (after - before) / 1024, "outcome": outcome}))


asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
'''


def peak_growth(tmp_path, size: int, max_body: int) -> dict:
    """The service's peak RSS growth (MB) while a worker sends a `size`-byte result line, in a fresh process."""
    write_plugin(tmp_path / "plugins", "noisy", NOISY, {"timeout": 60, "memory_mb": 2048})
    script = tmp_path / "peak.py"
    script.write_text(textwrap.dedent(PEAK_RSS))
    done = subprocess.run([sys.executable, str(script), str(tmp_path), str(size), str(max_body)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    figures: dict = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"result line of {size >> 20} MiB, max_body_bytes {max_body >> 20} MiB: service peak RSS "
          f"+{figures['growth_mb']:.0f} MB ({figures['outcome']})")
    return figures


def test_a_legal_64_mib_line_no_longer_costs_the_service_gigabytes(tmp_path):
    """Before: a 64 MiB line of `[{},...]` was parsed whole, ~1.6 GB (25x) in the service. Now, by default, a
    line past max_body_bytes (4 MiB) is refused after reading 4 MiB; an operator who raises max_body_bytes to
    64 MiB still gets the line refused by the value budget before json.loads. Bounds: 64 MB and 320 MB."""
    mib = 1024 * 1024
    default = peak_growth(tmp_path, 64 * mib, 4 * mib)
    assert "a line over 4194304 bytes" in default["outcome"] and default["growth_mb"] < 64
    raised = peak_growth(tmp_path, 64 * mib, 64 * mib)
    assert "more than 500000 values" in raised["outcome"] and raised["growth_mb"] < 320
