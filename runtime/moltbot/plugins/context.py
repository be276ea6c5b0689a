"""What a plugin's `execute(context)` receives."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from moltbot.engine.errors import InvalidRequest, ModelNotFound

from .errors import PluginError, PluginTimeout

if TYPE_CHECKING:
    from .manager import PluginManager

T = TypeVar("T")

# A plugin may call other plugins, which may call others: bounded so a cycle fails instead of looping.
MAX_CALL_DEPTH = 4


class _Deadline:
    def __init__(self, seconds: float):
        self.expires = time.monotonic() + seconds

    def left(self) -> float:
        return self.expires - time.monotonic()


class _LoopBridge:
    """Runs coroutines on the service's event loop: awaited from async plugins, waited for from worker threads."""

    def __init__(self, loop: asyncio.AbstractEventLoop, deadline: _Deadline, plugin: str):
        self._loop = loop
        self._deadline = deadline
        self._plugin = plugin

    def wait(self, make: Callable[[], Awaitable[T]]) -> T:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            raise RuntimeError("blocking call on the event loop: inside `async def execute` use the `a`-prefixed "
                               "method (await context.models.achat / aembed / context.plugins.acall)")
        left = self._deadline.left()
        if left <= 0:
            raise PluginTimeout(f"plugin '{self._plugin}' ran out of time")

        async def run() -> T:
            return await make()

        future = asyncio.run_coroutine_threadsafe(run(), self._loop)
        try:
            return future.result(timeout=left)
        except FutureTimeout:
            future.cancel()
            raise PluginTimeout(f"plugin '{self._plugin}' ran out of time") from None


@contextmanager
def _model_errors() -> Iterator[None]:
    """The registry's refusals as errors the plugin (and its caller) can act on."""
    try:
        yield
    except ModelNotFound as exc:
        raise PluginError(f"model {exc.name} is not served", code="model_not_found") from None
    except InvalidRequest as exc:  # e.g. a prompt longer than the model's context
        raise PluginError(f"the model refused the request: {exc}", code="model_error") from None


class PluginModels:
    """The served models. `chat`/`embed` block (for plain `execute`); `achat`/`aembed` are awaitable."""

    def __init__(self, registry: Any, bridge: _LoopBridge):
        self._registry = registry
        self._bridge = bridge

    def _require(self) -> Any:
        if self._registry is None:
            raise PluginError("no models are available to plugins in this process", code="models_unavailable")
        return self._registry

    def names(self, task: str | None = None) -> list[str]:
        return list(self._require().model_names(task))

    async def achat(self, messages: list[dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
        registry = self._require()
        with _model_errors():
            reply: dict[str, Any] = await registry.chat(messages, **kwargs)
            return reply

    async def aembed(self, texts: list[str], *, model: str | None = None) -> list[list[float]]:
        registry = self._require()
        with _model_errors():
            vectors: list[list[float]] = await registry.embed(texts, model=model)
            return vectors

    def chat(self, messages: list[dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
        return self._bridge.wait(lambda: self.achat(messages, **kwargs))

    def embed(self, texts: list[str], *, model: str | None = None) -> list[list[float]]:
        return self._bridge.wait(lambda: self.aembed(texts, model=model))


class PluginDirectory:
    """The other loaded plugins, callable with the same validation and limits as over HTTP."""

    def __init__(self, manager: PluginManager, bridge: _LoopBridge, request_id: str, depth: int,
                 admin: bool = False):
        self._manager = manager
        self._bridge = bridge
        self._request_id = request_id
        self._depth = depth
        self._admin = admin  # a plugin calls others with its caller's rights

    def names(self) -> list[str]:
        return self._manager.runnable_names()

    async def acall(self, name: str, payload: dict[str, Any]) -> dict[str, Any]:
        if self._depth + 1 > MAX_CALL_DEPTH:
            raise PluginError(f"plugins called each other more than {MAX_CALL_DEPTH} levels deep",
                              code="plugin_call_depth")
        return await self._manager.execute(name, payload, request_id=self._request_id, depth=self._depth + 1,
                                           admin=self._admin)

    def call(self, name: str, payload: dict[str, Any]) -> dict[str, Any]:
        return self._bridge.wait(lambda: self.acall(name, payload))


@dataclass
class PluginContext:
    """Everything `execute` gets. `settings` (alias `config`) are the plugin's resolved settings;
    `data_dir` is a folder the plugin may write (indexes, caches), kept across restarts and reloads."""

    plugin: str
    input: dict[str, Any]
    request_id: str
    logger: logging.LoggerAdapter[logging.Logger]
    settings: dict[str, Any]
    models: PluginModels
    plugins: PluginDirectory
    data_root: Path
    log_prompts: bool = False
    _deadline: _Deadline = field(default=None, repr=False)  # type: ignore[assignment]

    @property
    def data_dir(self) -> Path:
        """This plugin's own folder under the data root, created on first use."""
        path = self.data_root / self.plugin
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def config(self) -> dict[str, Any]:
        return self.settings

    def time_left(self) -> float:
        """Seconds before this call times out; long loops should stop when it reaches 0."""
        return self._deadline.left()
