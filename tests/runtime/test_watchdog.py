"""Self-healing: a model whose step blocks (a scripted runner held at a gate) makes /health fail with 503 naming
it once `stall_timeout` has passed, the watchdog exits the process (code 70) after `stall_exit_after` and counts
the exit in the data dir for the next process; a model that makes progress never trips it."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import pytest
from sanic import Sanic

from moltbot import metrics
from moltbot.api.app import create_app
from moltbot.engine.registry import ModelRegistry
from moltbot.engine.sampling import SamplingParams
from moltbot.engine.scheduler import GenerationScheduler
from moltbot.engine.tokenizer import TextTokenizer
from moltbot.settings import Settings
from moltbot.watchdog import EXIT_STALLED, Watchdog, recorded_exits
from tests.runtime.scripted_runner import ScriptedRunner


@pytest.fixture
def wedged(defaults_dir):
    """A scheduler whose prefill waits at a gate (a graph call that does not return), with one request in it."""
    gate = threading.Event()
    runner = ScriptedRunner(slots=2, gate=gate)
    sched = GenerationScheduler("wedged", runner, TextTokenizer(defaults_dir / "tiny-chat"), context_length=4096,
                                max_running=2, max_queued=2)
    loop = asyncio.new_event_loop()
    sched.submit([1, 2, 3], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True), 1, loop)
    yield sched, gate
    gate.set()
    sched.stop()
    loop.close()


def _settings(tmp_path: Path, **environ: str) -> Settings:
    return Settings.load(environ={"MOLTBOT_MODELS_DIR": str(tmp_path / "models"), "MOLTBOT_DEFAULT_MODELS": "off",
                                  "MOLTBOT_PLUGINS_DIR": str(tmp_path / "plugins"), "MOLTBOT_LOGS_DIR":
                                  str(tmp_path / "logs"), "MOLTBOT_DATA_DIR": str(tmp_path / "state"),
                                  **{f"MOLTBOT_{k.upper()}": v for k, v in environ.items()}})


class _Backend:
    """What liveness reads of a local decoder: its scheduler (and what the app's shutdown calls)."""

    def __init__(self, scheduler: GenerationScheduler):
        self.scheduler = scheduler

    async def close(self) -> None:
        return None


def _registry(settings: Settings, sched: GenerationScheduler) -> ModelRegistry:
    registry = ModelRegistry(settings)
    registry.models["wedged"] = _Backend(sched)  # type: ignore[assignment]
    return registry


def test_a_blocked_step_is_a_stall_that_ends_when_the_step_does(wedged):
    sched, gate = wedged
    time.sleep(0.3)
    assert sched.stalled_seconds() >= 0.25
    gate.set()
    deadline = time.monotonic() + 5
    while sched.stalled_seconds() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sched.stalled_seconds() == 0.0  # between passes, and idle once its 4 tokens are out


def test_health_fails_naming_the_stalled_model_after_the_timeout(wedged, tmp_path):
    sched, gate = wedged
    Sanic.test_mode = True
    settings = _settings(tmp_path, stall_timeout="0.2", stall_exit_after="0")
    app = create_app(settings, name=f"watchdog_{tmp_path.name}")
    app.ctx.registry.models["wedged"] = _Backend(sched)

    async def scenario() -> None:
        time.sleep(0.3)
        _, stalled = await app.asgi_client.get("/health")
        assert stalled.status_code == 503 and stalled.json["status"] == "stalled"
        assert list(stalled.json["stalled"]) == ["wedged"] and stalled.json["stalled"]["wedged"] >= 0.2
        gate.set()
        while sched.stalled_seconds():
            await asyncio.sleep(0.01)
        _, healthy = await app.asgi_client.get("/health")
        assert healthy.status_code == 200 and healthy.json == {"status": "ok"}

    asyncio.run(scenario())


def test_the_watchdog_exits_after_the_grace_and_counts_the_exit(wedged, tmp_path):
    sched, _ = wedged
    settings = _settings(tmp_path, stall_timeout="0.1", stall_exit_after="0.3")
    exits: list[int] = []
    watchdog = Watchdog(_registry(settings, sched), settings, exit=exits.append)
    time.sleep(0.15)
    watchdog.check()
    assert exits == []  # stalled (health fails) but not yet for the grace
    assert metrics.STALLED_SECONDS.labels("wedged")._value.get() >= 0.1
    time.sleep(0.2)
    watchdog.check()
    assert exits == [EXIT_STALLED]
    record = json.loads((tmp_path / "state" / "watchdog.json").read_text())
    assert record["exits"] == 1 and list(record["last"]["stalled"]) == ["wedged"]
    watchdog.check()
    assert recorded_exits(settings.data_dir) == 2
    Watchdog(_registry(settings, sched), settings, exit=exits.append).start()  # the next process reports them
    assert metrics.WATCHDOG_EXITS._value.get() == 2


def test_a_model_making_progress_never_trips_it(defaults_dir, tmp_path):
    runner = ScriptedRunner(slots=4, seconds_per_token=0.001)
    sched = GenerationScheduler("busy", runner, TextTokenizer(defaults_dir / "tiny-chat"), context_length=4096,
                                max_running=4, max_queued=64)
    # A pass here: up to 4 prompts of 39 tokens at 1 ms a token, or one decode step; 2 s is many times that.
    settings = _settings(tmp_path, stall_timeout="2", stall_exit_after="2")
    exits: list[int] = []
    watchdog = Watchdog(_registry(settings, sched), settings, exit=exits.append)

    async def load() -> None:
        loop = asyncio.get_running_loop()
        handles = [sched.submit(list(range(1, 40)), SamplingParams(max_tokens=50, temperature=0, ignore_eos=True),
                                1, loop) for _ in range(32)]
        for handle in handles:
            while not (await handle.next_event()).finish_reason:
                watchdog.check()

    try:
        asyncio.run(load())
    finally:
        sched.stop()
    assert exits == [] and len(runner.decodes) >= 49  # 32 requests of 50 tokens ran through, never "stalled"


def test_an_exit_grace_shorter_than_the_timeout_is_refused(tmp_path):
    from moltbot.settings import SettingsError

    with pytest.raises(SettingsError, match="stall_exit_after"):
        _settings(tmp_path, stall_timeout="60", stall_exit_after="30")
