"""Discovers, loads, reloads and runs the plugins in the plugins folder.

Every plugin folder is imported as its own package under a fresh module name per load, so a reload never
mixes old and new modules and a failed reload leaves the serving version untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonschema import validators

from .. import metrics
from .base import BasePlugin
from .config import DEFAULT_INPUT_SCHEMA, PluginConfig, check_schema, read_config
from .context import PluginContext, PluginDirectory, PluginModels, _Deadline, _LoopBridge
from .errors import (
    PluginAPIError,
    PluginFailed,
    PluginForbidden,
    PluginInputError,
    PluginLoadError,
    PluginNotFound,
    PluginTimeout,
    PluginUnavailable,
)
from .isolation import ProcessPlugin
from .loader import drop_modules, load_plugin, package_name
from .processes import protect_service_process

log = logging.getLogger("moltbot.plugins")
_generation = itertools.count(1)


@dataclass
class LoadedPlugin:
    """One successfully loaded version of a plugin."""

    config: PluginConfig
    instance: BasePlugin
    module_name: str
    is_async: bool
    input_schema: dict[str, Any]
    validator: Any
    loaded_at: float = field(default_factory=time.time)
    slots: asyncio.Semaphore | None = None  # an isolated plugin's turn, made by its first call (_in_pool)


@dataclass
class PluginRecord:
    """A plugin folder as the manager sees it: what serves now, and what went wrong last."""

    name: str
    folder: Path
    config: PluginConfig | None = None
    serving: LoadedPlugin | None = None
    error: str | None = None

    @property
    def status(self) -> str:
        if self.serving is not None:
            return "loaded"
        if self.config is not None and not self.config.enabled:
            return "disabled"
        return "error"

    def describe(self) -> dict[str, Any]:
        config = self.serving.config if self.serving else self.config
        schema = self.serving.input_schema if self.serving else (config.input_schema if config else None)
        return {
            "name": self.name,
            "version": config.version if config else None,
            "description": config.description if config else "",
            "enabled": config.enabled if config else False,
            "status": self.status,
            "error": self.error,
            "timeout": config.timeout if config else None,
            "input_schema": schema,
            "admin": config.admin if config else False,
            "tool": config.tool if config else False,
            "isolation": ("process" if isinstance(self.serving.instance, ProcessPlugin) else "thread")
            if self.serving else (config.isolation if config else None),
            "loaded_at": self.serving.loaded_at if self.serving else None,
        }


class PluginManager:
    def __init__(self, settings: Any, models: Any = None):
        self.settings = settings
        self.models = models
        self.plugins_dir = Path(settings.plugins_dir)
        self.default_timeout = float(settings.plugin_timeout)
        self.log_prompts = bool(getattr(settings, "log_prompts", False))
        # With admin keys set, calls a plugin's config.json marks "admin" need a caller holding one.
        self.admin_required = bool(getattr(settings, "admin_api_keys", None)
                                   or getattr(settings, "admin_api_keys_file", None))
        self._executor = ThreadPoolExecutor(max_workers=int(settings.plugin_workers),
                                            thread_name_prefix="moltbot-plugin")
        # Before any worker starts: a worker must not read the service's /proc files (environ: its keys).
        protect_service_process()
        self._records: dict[Path, PluginRecord] = {}
        self._reload_lock = asyncio.Lock()
        self._watcher: asyncio.Task[None] | None = None

    # ---- discovery and loading

    def data_root(self) -> Path:
        """Where plugins keep their data: <cache dir>/plugins (on the models volume in the container)."""
        return Path(self.settings.cache_dir) / "plugins"

    def _folders(self) -> list[Path]:
        if not self.plugins_dir.is_dir():
            log.warning("plugins folder %s does not exist; no plugins loaded", self.plugins_dir)
            return []
        return sorted(p for p in self.plugins_dir.iterdir()
                      if p.is_dir() and not p.name.startswith((".", "_"))
                      and ((p / "plugin.py").exists() or (p / "config.json").exists()))

    async def load_all(self) -> list[dict[str, Any]]:
        """Load every plugin folder; failures are recorded, logged and counted, never raised. With the
        plugin_watch_interval setting above 0, changed folders are then reloaded on their own."""
        outcomes = await self.reload()
        interval = self.settings.plugin_watch_interval
        if interval > 0 and self._watcher is None:
            self.start_watching(interval)
        return outcomes

    async def reload(self, names: list[str] | None = None) -> list[dict[str, Any]]:
        """Load the folders again (all, or the named plugins). A plugin that fails to load keeps serving its
        previous version; one whose folder is gone is unloaded. Returns one outcome per plugin touched."""
        async with self._reload_lock:
            folders = self._folders()
            if names is not None:
                known = {r.name for r in self._records.values()} | {f.name for f in folders}
                missing = sorted(set(names) - known)
                if missing:
                    raise PluginNotFound(f"no plugin named {missing[0]!r} in the plugins folder")
            outcomes = []
            for folder in folders:
                previous = self._records.get(folder)
                if names is not None and folder.name not in names and not (previous and previous.name in names):
                    continue
                record, outcome = await asyncio.to_thread(self._load_folder, folder, previous)
                owner = next((r for f, r in self._records.items() if f != folder and r.name == record.name), None)
                if owner is not None:
                    await asyncio.to_thread(self._unload, record)
                    record.error = f"the plugin in {owner.folder.name}/ already uses the name {record.name!r}"
                    outcome = {"name": record.name, "status": "error", "error": record.error}
                    self._count_load_error(record.name, record.error)
                self._records[folder] = record
                outcomes.append(outcome)
            for folder, record in list(self._records.items()):
                if folder not in folders and (names is None or record.name in names):
                    await asyncio.to_thread(self._unload, record)
                    del self._records[folder]
                    outcomes.append({"name": record.name, "status": "removed", "error": None})
            return outcomes

    # ---- watching the folder

    def _fingerprints(self) -> dict[Path, tuple[tuple[str, int, int], ...]]:
        """(file, mtime, size) of every file in every plugin folder, to notice edits, new and removed plugins."""
        prints: dict[Path, tuple[tuple[str, int, int], ...]] = {}
        for folder in self._folders():
            try:
                files = sorted((p.relative_to(folder).as_posix(), p.stat().st_mtime_ns, p.stat().st_size)
                               for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
            except OSError:  # changing under our feet (being copied or deleted): next round
                files = [("<changing>", 0, 0)]
            prints[folder] = tuple(files)
        return prints

    def start_watching(self, interval: float) -> asyncio.Task[None]:
        """Reload a plugin when its folder changes (polled every `interval` seconds) until close()."""
        async def watch() -> None:
            seen = await asyncio.to_thread(self._fingerprints)
            while True:
                await asyncio.sleep(interval)
                current = await asyncio.to_thread(self._fingerprints)
                changed = [f for f in current.keys() | seen.keys() if current.get(f) != seen.get(f)]
                if changed:
                    names = sorted({self._records[f].name if f in self._records else f.name for f in changed})
                    log.info("plugin folders changed: reloading %s", ", ".join(names))
                    try:
                        await self.reload(names)
                    except Exception:  # a watcher that dies would silently stop reloading
                        log.exception("reloading changed plugins failed")
                    seen = current

        self._watcher = asyncio.get_running_loop().create_task(watch(), name="plugin-watcher")
        return self._watcher

    def _load_folder(self, folder: Path, previous: PluginRecord | None) -> tuple[PluginRecord, dict[str, Any]]:
        old = previous.serving if previous else None
        try:
            config = read_config(folder)
        except PluginLoadError as exc:
            return self._failed(previous, folder, folder.name, None, str(exc))
        if not config.enabled:
            if old is not None:
                self._close_instance(old)
                drop_modules(old.module_name)
            log.info("plugin %s is disabled", config.name)
            record = PluginRecord(config.name, folder, config=config)
            return record, {"name": config.name, "status": "disabled", "error": None}
        try:
            loaded = self._import(folder, config)
        except PluginLoadError as exc:
            return self._failed(previous, folder, config.name, config, str(exc))
        if old is not None:
            self._close_instance(old)
            drop_modules(old.module_name)
        log.info("plugin %s %s loaded (%s)", config.name, config.version,
                 f"worker process {loaded.instance.pid}" if isinstance(loaded.instance, ProcessPlugin)
                 else "async execute" if loaded.is_async else "blocking execute")
        record = PluginRecord(config.name, folder, config=config, serving=loaded)
        return record, {"name": config.name, "status": "loaded", "error": None, "version": config.version}

    def _failed(self, previous: PluginRecord | None, folder: Path, name: str, config: PluginConfig | None,
                error: str) -> tuple[PluginRecord, dict[str, Any]]:
        self._count_load_error(name, error)
        if previous is not None and previous.serving is not None and previous.name == name:
            previous.error = f"reload failed, still serving version {previous.serving.config.version}: {error}"
            return previous, {"name": name, "status": "kept_previous", "error": error,
                              "version": previous.serving.config.version}
        return PluginRecord(name, folder, config=config, error=error), {"name": name, "status": "error",
                                                                         "error": error}

    @staticmethod
    def _count_load_error(name: str, error: str) -> None:
        log.error("plugin %s failed to load: %s", name, error)
        metrics.PLUGIN_LOAD_ERRORS.labels(plugin=name).inc()

    def _import(self, folder: Path, config: PluginConfig) -> LoadedPlugin:
        package = package_name(config.name, str(next(_generation)))
        if (config.isolation or getattr(self.settings, "plugin_isolation", "process")) == "process":
            return self._start_worker(folder, config, package)
        instance = load_plugin(folder, package, config.class_name, config.settings)
        try:
            schema = config.input_schema
            if schema is None:
                schema = getattr(instance, "input_schema", None) or DEFAULT_INPUT_SCHEMA
                check_schema(schema)
            validator = validators.validator_for(schema)(schema)
        except PluginLoadError:
            drop_modules(package)
            raise
        return LoadedPlugin(config=config, instance=instance, module_name=package,
                            is_async=inspect.iscoroutinefunction(instance.execute),
                            input_schema=schema, validator=validator)

    def _start_worker(self, folder: Path, config: PluginConfig, package: str) -> LoadedPlugin:
        """A plugin in a worker process of its own (isolation.py); its import errors come back as load errors.
        The worker's working directory is the plugin's data folder, and a result may be as large as a request
        body (max_body_bytes)."""
        worker = ProcessPlugin(folder, config.name, config.class_name, dict(config.settings),
                               config.memory_mb, config.environment, data_dir=self.data_root() / config.name,
                               max_result_bytes=int(self.settings.max_body_bytes)).start()
        schema = config.input_schema
        if schema is None:
            schema = worker.schema or DEFAULT_INPUT_SCHEMA
            try:
                check_schema(schema)
            except PluginLoadError:
                worker.close()
                raise
        return LoadedPlugin(config=config, instance=worker, module_name=package, is_async=False,
                            input_schema=schema, validator=validators.validator_for(schema)(schema))

    @staticmethod
    def _close_instance(loaded: LoadedPlugin) -> None:
        try:
            close: Callable[[], object] = loaded.instance.close  # a plugin's close() may be async by mistake
            result = close()
            if inspect.iscoroutine(result):
                log.warning("plugin %s: close() must be a plain method; its coroutine was not awaited",
                            loaded.config.name)
                result.close()
        except Exception:
            log.exception("plugin %s: close() failed", loaded.config.name)

    def _unload(self, record: PluginRecord) -> None:
        if record.serving is not None:
            self._close_instance(record.serving)
            drop_modules(record.serving.module_name)
            record.serving = None

    # ---- queries

    def describe(self) -> list[dict[str, Any]]:
        return [r.describe() for r in sorted(self._records.values(), key=lambda r: (r.name, r.folder.name))]

    def runnable_names(self) -> list[str]:
        return sorted(r.name for r in self._records.values() if r.serving is not None)

    def _record(self, name: str) -> PluginRecord | None:
        matches = [r for r in self._records.values() if r.name == name]
        return next((r for r in matches if r.serving is not None), matches[0] if matches else None)

    def get(self, name: str) -> LoadedPlugin:
        """The serving version of a plugin, or PluginNotFound / PluginUnavailable."""
        record = self._record(name)
        if record is None:
            raise PluginNotFound(f"no plugin named {name!r}")
        if record.serving is None:
            if record.status == "disabled":
                raise PluginUnavailable(f"plugin {name!r} is disabled in its config.json")
            raise PluginUnavailable(f"plugin {name!r} failed to load: {record.error}")
        return record.serving

    # ---- execution

    def validate(self, plugin: LoadedPlugin, payload: Any) -> None:
        error = next(iter(sorted(plugin.validator.iter_errors(payload), key=_error_rank)), None)
        if error is None:
            return
        param = _error_param(error)
        where = f"'{param}'" if param else "the input"
        raise PluginInputError(f"plugin {plugin.config.name!r}: {where}: {error.message}", param=param)

    async def execute(self, name: str, payload: Any, *, request_id: str, depth: int = 0,
                      admin: bool = False) -> dict[str, Any]:
        """Validate and run one call; raises a PluginAPIError subclass on any failure. `admin`: the caller holds
        an admin key (or none is configured); a call marked admin is refused without it when admin keys are set."""
        started = time.perf_counter()
        outcome = "error"
        try:
            plugin = self.get(name)
            if self.admin_required and not admin and plugin.config.needs_admin(payload):
                outcome = "forbidden"
                raise PluginForbidden(f"this call of plugin {name!r} changes server state: it needs an admin key "
                                      "(admin_api_keys)")
            try:
                self.validate(plugin, payload)
            except PluginInputError:
                outcome = "invalid"
                raise
            timeout = plugin.config.timeout or self.default_timeout
            context = self._context(plugin, payload, request_id, timeout, depth, admin)
            if self.log_prompts:
                context.logger.info("plugin call input: %s", json.dumps(payload, default=str)[:4000])
            else:
                context.logger.info("plugin call (%d bytes of input)", len(json.dumps(payload, default=str)))
            try:
                result = await self._run(plugin, context, timeout)
            except PluginTimeout:
                outcome = "timeout"
                raise
            checked = _checked_result(name, result, request_id)
            outcome = "ok"
            return checked
        finally:
            if self._record(name) is not None:
                elapsed = time.perf_counter() - started
                metrics.PLUGIN_CALLS.labels(plugin=name, outcome=outcome).inc()
                metrics.PLUGIN_LATENCY.labels(plugin=name).observe(elapsed)

    def _context(self, plugin: LoadedPlugin, payload: Any, request_id: str, timeout: float,
                 depth: int, admin: bool = False) -> PluginContext:
        name = plugin.config.name
        deadline = _Deadline(timeout)
        bridge = _LoopBridge(asyncio.get_running_loop(), deadline, name)
        logger = logging.LoggerAdapter(logging.getLogger(f"moltbot.plugins.{name}"),
                                       {"plugin": name, "request_id": request_id})
        return PluginContext(
            plugin=name, input=payload, request_id=request_id, logger=logger,
            settings=dict(plugin.config.settings), models=PluginModels(self.models, bridge),
            plugins=PluginDirectory(self, bridge, request_id, depth, admin), data_root=self.data_root(),
            log_prompts=self.log_prompts, _deadline=deadline,
        )

    async def _run(self, plugin: LoadedPlugin, context: PluginContext, timeout: float) -> Any:
        name = plugin.config.name
        try:
            if plugin.is_async:
                return await asyncio.wait_for(_no_exit(plugin.instance.execute(context)), timeout)
            return await self._in_pool(plugin, context)
        except (TimeoutError, PluginTimeout):
            # Unlike a thread, a process can be stopped: the worker is killed if it is running this call; a call
            # still waiting for the worker (behind a slow one) just gives up, and never runs.
            if isinstance(plugin.instance, ProcessPlugin):
                if plugin.instance.cancel(context):
                    context.logger.warning("plugin call timed out after %.1f s; its worker process was killed and "
                                           "is restarted for the next call", timeout)
                else:
                    context.logger.warning("plugin call timed out after %.1f s waiting for the calls before it",
                                           timeout)
                raise PluginTimeout(f"plugin {name!r} did not finish within {timeout:g} s") from None
            context.logger.warning("plugin call timed out after %.1f s", timeout)
            raise PluginTimeout(f"plugin {name!r} did not finish within {timeout:g} s") from None
        except PluginAPIError:
            raise
        except (Exception, SystemExit):  # sys.exit() in a plugin must not end the service either
            context.logger.exception("plugin call raised")
            raise PluginFailed(f"plugin {name!r} failed (request id {context.request_id}); "
                               "the server log has the details") from None

    async def _in_pool(self, plugin: LoadedPlugin, context: PluginContext) -> Any:
        """Run a blocking execute on the shared pool. An isolated plugin's worker runs one call at a time: its
        calls wait for their turn here, on the event loop (a semaphore of one per plugin), not on a pool thread,
        so calls queued behind a slow isolated plugin hold no thread and the other plugins keep the pool. The
        turn is given back when the thread is done (the worker answered or was killed), not at the timeout."""
        if not isinstance(plugin.instance, ProcessPlugin):
            # The thread keeps running after a timeout (threads cannot be killed); the pool bounds how many.
            return await asyncio.wait_for(asyncio.wrap_future(self._executor.submit(plugin.instance.execute,
                                                                                    context)),
                                          context.time_left())
        slots = plugin.slots
        if slots is None:
            slots = plugin.slots = asyncio.Semaphore(1)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(context.time_left()):
            await slots.acquire()
        try:
            future = self._executor.submit(plugin.instance.execute, context)
        except BaseException:
            slots.release()
            raise
        future.add_done_callback(lambda _: _on_loop(loop, slots.release))
        async with asyncio.timeout(context.time_left()):
            return await asyncio.wrap_future(future)

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        # Off the event loop: an isolated plugin's close() may wait seconds for its worker.
        await asyncio.gather(*(asyncio.to_thread(self._unload, record) for record in self._records.values()))
        self._records.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)


def _on_loop(loop: asyncio.AbstractEventLoop, callback: Callable[[], object]) -> None:
    """Run `callback` on the loop from a pool thread; a loop already closed (shutdown) has nobody to tell."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback)


