"""The process's own watchdog: a model whose decode has stalled (a graph call that never returns) makes /health
fail after `stall_timeout`; after `stall_exit_after` this thread ends the process, since nothing inside it can
unwedge a native call and Docker never restarts an unhealthy container by itself: its restart policy (and
Kubernetes) restarts a process that exited. The exits are counted in the data dir, so the next process reports
them (`moltbot_watchdog_exits`)."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from moltbot import metrics
from moltbot.engine.registry import ModelRegistry
from moltbot.settings import Settings

log = logging.getLogger("moltbot.watchdog")

EXIT_STALLED = 70  # EX_SOFTWARE: the supervisor's restart policy sees a failure
RECORD = "watchdog.json"


class Watchdog:
    def __init__(self, registry: ModelRegistry, settings: Settings, exit: Callable[[int], None] = os._exit):
        self.registry, self.settings, self._exit = registry, settings, exit
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)

    def start(self) -> None:
        metrics.WATCHDOG_EXITS.set(recorded_exits(self.settings.data_dir))
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        # A thread, not a task on the event loop: it must act when the loop is the thing that is stuck, too.
        interval = min(1.0, self.settings.stall_timeout / 4)
        while not self._stopped.wait(interval):
            self.check()

    def check(self) -> None:
        """Update the stall gauges; exit when a model has been stalled for stall_exit_after seconds."""
        stalled = self.registry.stalled(self.settings.stall_timeout)
        limit = self.settings.stall_exit_after
        over = {model: seconds for model, seconds in stalled.items() if limit and seconds >= limit}
        if not over:
            return
        log.critical("decode stalled for %s: exiting so that the supervisor restarts the server", over,
                     extra={"stalled": over})
        record_exit(self.settings.data_dir, over)
        for handler in logging.getLogger().handlers + log.handlers:
            handler.flush()
        self._exit(EXIT_STALLED)


def recorded_exits(data_dir: Path | None) -> int:
    if data_dir is None:
        return 0
    try:
        return int(json.loads((data_dir / RECORD).read_text())["exits"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def record_exit(data_dir: Path | None, stalled: dict[str, float]) -> None:
    """Count this exit (best effort: a read-only data dir must not keep the process from exiting)."""
    if data_dir is None:
        return
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        record = {"exits": recorded_exits(data_dir) + 1, "last": {"at": time.time(), "stalled": stalled}}
        (data_dir / RECORD).write_text(json.dumps(record))
    except OSError as exc:
        log.warning("the watchdog's exit could not be recorded in %s: %s", data_dir, exc)
