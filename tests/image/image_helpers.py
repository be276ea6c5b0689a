"""Helpers for the container image tests (real Docker engine).

The image is the one `make image` builds (a TEST_DEPS step of `make test`; the `image` fixture runs it again,
which is a cached no-op of a few seconds when nothing changed). Containers run with the operators' documented
command, on their own temporary folders, and publish port 8080 on 127.0.0.1 only, on a port Docker picks.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
IMAGE = "moltbot:latest"
GPU_IMAGE = "moltbot:gpu"
# The image's uid, ports and paths (deploy/contract.json), which the image must follow.
CONTRACT = json.loads((REPO / "deploy" / "contract.json").read_text())
READY_LINE = f"AI Assistant service ready on port {CONTRACT['ports']['http']}"
# The documented keyless `docker run` binds 0.0.0.0 inside the container: without keys it needs this opt-in (#22).
KEYLESS_OPT_IN = ("-e", "MOLTBOT_ALLOW_UNAUTHENTICATED=true")
# The embedded defaults the image serves, and what its defaults folder holds (the manifest and one folder each).
CHAT_MODEL = "smollm2-135m-instruct"
DEFAULT_MODELS = {CHAT_MODEL, "all-minilm-l6-v2"}
DEFAULTS_FOLDER_CONTENTS = ["all-minilm-l6-v2", "defaults.json", "smollm2-135m-instruct-int8"]
SERVICE_UID = CONTRACT["service_user"]["uid"]
# Bounds for polling loops; a healthy start takes a few seconds (see docs/benchmarks.md).
READY_TIMEOUT_S = 90.0
POLL_S = 0.1


def docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


@dataclass
class Container:
    name: str
    data: Path  # host folders mounted as /app/models, /app/plugins, /app/logs
    run_started: float  # time.monotonic() just before `docker run`
    published: bool = True

    @property
    def models(self) -> Path:
        return self.data / "models"

    @property
    def plugins(self) -> Path:
        return self.data / "plugins"

    @property
    def logs_dir(self) -> Path:
        return self.data / "logs"

    def logs(self) -> str:
        result = docker("logs", self.name, check=False)
        return result.stdout + result.stderr

    def state(self) -> dict:
        return json.loads(docker("inspect", "-f", "{{json .State}}", self.name).stdout)

    def inspect(self, template: str) -> str:
        return docker("inspect", "-f", template, self.name).stdout.strip()

    def wait_ready(self, count: int = 1, timeout: float = READY_TIMEOUT_S) -> float:
        """Wait until `docker logs` shows the ready line `count` times; seconds since `docker run`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            logs = self.logs()
            if logs.count(READY_LINE) >= count:
                return time.monotonic() - self.run_started
            status, restarts = self.inspect("{{.State.Status}} {{.RestartCount}}").split()
            if status in ("exited", "dead") or int(restarts) >= count:
                raise AssertionError(f"{self.name} stopped before it was ready ({status}, restarts: {restarts}):\n"
                                     f"{logs}")
            time.sleep(POLL_S)
        raise AssertionError(f"{self.name}: no {count}x '{READY_LINE}' within {timeout} s:\n{self.logs()}")

    def port(self) -> int:
        """The 127.0.0.1 port Docker published for 8080 (it may change when the container restarts)."""
        assert self.published, "this container publishes no port"
        mapping = docker("port", self.name, "8080/tcp").stdout.split()
        assert mapping and mapping[0].startswith("127.0.0.1:"), f"8080 must be published on 127.0.0.1: {mapping}"
        return int(mapping[0].rsplit(":", 1)[1])

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=f"http://127.0.0.1:{self.port()}", timeout=60)

    def exec_python(self, code: str) -> str:
        """Run Python inside the container as the service user (for containers without a published port)."""
        result = docker("exec", "--user", str(SERVICE_UID), self.name, "python", "-c", code, check=False)
        assert result.returncode == 0, f"python in {self.name} failed:\n{result.stderr}"
        return result.stdout
