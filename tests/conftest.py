"""Fixtures shared by every area: the embedded default models (made once) and real `moltbot serve` processes.

The live servers' embedded defaults are the test fixtures of tests/fixture_models.py (tiny-chat, random weights,
and the real all-MiniLM-L6-v2), fast enough for the many tests that need arbitrary tokens; `real_defaults_dir` is
the product's own (smollm2-135m-instruct from its GGUF, the folder `make image` bakes), for the tests of the real
default."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
DEFAULTS_DIR = REPO / "build" / "test-defaults"
# The same folder `make run` (MOLTBOT_DEFAULTS_DIR) and `make image` use, so the real defaults are made once per
# checkout.
REAL_DEFAULTS_DIR = REPO / "build" / "default-models"
BUILDER_PYTHON = REPO / "build" / "builder-venv" / "bin" / "python"
READY_TIMEOUT = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def defaults_dir() -> Path:
    """The test servers' embedded defaults (tiny-chat, all-minilm-l6-v2), made if they are not there yet."""
    result = subprocess.run([sys.executable, "-m", "tests.fixture_models", str(DEFAULTS_DIR)], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return DEFAULTS_DIR


@pytest.fixture(scope="session")
def real_defaults_dir() -> Path:
    """The product's embedded defaults (smollm2-135m-instruct int8, all-minilm-l6-v2), made as `make run` makes
    them: from the packaged GGUF, with the model builder's venv."""
    result = subprocess.run([sys.executable, "-m", "moltbot.export.defaults", str(REAL_DEFAULTS_DIR),
                             "--builder-python", str(BUILDER_PYTHON)], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return REAL_DEFAULTS_DIR


@dataclass
class Server:
    """A `moltbot serve` child process on 127.0.0.1."""

    process: subprocess.Popen
    port: int
    https_port: int | None
    home: Path
    lines: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, text: str, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not seen (exit code {self.process.poll()}); output:\n{self.output()[-4000:]}")

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        self.wait_for_line(f"AI Assistant service ready on port {self.port}", timeout)

    def stop(self, timeout: float = 20) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_server(home: Path, env: dict | None = None, args: list[str] | None = None,
                 defaults: Path | None = None, https: bool = False) -> Server:
    port = free_port()
    https_port = free_port() if https else None
    for sub in ("models", "plugins", "logs"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("MOLTBOT_")}
    child_env.update({
        "MOLTBOT_HOST": "127.0.0.1", "MOLTBOT_PORT": str(port),
        "MOLTBOT_MODELS_DIR": str(home / "models"), "MOLTBOT_PLUGINS_DIR": str(home / "plugins"),
        "MOLTBOT_LOGS_DIR": str(home / "logs"), "MOLTBOT_CACHE_DIR": str(home / "cache"),
        "MOLTBOT_DEFAULTS_DIR": str(defaults or DEFAULTS_DIR), "MOLTBOT_SHUTDOWN_TIMEOUT": "10",
        "PYTHONUNBUFFERED": "1",
    })
    if https_port:
        child_env["MOLTBOT_HTTPS_PORT"] = str(https_port)
    child_env.update(env or {})
    process = subprocess.Popen([sys.executable, "-m", "moltbot", "serve", *(args or [])], env=child_env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=home)
    server = Server(process, port, https_port, home)

    def pump() -> None:
        for line in process.stdout:
            server.lines.append(line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    return server


@pytest.fixture
def server_factory(tmp_path: Path, defaults_dir: Path) -> Iterator:
    """Starts servers on demand; every one is stopped at the end of the test."""
    started: list[Server] = []

    def factory(name: str = "srv", wait: bool = True, **kwargs) -> Server:
        srv = start_server(tmp_path / name, **kwargs)
        started.append(srv)
        if wait:
            srv.wait_ready()
        return srv

    yield factory
    for srv in started:
        srv.stop()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory, defaults_dir: Path) -> Iterator[Server]:
    """One server with the embedded defaults, for tests that only send requests."""
    srv = start_server(tmp_path_factory.mktemp("shared"))
    srv.wait_ready()
    yield srv
    srv.stop()


@pytest.fixture
def client(shared_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=shared_server.url, timeout=60) as c:
        yield c
