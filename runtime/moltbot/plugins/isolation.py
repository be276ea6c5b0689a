"""Process isolation for plugins (config.json `"isolation": "process"`, the default outside the built-ins).

The plugin is imported and run in a worker process of its own (`python -m moltbot.plugins.isolation`), started
when the plugin loads, with an address-space limit (config.json `memory_mb`). The service talks to it over its
stdin/stdout in JSON lines, one call at a time: the worker answers a call with its result or error, and in the
middle of a call asks the service for what `context.models` and `context.plugins` give (the service runs those).
A call that passes its timeout while it runs in the worker kills the worker (and every process it started), as
does a worker that dies or breaks the protocol; the next call starts a new one, so a plugin that loops, leaks
or crashes never takes the service (or the other plugins) with it. A call still waiting for the worker when
its timeout passes gives up without touching it.

The worker is started as `python -I` (no PYTHON* variables, no user site, no working directory on sys.path) in
the plugin's data folder, so a `resource.py` or a `moltbot/` folder among the plugin's files cannot stand in for
the standard library or the runtime; the plugin's own modules are imported only as its package's (loader.py).
A kill stops the worker's whole process tree, setsid() children included (processes.py).

What the service reads from a worker is bounded: a line at most the size of a request body (a result can be no
larger over HTTP), parsed only once its structure is within MAX_DEPTH levels and MAX_VALUES values (so a legal
line cannot become an object many times its size), log records cut at MAX_LOG_CHARS and at most
MAX_LOGS_PER_CALL of them per call, stderr lines cut at MAX_LOG_CHARS and rate-limited.

Isolation bounds crashes, hangs and memory; it is not a security boundary: the worker runs as the service's user
and can read what the service can read. It gets only a short list of environment variables (ENV_ALLOWED, plus
those the plugin's config.json names under "environment"), not the service's MOLTBOT_* settings or other secrets,
and the service is not dumpable (processes.protect_service_process), so its /proc/<pid>/environ is closed to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import IO, Any, NoReturn

from ..logs import redact_urls
from .base import BasePlugin
from .errors import PluginAPIError, PluginError, PluginFailed, PluginLoadError, PluginTimeout
from .loader import load_plugin, package_name
from .processes import become_subreaper, kill_tree

log = logging.getLogger("moltbot.plugins")
# A worker that does not answer its load within this many seconds is stopped (imports hanging, a busy loop).
LOAD_TIMEOUT = 120.0
# The longest line (one JSON message: a result, a log record, a request) the service reads from a worker unless the
# manager says otherwise (it gives max_body_bytes); a longer one, or one that is not a protocol message, kills the
# worker.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# A message's structure budget: nesting levels and values (scalars, keys, arrays and objects). json.loads makes
# ~25 bytes of objects of each byte of `[[],[],...` or `{"a":{},...`: past these, a line is refused unparsed, so a
# message costs the service a few tens of MB at most.
MAX_DEPTH = 64
MAX_VALUES = 500_000
# A log record (or stderr line) of a worker is cut to this many characters, saying so; a call logs at most
# MAX_LOGS_PER_CALL records (later ones are counted and dropped), stderr at most STDERR_BURST lines at once and
# STDERR_PER_SECOND lines a second on average.
MAX_LOG_CHARS = 4096
MAX_LOGS_PER_CALL = 200
STDERR_BURST = 200
STDERR_PER_SECOND = 20.0
# The environment variables a worker gets from the service's (besides those its config.json lists): what Python,
# the C library and common libraries need to start, find their files and read the locale and time zone. (The
# worker's own interpreter ignores PYTHON* ones, `python -I`; programs the plugin runs may read them.)
ENV_ALLOWED = frozenset({"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP",
                         "VIRTUAL_ENV", "LD_LIBRARY_PATH", "SSL_CERT_FILE", "SSL_CERT_DIR"})
ENV_ALLOWED_PREFIXES = ("LC_", "PYTHON")


def worker_environment(extra: list[str] | tuple[str, ...] = (), environ: dict[str, str] | None = None
                       ) -> dict[str, str]:
    """The worker's environment: the allowed variables (and `extra`) of the service's, never MOLTBOT_* ones."""
    source = dict(os.environ if environ is None else environ)
    return {k: v for k, v in source.items()
            if (k in ENV_ALLOWED or k.startswith(ENV_ALLOWED_PREFIXES) or k in extra) and not k.startswith("MOLTBOT_")}


class _ProtocolError(PluginFailed):
    """The worker wrote something that is not a protocol message (it is killed)."""


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_INNERMOST = re.compile(rb"\[\]|\{\}")  # one scan: removes the innermost pairs, one level of nesting


class MessageTooLarge(ValueError):
    """A line whose structure passes the parse budget (MAX_DEPTH, MAX_VALUES)."""


def bounded_loads(line: bytes, max_depth: int = MAX_DEPTH, max_values: int = MAX_VALUES) -> Any:
    """json.loads once the line's structure is within budget; MessageTooLarge saying which budget it passes. The
    checks work on a copy with the strings emptied (their contents cannot nest or add values): bracket, comma
    and colon counts bound the values, and peeling the innermost pairs level by level bounds the depth."""
    skeleton = _STRING.sub(b'""', line)
    values = 1 + sum(skeleton.count(c) for c in (b",", b":", b"[", b"{"))
    if values > max_values:
        raise MessageTooLarge(f"more than {max_values} values")
    brackets = skeleton.translate(None, _NOT_BRACKETS)
    for _ in range(max_depth):
        if not brackets:
            break
        brackets = _INNERMOST.sub(b"", brackets)
    if brackets:
        raise MessageTooLarge(f"nested deeper than {max_depth} levels")
    return json.loads(line)


def cut(text: str, limit: int = MAX_LOG_CHARS) -> str:
    """`text`, or as much of it as fits in `limit` characters with a note of how much was cut (a text cut once
    is not cut again: the worker cuts its records, and the service checks)."""
    if len(text) <= limit:
        return text
    kept = limit - 48  # room for the note
    return f"{text[:kept]} [... {len(text) - kept} more characters cut]"


def _log_stderr(stream: IO[bytes], name: str) -> None:
    """Log each line the worker writes to stderr at WARNING under moltbot.plugins.<name>, with URLs redacted
    (user info and query strings), cut at MAX_LOG_CHARS and rate-limited (a token bucket; what it drops is counted
    in the next line logged), until the worker and whatever it started have closed the pipe."""
    logger = logging.getLogger(f"moltbot.plugins.{name}")
    extra = {"plugin": name, "stream": "stderr"}
    tokens, last, dropped = float(STDERR_BURST), time.monotonic(), 0
    try:
        with stream:
            while line := stream.readline(MAX_LOG_CHARS):
                cut_bytes = 0
                while not line.endswith(b"\n") and (rest := stream.readline(64 * 1024)):
                    cut_bytes += len(rest)  # the rest of an overlong line: counted, never held whole
                    if rest.endswith(b"\n"):
                        break
                now = time.monotonic()
                tokens, last = min(float(STDERR_BURST), tokens + (now - last) * STDERR_PER_SECOND), now
                text = line.decode("utf-8", "replace").rstrip("\r\n")
                if not text.strip():
                    continue
                if tokens < 1:
                    dropped += 1
                    continue
                tokens -= 1
                if cut_bytes:
                    text += f" [... {cut_bytes} more bytes cut]"
                if dropped:
                    text = f"[{dropped} stderr lines dropped: over {STDERR_PER_SECOND:g} a second] {text}"
                    dropped = 0
                logger.warning("%s", redact_urls(text), extra=extra)
    except (OSError, ValueError):  # the pipe closed under the reader
        pass
    if dropped:
        logger.warning("[%d stderr lines dropped: over %g a second]", dropped, STDERR_PER_SECOND, extra=extra)


class ProcessPlugin(BasePlugin):
    """The service side of one isolated plugin: a proxy whose blocking `execute(context)` runs the call in the
    worker process (the manager runs it on its thread pool, as any plain `execute`)."""

    def __init__(self, folder: Path, name: str, class_name: str | None, settings: dict[str, Any],
                 memory_mb: int, environment: list[str] | tuple[str, ...] = (), *, data_dir: Path,
                 max_result_bytes: int = MAX_MESSAGE_BYTES):
        super().__init__(settings)
        self.folder, self.name, self.class_name, self.memory_mb = folder, name, class_name, memory_mb
        self.settings = settings
        self.environment = tuple(environment)
        self.data_dir = data_dir
        self.max_line = max_result_bytes
        self.schema: dict[str, Any] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()  # one call at a time per worker
        self._state = threading.Lock()  # guards _running against cancel()
        self._running: Any = None  # the context of the call the worker is running now

    # ---- the worker's life

    def start(self) -> ProcessPlugin:
        """Start the worker and load the plugin there; PluginLoadError with the worker's reason otherwise."""
        # Not the service's own settings (its API keys among them); the plugin's settings come with the load.
        # -I: nothing from the plugin folder or the working directory (the data folder) shadows the standard library
        # or moltbot, and no PYTHON* variable applies; -B: no bytecode written into the service's environment.
        # A session of its own: kill() stops the worker's process group and tree.
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._process = subprocess.Popen(
            [sys.executable, "-I", "-B", "-m", "moltbot.plugins.isolation", str(self.memory_mb)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=worker_environment(self.environment), cwd=str(self.data_dir), start_new_session=True)
        # What the worker writes to stderr (the plugin's prints, a native library's messages, a crash's traceback)
        # is logged line by line through the service's logger: JSON, URLs redacted, never raw on the container log.
        assert self._process.stderr is not None
        threading.Thread(target=_log_stderr, args=(self._process.stderr, self.name),
                         name=f"plugin-{self.name}-stderr", daemon=True).start()
        timer = threading.Timer(LOAD_TIMEOUT, self.kill)
        timer.start()
        try:
            self._send({"op": "load", "folder": str(self.folder), "name": self.name, "class": self.class_name,
                        "settings": self.settings})
            reply = self._receive()
        except _ProtocolError as exc:
            raise PluginLoadError(exc.message) from None
        finally:
            timer.cancel()
        if reply is None:
            code = self.kill()
            raise PluginLoadError(f"the plugin's worker process exited while loading (exit code {code})")
        if reply["op"] == "load_error":
            self.kill()
            raise PluginLoadError(reply["error"])
        self.schema = reply.get("input_schema")
        return self

    def kill(self) -> int | None:
        """Stop the worker and the processes it started at once (a timed-out or broken call); the next call
        starts a new one."""
        process, self._process = self._process, None
        if process is None:
            return None
        # Its tree (setsid children included: the worker is their subreaper) while the worker is there, then its
        # process group (start_new_session), which also reaches children of a worker that has already exited.
        # The worker is not reaped yet, so its pid is still its own.
        kill_tree(process.pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        if process.poll() is None:
            process.kill()
        return process.wait()

    def cancel(self, context: Any) -> bool:
        """The call of `context` passed its timeout: kill the worker if it is running that call (True); a call
        still waiting for the worker only gives up (execute() will not run it)."""
        with self._state:
            if self._running is not context:
                return False
            self.kill()
            return True

    def close(self) -> None:
        """Let the plugin's close() run in the worker (after a call in flight, for up to 5 s), then stop it."""
        if self._lock.acquire(timeout=5):
            try:
                process = self._process
                if process is not None and process.poll() is None:
                    self._send({"op": "close"})
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        process.wait(timeout=5)
            finally:
                self._lock.release()
        self.kill()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    # ---- calls

    def execute(self, context: Any) -> dict[str, Any]:
        """Run the call in the worker, once the calls before it are done; a call whose time runs out while it
        waits raises PluginTimeout and never runs."""
        left = context.time_left()
        if left <= 0 or not self._lock.acquire(timeout=left):
            raise PluginTimeout(f"plugin {self.name!r}: the call timed out waiting for the calls before it to finish")
        try:
            if context.time_left() <= 0:
                raise PluginTimeout(f"plugin {self.name!r}: the call timed out waiting for the calls before it "
                                    "to finish")
            with self._state:
                self._running = context
            try:
                return self._call(context)
            finally:
                with self._state:
                    self._running = None
        finally:
            self._lock.release()

    def _call(self, context: Any) -> dict[str, Any]:
        if self._process is None or self._process.poll() is not None:
            if self._process is not None:
                log.warning("plugin %s: its worker process had exited (%s); starting a new one", self.name,
                            self._process.returncode)
            self.kill()
            self.start()
        self._send({"op": "call", "input": context.input, "request_id": context.request_id,
                    "time_left": context.time_left(), "data_root": str(context.data_root),
                    "log_prompts": context.log_prompts})
        logs = _CallLog(context.logger)
        try:
            return self._exchange(context, logs)
        finally:
            logs.finish()

    def _exchange(self, context: Any, logs: _CallLog) -> dict[str, Any]:
        """The messages of one call until its result or error."""
        while True:
            message = self._receive()
            if message is None:
                code = self.kill()
                raise PluginFailed(f"plugin {self.name!r}: its worker process died (exit code {code}) during "
                                   f"the call (request id {context.request_id}); it is restarted for the next")
            op = message["op"]
            try:
                if op == "log":
                    logs.log(int(message["level"]), str(message["message"]))
                elif op == "rpc":
                    self._send(_answer(context, message))
                elif op == "result":
                    result: dict[str, Any] = message["result"]  # the manager checks that it is an object
                    return result
                elif op == "error":
                    if message.get("traceback"):
                        context.logger.error("plugin call raised in its worker process:\n%s", message["traceback"])
                    if message["kind"] == "plugin_error":
                        raise PluginError(message["message"], code=message.get("code"), param=message.get("param"))
                    if message["kind"] == "memory":
                        self.kill()
                    raise PluginFailed(f"plugin {self.name!r} failed (request id {context.request_id}); "
                                       "the server log has the details")
                else:
                    self._broken(f"an unknown message {op!r}")
            except (KeyError, TypeError, ValueError):
                self._broken(f"a malformed {op!r} message")

    def _broken(self, what: str) -> NoReturn:
        """The worker broke the protocol: kill it and fail the call."""
        self.kill()
        log.error("plugin %s: its worker process wrote %s; it was killed", self.name, what)
        raise _ProtocolError(f"plugin {self.name!r}: its worker process wrote {what} instead of a protocol message; "
                             "it was killed and is restarted for the next call")

    def _send(self, message: dict[str, Any]) -> None:
        process = self._process
        if process is None or process.stdin is None:
            raise PluginFailed(f"plugin {self.name!r}: no worker process")
        try:
            process.stdin.write(json.dumps(message, default=str).encode() + b"\n")
            process.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass  # the worker is gone: _receive sees the end of its output

    def _receive(self) -> dict[str, Any] | None:
        process = self._process
        if process is None or process.stdout is None:
            return None
        try:
            line = process.stdout.readline(self.max_line + 1)
        except (OSError, ValueError):
            return None
        if not line:
            return None
        if len(line) > self.max_line:
            self._broken(f"a line over {self.max_line} bytes (the largest request body, max_body_bytes)")
        try:
            message = bounded_loads(line)
        except MessageTooLarge as exc:
            self._broken(f"a message too large to parse ({exc}; the budget is {MAX_DEPTH} levels and "
                         f"{MAX_VALUES} values)")
        except ValueError:
            message = None
        if not isinstance(message, dict) or not isinstance(message.get("op"), str):
            self._broken(f"a line that is not a JSON message ({line[:80]!r})")
        checked: dict[str, Any] = message
        return checked


class _CallLog:
    """A worker's log records of one call, logged through the call's logger: each cut at MAX_LOG_CHARS, at most
    MAX_LOGS_PER_CALL of them (the rest counted, and the count logged at the end of the call)."""

    def __init__(self, logger: Any):
        self.logger, self.count, self.dropped = logger, 0, 0

    def log(self, level: int, message: str) -> None:
        self.count += 1
        if self.count > MAX_LOGS_PER_CALL:
            self.dropped += 1
            return
        self.logger.log(level, "%s", cut(message))

    def finish(self) -> None:
        if self.dropped:
            self.logger.warning("the plugin logged %d more records in this call than the %d logged; they were "
                                "dropped", self.dropped, MAX_LOGS_PER_CALL)


def _answer(context: Any, request: dict[str, Any]) -> dict[str, Any]:
    """Run a worker's request for context.models / context.plugins here, in the service."""
    method = request.get("method")
    try:
        args = dict(request.get("args") or {})
        if method == "models.chat":
            value: Any = context.models.chat(args.pop("messages"), **args)
        elif method == "models.embed":
            value = context.models.embed(args["texts"], model=args.get("model"))
        elif method == "models.names":
            value = context.models.names(args.get("task"))
        elif method == "plugins.call":
            value = context.plugins.call(args["name"], args["input"])
        elif method == "plugins.names":
            value = context.plugins.names()
        else:
            raise PluginError(f"unknown request {method!r}", code="bad_request")
    except PluginAPIError as exc:
        return {"op": "rpc_result", "id": request.get("id"), "error": {
            "type": type(exc).__name__, "message": exc.message, "code": exc.code, "param": exc.param}}
    except Exception as exc:  # always an answer: the worker waits for one
        context.logger.exception("plugin request %s from the worker process failed", method)
        return {"op": "rpc_result", "id": request.get("id"), "error": {
            "type": "PluginFailed", "message": f"{method} failed: {type(exc).__name__}", "code": "plugin_error",
            "param": None}}
    return {"op": "rpc_result", "id": request.get("id"), "result": value}


# ---- the worker process --------------------------------------------------------------------------------------

class _Channel:
    """The worker's end: JSON lines on the stdout it was started with (the plugin's own prints go to stderr)."""

    def __init__(self, reader: IO[bytes], writer: IO[bytes]):
        self.reader, self.writer = reader, writer
        self.lock = threading.Lock()
        self.next_id = 0

    def send(self, message: dict[str, Any]) -> None:
        with self.lock:
            self.writer.write(json.dumps(message, default=str).encode() + b"\n")
            self.writer.flush()

    def receive(self) -> dict[str, Any]:
        line = self.reader.readline()
        if not line:
            raise SystemExit(0)  # the service closed the pipe
        message: dict[str, Any] = json.loads(line)
        return message

    def request(self, method: str, **args: Any) -> Any:
        with self.lock:
            self.next_id += 1
            call_id = self.next_id
            self.writer.write(json.dumps({"op": "rpc", "id": call_id, "method": method, "args": args}).encode()
                              + b"\n")
            self.writer.flush()
            reply = self.receive()
        if "error" in reply:
            error = reply["error"]
            if error["type"] == "PluginTimeout":
                raise PluginTimeout(error["message"])
            raise PluginError(error["message"], code=error.get("code") or "plugin_error", param=error.get("param"))
        return reply["result"]


class _ChannelHandler(logging.Handler):
    def __init__(self, channel: _Channel):
        super().__init__()
        self.channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):  # a broken pipe: the service is gone
            self.channel.send({"op": "log", "level": record.levelno, "message": cut(record.getMessage())})


class _Models:
    def __init__(self, channel: _Channel):
        self._channel = channel

    def chat(self, messages: list[dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
        reply: dict[str, Any] = self._channel.request("models.chat", messages=messages, **kwargs)
        return reply

    def embed(self, texts: list[str], *, model: str | None = None) -> list[list[float]]:
        vectors: list[list[float]] = self._channel.request("models.embed", texts=texts, model=model)
        return vectors

    def names(self, task: str | None = None) -> list[str]:
        names: list[str] = self._channel.request("models.names", task=task)
        return names

    async def achat(self, messages: list[dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
        return await asyncio.to_thread(self.chat, messages, **kwargs)

    async def aembed(self, texts: list[str], *, model: str | None = None) -> list[list[float]]:
        return await asyncio.to_thread(self.embed, texts, model=model)


class _Plugins:
    def __init__(self, channel: _Channel):
        self._channel = channel

    def call(self, name: str, payload: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._channel.request("plugins.call", name=name, input=payload)
        return result

    async def acall(self, name: str, payload: dict[str, Any]) -> dict[str, Any]:
        return await asyncio.to_thread(self.call, name, payload)

    def names(self) -> list[str]:
        names: list[str] = self._channel.request("plugins.names")
        return names


class WorkerContext:
    """What `execute(context)` gets in a worker process: the same attributes as PluginContext."""

    def __init__(self, plugin: str, message: dict[str, Any], settings: dict[str, Any], channel: _Channel):
        self.plugin = plugin
        self.input = message["input"]
        self.request_id = message["request_id"]
        self.settings = settings
        self.data_root = Path(message["data_root"])
        self.log_prompts = bool(message["log_prompts"])
        self._expires = time.monotonic() + float(message["time_left"])
        self.logger = logging.LoggerAdapter(logging.getLogger(f"moltbot.plugins.{plugin}"),
                                            {"plugin": plugin, "request_id": self.request_id})
        self.models = _Models(channel)
        self.plugins = _Plugins(channel)

    @property
    def config(self) -> dict[str, Any]:
        return self.settings

    @property
    def data_dir(self) -> Path:
        path = self.data_root / self.plugin
        path.mkdir(parents=True, exist_ok=True)
        return path

    def time_left(self) -> float:
        return self._expires - time.monotonic()


def _limit_memory(megabytes: int) -> None:
    if megabytes > 0:
        import resource
        limit = megabytes * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def worker_main(memory_mb: int) -> int:
    # The protocol owns the original stdout; whatever the plugin prints goes to stderr.
    channel = _Channel(os.fdopen(os.dup(0), "rb"), os.fdopen(os.dup(1), "wb"))
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    logger = logging.getLogger("moltbot")
    logger.handlers = [_ChannelHandler(channel)]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    _limit_memory(memory_mb)
    become_subreaper()
    try:
        return _serve(channel, memory_mb)
    finally:
        # Whatever the plugin started dies with the worker, also when it ends on its own (close, a memory error).
        kill_tree(os.getpid(), include_root=False)


def _serve(channel: _Channel, memory_mb: int) -> int:
    """Load the plugin (loader.py, the manager's own rules), then run its calls until the service says close."""
    load = channel.receive()
    folder, name = Path(load["folder"]), load["name"]
    settings: dict[str, Any] = load["settings"]
    try:
        instance = load_plugin(folder, package_name(name, "worker"), load["class"], settings)
    except PluginLoadError as exc:
        channel.send({"op": "load_error", "error": str(exc)})
        return 0
    channel.send({"op": "loaded", "input_schema": getattr(instance, "input_schema", None)})

    while True:
        message = channel.receive()
        if message["op"] == "close":
            with contextlib.suppress(Exception):
                instance.close()
            return 0
        context = WorkerContext(name, message, settings, channel)
        try:
            execute: Any = instance.execute  # a plain or an async method
            result = asyncio.run(execute(context)) if inspect.iscoroutinefunction(execute) else execute(context)
            channel.send({"op": "result", "result": result})
        except PluginAPIError as exc:
            kind = "plugin_error" if isinstance(exc, PluginError) else "failed"
            channel.send({"op": "error", "kind": kind, "message": exc.message, "code": exc.code,
                          "param": exc.param})
        except MemoryError:
            channel.send({"op": "error", "kind": "memory", "message": "out of memory",
                          "traceback": f"MemoryError: the plugin passed its memory limit ({memory_mb} MiB)"})
            return 1
        except (Exception, SystemExit):
            channel.send({"op": "error", "kind": "failed", "message": "failed",
                          "traceback": traceback.format_exc()})


if __name__ == "__main__":
    sys.exit(worker_main(int(sys.argv[1])))
