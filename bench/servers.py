"""The servers under test as child processes on 127.0.0.1: `moltbot serve` and llama.cpp's `llama-server`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

READY_LINE = "AI Assistant service ready on port"
READY_TIMEOUT = 600.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A child process whose output goes to a log file; `load_seconds` is process start to ready."""

    def __init__(self, name: str, command: list[str], env: dict, log_path: Path, port: int):
        self.name = name
        self.command = command
        self.env = env
        self.log_path = log_path
        self.port = port
        self.process: subprocess.Popen | None = None
        self.load_seconds: float | None = None
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ServerProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("w")
        started = time.monotonic()
        self.process = subprocess.Popen(self.command, env=self.env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, bufsize=1)

        def pump() -> None:  # copy the output to the log, and notice the ready line as soon as it comes
            for line in self.process.stdout:
                log.write(line)
                if not self._ready.is_set() and READY_LINE in line:
                    self.load_seconds = time.monotonic() - started
                    self._ready.set()
            log.close()

        threading.Thread(target=pump, daemon=True).start()
        try:
            self._wait_ready(started)
        except BaseException:  # not ready, or the bench itself is stopped meanwhile: leave no server behind
            self.stop()
            raise
        return self

    def _wait_ready(self, started: float) -> None:
        raise NotImplementedError

    def _failed(self, why: str) -> RuntimeError:
        self.stop()
        tail = self.log_path.read_text()[-3000:] if self.log_path.exists() else ""
        return RuntimeError(f"{self.name}: {why}; last output:\n{tail}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class MoltbotServer(ServerProcess):
    """`moltbot serve` with one model config in its own models dir (no embedded default models)."""

    def __init__(self, name: str, model_config: dict, home: Path, cache_dir: Path, device: str = "cpu",
                 extra_env: dict | None = None):
        home.mkdir(parents=True, exist_ok=True)
        models_dir = home / "models"
        models_dir.mkdir(exist_ok=True)
        (models_dir / f"{model_config['name']}.json").write_text(json.dumps(model_config))
        port = free_port()
        env = {
            **os.environ, "MOLTBOT_HOST": "127.0.0.1", "MOLTBOT_PORT": str(port),
            "MOLTBOT_MODELS_DIR": str(models_dir), "MOLTBOT_LOGS_DIR": str(home / "logs"),
            "MOLTBOT_PLUGINS_DIR": str(home / "plugins"), "MOLTBOT_CACHE_DIR": str(cache_dir),
            "MOLTBOT_DEFAULTS_DIR": str(home / "defaults"), "MOLTBOT_DEFAULT_MODELS": "off",
            "MOLTBOT_DEVICE": device, "MOLTBOT_LOG_LEVEL": "WARNING", **(extra_env or {}),
        }
        # `python -m moltbot`: also where the package is on PYTHONPATH rather than installed (scripts/gpu-check.sh)
        super().__init__(name, [sys.executable, "-m", "moltbot", "serve"], env, home / "serve.log", port)

    def _wait_ready(self, started: float) -> None:
        """Until the ready line; a service whose every model failed to load stays up but never ready, and says
        why on /ready (`failed`), so that is asked too."""
        next_ask = time.monotonic() + 1.0
        while not self._ready.wait(0.05):
            if self.process.poll() is not None:
                raise self._failed(f"exited with {self.process.returncode} before it was ready")
            if time.monotonic() > next_ask:
                next_ask = time.monotonic() + 1.0
                failed = self._load_failures()
                if failed:
                    raise self._failed("no model loaded: " + "; ".join(failed))
            if time.monotonic() - started > READY_TIMEOUT:
                raise self._failed(f"not ready after {READY_TIMEOUT:.0f} s")

    def _load_failures(self) -> list[str]:
        try:
            body = httpx.get(self.url + "/ready", timeout=2.0).json()
        except (httpx.HTTPError, ValueError):
            return []
        if not isinstance(body, dict) or body.get("models") or body.get("status") == "ready":
            return []
        return [str(f.get("error", f)) if isinstance(f, dict) else str(f) for f in body.get("failed") or []]


class LlamaServer(ServerProcess):
    """llama.cpp's own server: `parallel` slots with continuous batching, `threads` CPU threads."""

    def __init__(self, binary: Path, gguf: Path, parallel: int, threads: int, context_per_slot: int, home: Path,
                 alias: str):
        port = free_port()
        command = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-t", str(threads),
                   "-tb", str(threads), "-np", str(parallel), "-c", str(parallel * context_per_slot),
                   "--alias", alias, "--no-webui"]
        super().__init__(f"llama-server -np {parallel}", command, dict(os.environ), home / f"llama-np{parallel}.log",
                         port)

    def _wait_ready(self, started: float) -> None:
        with httpx.Client(timeout=5.0) as client:
            while True:
                if self.process.poll() is not None:
                    raise self._failed(f"exited with {self.process.returncode} before it was ready")
                try:
                    if client.get(self.url + "/health").status_code == 200:
                        self.load_seconds = time.monotonic() - started
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() - started > READY_TIMEOUT:
                    raise self._failed(f"not ready after {READY_TIMEOUT:.0f} s")
                time.sleep(0.01)