async def _no_exit(call: Any) -> Any:
    """SystemExit escaping an asyncio task would stop the event loop, and with it the service."""
    try:
        return await call
    except SystemExit as exc:
        raise RuntimeError(f"the plugin called sys.exit({exc.code})") from None


def _error_rank(error: Any) -> tuple[int, str]:
    # Deepest, then most specific errors first, so the message names the actual field.
    return (-len(error.absolute_path), str(error.message))


def _error_param(error: Any) -> str | None:
    path = list(error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, dict):
        # jsonschema reports each missing property as its own error: name the one this error is about.
        missing = [k for k in error.validator_value if k not in error.instance and error.message.startswith(repr(k))]
        if missing:
            path.append(missing[0])
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        patterns = error.schema.get("patternProperties", {})
        extra = [k for k in error.instance if k not in allowed and not patterns]
        if extra:
            path.append(extra[0])
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or None


def _checked_result(name: str, result: Any, request_id: str) -> dict[str, Any]:
    """The plugin's result, once it is a JSON object."""
    if not isinstance(result, dict):
        log.error("plugin %s returned %s instead of a dict (request %s)", name, type(result).__name__, request_id)
        raise PluginFailed(f"plugin {name!r} returned {type(result).__name__}, expected a JSON object "
                           f"(request id {request_id})")
    try:
        json.dumps(result)
    except (TypeError, ValueError) as exc:
        log.error("plugin %s returned a result that is not JSON-serialisable: %s (request %s)", name, exc, request_id)
        raise PluginFailed(f"plugin {name!r} returned a result that is not JSON-serialisable "
                           f"(request id {request_id})") from None
    return result
