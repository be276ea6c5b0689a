"""Readiness while loading, the ready line, logs on disk, and graceful shutdown on SIGTERM."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time

import httpx
import pytest

from tests.runtime.http_fixtures import ArchiveServer, make_model_archive


@contextlib.contextmanager
def slow_remote_model(home, defaults_dir, seconds: int):
    """A `remote` model config in home/models whose download takes about `seconds`: the service stays loading."""
    archive = make_model_archive(defaults_dir / "tiny-chat", home.parent / f"{home.name}-tiny.tar.gz")
    with ArchiveServer(archive, bytes_per_second=len(archive.read_bytes()) // seconds) as remote:
        (home / "models").mkdir(parents=True)
        (home / "models" / "slow.json").write_text(json.dumps(
            {"name": "slow-chat", "type": "remote", "url": remote.url, "sha256": remote.sha256,
             "allow_http": True}))
        yield remote


def test_ready_only_after_every_model_loaded(server_factory, tmp_path, defaults_dir):
    with slow_remote_model(tmp_path / "srv", defaults_dir, seconds=3):
        srv = server_factory("srv", wait=False)
        srv.wait_for_line('"listening"', timeout=60)
        seen_loading = None
        for _ in range(200):
            response = httpx.get(srv.url + "/ready")
            if response.status_code == 503:
                seen_loading = response.json()
                assert httpx.get(srv.url + "/health").status_code == 200
                models = httpx.get(srv.url + "/v1/models")
                assert models.status_code == 503 and models.json()["error"]["code"] == "not_ready"
                assert not any("service ready" in line for line in srv.lines)
                break
            time.sleep(0.05)
        assert seen_loading and seen_loading["status"] == "loading"
        srv.wait_ready()
        assert httpx.get(srv.url + "/ready").json()["models"] == ["slow-chat"]


def test_ready_line_names_the_real_port_and_logs_go_to_stdout_and_file(shared_server):
    ready_lines = [line for line in shared_server.lines if line.startswith("AI Assistant service ready")]
    assert ready_lines == [f"AI Assistant service ready on port {shared_server.port}"]
    httpx.post(shared_server.url + "/v1/chat/completions",
               json={"model": "tiny-chat", "messages": [{"role": "user", "content": "secret prompt"}],
                     "max_tokens": 3})
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        file_lines = (shared_server.home / "logs" / "moltbot.log").read_text().splitlines()
        access = [json.loads(line) for line in file_lines if '"moltbot.access"' in line and "chat" in line]
        if access:
            break
        time.sleep(0.1)
    entry = access[-1]
    for field in ("time", "level", "request_id", "route", "status", "latency_ms", "model", "prompt_tokens",
                  "completion_tokens"):
        assert field in entry, field
    assert entry["route"] == "/v1/chat/completions" and entry["model"] == "tiny-chat"
    assert entry["completion_tokens"] == 3
    shared_server.wait_for_line(entry["request_id"], timeout=5)  # the same line on stdout
    stdout_json = [json.loads(line) for line in shared_server.lines if line.startswith("{")]
    assert "secret prompt" not in "\n".join(file_lines)  # prompts are not logged by default
    loads = [e for e in stdout_json if e.get("load_seconds") is not None]
    assert {e["model"] for e in loads} == {"tiny-chat", "all-minilm-l6-v2"}
    assert all(e["load_seconds"] < 3 for e in loads)


def test_sigterm_finishes_requests_in_flight_then_exits_0(server_factory):
    srv = server_factory(env={"MOLTBOT_SHUTDOWN_DELAY": "1.5"})
    tokens, done = [], threading.Event()
    body = {"model": "tiny-chat", "messages": [{"role": "user", "content": "go"}], "max_tokens": 1500,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}

    def stream() -> None:
        with httpx.stream("POST", srv.url + "/v1/chat/completions", json=body, timeout=60) as response:
            for line in response.iter_lines():
                if line:
                    tokens.append(line)
        done.set()

    reader = threading.Thread(target=stream)
    reader.start()
    while not any(line.startswith("data: {") for line in tokens):
        time.sleep(0.01)
    srv.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    draining = httpx.get(srv.url + "/ready")  # still accepted during the shutdown delay
    assert draining.status_code == 503 and draining.json()["status"] == "draining"
    assert srv.process.wait(30) == 0
    reader.join(10)
    assert done.is_set()
    assert tokens[-1] == "data: [DONE]"
    usage = [json.loads(line[6:]) for line in tokens if '"usage"' in line]
    assert usage and usage[-1]["usage"]["completion_tokens"] == 1500
    with pytest.raises(httpx.ConnectError):
        httpx.get(srv.url + "/health")


def test_sigterm_while_loading_stops_promptly_with_exit_0(server_factory, tmp_path, defaults_dir):
    home = tmp_path / "srv"
    with slow_remote_model(home, defaults_dir, seconds=30):
        srv = server_factory("srv", wait=False)
        srv.wait_for_line('"listening"', timeout=60)
        time.sleep(1)
        assert httpx.get(srv.url + "/ready").status_code == 503
        started = time.monotonic()
        srv.process.send_signal(signal.SIGTERM)
        assert srv.process.wait(20) == 0
        assert time.monotonic() - started < 10  # not the 30 s the download would take
    assert not (home / "models" / "slow-chat").exists()


def test_keys_asked_for_but_none_found_refuses_to_start(server_factory, tmp_path):
    empty = tmp_path / "keys.txt"
    empty.write_text("# no keys yet\n\n")
    srv = server_factory(wait=False, env={"MOLTBOT_API_KEYS_FILE": str(empty)})
    assert srv.process.wait(30) == 2
    assert "hold no key" in srv.output()


def test_cuda_asked_for_without_a_gpu_warns_and_serves_on_the_cpu(server_factory):
    srv = server_factory(env={"MOLTBOT_DEVICE": "cuda"})
    warnings = [json.loads(line) for line in srv.lines if '"WARNING"' in line and "CUDA" in line]
    assert warnings and "using the CPU" in warnings[0]["message"]
    cards = httpx.get(srv.url + "/v1/models").json()["data"]
    assert {card["provider"] for card in cards} == {"CPUExecutionProvider"}
    metrics = httpx.get(srv.url + "/metrics").text
    assert 'provider="CPUExecutionProvider"' in metrics
