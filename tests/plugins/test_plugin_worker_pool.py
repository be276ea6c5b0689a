"""Calls to a slow isolated plugin do not take the shared thread pool from the others (issue #22, item 15): its
worker runs one call at a time, and the calls waiting for it wait on the event loop, not on a pool thread. Real
worker processes; ordering and completion are asserted, not timings."""

from __future__ import annotations

import asyncio

import pytest

from moltbot.plugins.manager import PluginManager
from plugin_helpers import make_settings, write_plugin

pytestmark = pytest.mark.anyio

SLOW = '''
import time
from moltbot.plugins import BasePlugin


class Slow(BasePlugin):
    def execute(self, context):
        (context.data_dir / f"running-{context.request_id}").touch()
        while not (context.data_dir / "release").exists() and context.time_left() > 0.5:
            time.sleep(0.02)
        return {"id": context.request_id}
'''
FAST = '''
from moltbot.plugins import BasePlugin


class Fast(BasePlugin):
    def execute(self, context):
        return {"fast": True}
'''


async def test_a_saturated_slow_plugin_leaves_the_pool_to_the_others(plugins_root, tmp_path):
    write_plugin(plugins_root, "slow", SLOW, {"timeout": 120})
    write_plugin(plugins_root, "fast", FAST, {"timeout": 120})
    manager = PluginManager(make_settings(plugins_root, tmp_path, plugin_isolation="process", plugin_workers=4))
    await manager.load_all()
    slow_dir = manager.data_root() / "slow"
    try:
        # More calls to the slow plugin than the pool has threads: before, they held all four (one running in
        # the worker, three blocked on its lock) and every other plugin's call queued behind them.
        slow = [asyncio.create_task(manager.execute("slow", {}, request_id=f"s{i}")) for i in range(6)]
        while not list(slow_dir.glob("running-*")):
            await asyncio.sleep(0.02)
        for _ in range(3):  # the fast plugin answers, again and again, while the slow one is saturated
            assert await asyncio.wait_for(manager.execute("fast", {}, request_id="f"), 60) == {"fast": True}
        assert not any(task.done() for task in slow) and len(list(slow_dir.glob("running-*"))) == 1
        (slow_dir / "release").touch()
        assert sorted(r["id"] for r in await asyncio.gather(*slow)) == [f"s{i}" for i in range(6)]
    finally:
        await manager.close()
