"""The cpu image on a real Docker engine: the operators' documented `docker run`, volumes, signals, restarts,
read-only root filesystem, resource limits, no network, and what the image carries."""

from __future__ import annotations

import json
import os
import signal
import stat
import textwrap
import time

import pytest

from tests.image.image_helpers import (
    CHAT_MODEL,
    CONTRACT,
    DEFAULT_MODELS,
    DEFAULTS_FOLDER_CONTENTS,
    POLL_S,
    READY_LINE,
    SERVICE_UID,
    docker,
)

pytestmark = pytest.mark.docker

CHAT = {"messages": [{"role": "user", "content": "Hello, who are you?"}], "max_tokens": 8}


def chat(client, model: str) -> dict:
    response = client.post("/v1/chat/completions", json={"model": model, **CHAT})
    assert response.status_code == 200, response.text
    body = response.json()
    message = body["choices"][0]["message"]
    assert message["role"] == "assistant" and isinstance(message["content"], str)
    assert 1 <= body["usage"]["completion_tokens"] <= CHAT["max_tokens"]
    return body


def test_documented_run_serves_the_baked_in_defaults_over_empty_volumes(run_container):
    container = run_container()
    ready_s = container.wait_ready()
    print(f"\nstart to ready: {ready_s:.2f} s")
    assert ready_s < 30, f"ready only after {ready_s:.1f} s"
    assert f"{READY_LINE}\n" in container.logs()
    with container.client() as client:
        health = client.get("/health")
        assert health.status_code == 200, health.text
        models = client.get("/v1/models")
        assert models.status_code == 200, models.text
        assert {m["id"] for m in models.json()["data"]} == DEFAULT_MODELS
        assert chat(client, CHAT_MODEL)["model"] == CHAT_MODEL
        # The real model, baked in: a greedy answer that means something.
        paris = client.post("/v1/chat/completions", json={
            "model": CHAT_MODEL, "temperature": 0, "max_tokens": 24,
            "messages": [{"role": "system", "content": "You are a helpful assistant."},
                         {"role": "user", "content": "What is the capital of France?"}]})
        assert paris.status_code == 200, paris.text
        assert "Paris" in paris.json()["choices"][0]["message"]["content"]
        embeddings = client.post("/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": ["a", "b"]})
        assert embeddings.status_code == 200, embeddings.text
        assert [len(item["embedding"]) for item in embeddings.json()["data"]] == [384, 384]
    # The empty models volume stays empty: the defaults come from the image, not from the volume.
    assert [p.name for p in container.models.iterdir() if not p.name.startswith(".")] == []
    # Nothing is written outside the volumes (ONNX Runtime's telemetry would leave a device ID under ~/.cache).
    assert docker("diff", container.name).stdout.strip() == ""


def test_logs_go_to_stdout_and_to_the_logs_volume_readable_on_the_host(run_container):
    container = run_container()
    container.wait_ready()
    with container.client() as client:
        chat(client, CHAT_MODEL)
    log_file = container.logs_dir / "moltbot.log"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "/v1/chat/completions" not in log_file.read_text():
        time.sleep(POLL_S)
    info = log_file.stat()
    assert info.st_uid == SERVICE_UID
    assert info.st_mode & stat.S_IROTH, f"moltbot.log mode {oct(info.st_mode)} is not readable by other users"
    records = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert any(r.get("route") == "/v1/chat/completions" and r.get("status") == 200 for r in records)
    assert any("ready" in r.get("message", "") for r in records)
    # The same JSON lines go to stdout, where `docker logs` (and log shippers) read them.
    stdout_records = [json.loads(line) for line in container.logs().splitlines() if line.startswith("{")]
    assert any(r.get("route") == "/v1/chat/completions" for r in stdout_records)
    # PID 1 is tini and, like the service under it, runs as the image's non-root user, not as root.
    status = docker("exec", container.name, "cat", "/proc/1/status").stdout
    assert "Name:\ttini" in status and f"Uid:\t{SERVICE_UID}\t{SERVICE_UID}" in status
    children = docker("exec", container.name, "cat", "/proc/1/task/1/children").stdout.split()
    service = docker("exec", container.name, "cat", f"/proc/{children[0]}/status").stdout
    assert f"Uid:\t{SERVICE_UID}\t{SERVICE_UID}" in service and "moltbot" in service


def _add_model_config_and_plugin(data):
    (data / "models" / "my-chat.json").write_text(json.dumps(
        {"name": "my-chat", "type": "local", "path": "/opt/moltbot/defaults/smollm2-135m-instruct-int8",
         "max_tokens": 512}))
    plugin = data / "plugins" / "shout"
    plugin.mkdir()
    (plugin / "__init__.py").write_text("")
    (plugin / "plugin.py").write_text(textwrap.dedent('''
        from moltbot.plugins import BasePlugin


        class ShoutPlugin(BasePlugin):
            def execute(self, context):
                return {"shouted": context.input["text"].upper() + self.config["suffix"]}
    '''))
    (plugin / "config.json").write_text(json.dumps({
        "name": "shout", "version": "1.2.3", "description": "Upper-cases text.", "class": "ShoutPlugin",
        "settings": {"suffix": "!"},
        "input_schema": {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}},
    }))


def test_model_config_and_plugin_in_the_volumes_are_picked_up(run_container):
    container = run_container(prepare=_add_model_config_and_plugin)
    container.wait_ready()
    with container.client() as client:
        models = client.get("/v1/models").json()["data"]
        # With a model config present, the defaults are not served (default_models=auto).
        assert [m["id"] for m in models] == ["my-chat"]
        assert chat(client, "my-chat")["model"] == "my-chat"
        plugins = client.get("/v1/plugins")
        assert plugins.status_code == 200, plugins.text
        listed = {p["name"]: p for p in plugins.json()["data"]}
        assert listed["shout"]["version"] == "1.2.3"
        result = client.post("/v1/plugins/shout/execute", json={"text": "hello"})
        assert result.status_code == 200, result.text
        assert result.json()["result"] == {"shouted": "HELLO!"}
        rejected = client.post("/v1/plugins/shout/execute", json={"words": "hello"})
        assert rejected.status_code == 400, rejected.text


def test_docker_stop_drains_and_exits_0_within_10_s(run_container):
    container = run_container()
    container.wait_ready()
    started = time.monotonic()
    docker("stop", container.name, timeout=60)  # Docker's default grace: 10 s, then SIGKILL
    elapsed = time.monotonic() - started
    state = container.state()
    assert state["ExitCode"] == 0, f"exit code {state['ExitCode']}:\n{container.logs()[-3000:]}"
    print(f"\ndocker stop: {elapsed:.2f} s")
    assert elapsed < 10, f"docker stop took {elapsed:.1f} s"
    assert "draining" in container.logs()


def test_killed_main_process_is_restarted_by_the_restart_policy(run_container):
    """SIGKILL to the container's main process from the host, as a crash or the kernel's OOM killer would.
    (`docker kill` itself counts as a manual stop: Docker does not apply the restart policy after it.)"""
    container = run_container()
    container.wait_ready()
    pid = int(container.inspect("{{.State.Pid}}"))
    os.kill(pid, signal.SIGKILL)
    container.wait_ready(count=2)
    state = container.state()
    assert state["Running"] and container.inspect("{{.RestartCount}}") == "1"
    assert int(state["Pid"]) != pid
    with container.client() as client:  # the published port may have changed with the restart
        assert client.get("/health").status_code == 200
        chat(client, CHAT_MODEL)


def test_read_only_root_filesystem_with_a_tmpfs_for_tmp(run_container):
    container = run_container("--read-only", "--tmpfs", "/tmp", "--health-interval", "2s",
                              prepare=_add_model_config_and_plugin)
    container.wait_ready()
    with container.client() as client:
        chat(client, "my-chat")
        executed = client.post("/v1/plugins/shout/execute", json={"text": "ro"})
        assert executed.status_code == 200, executed.text
        assert executed.json()["result"] == {"shouted": "RO!"}
        # A stored response goes to the models volume's state folder, writable under --read-only.
        stored = client.post("/v1/responses", json={"model": "my-chat", "input": "hi", "max_output_tokens": 2})
        assert stored.status_code == 200 and stored.json()["store"] is True, stored.text
        assert client.get(f"/v1/responses/{stored.json()['id']}").status_code == 200
    assert (container.data / "models" / ".state" / "responses.sqlite3").stat().st_size > 0
    assert (container.logs_dir / "moltbot.log").stat().st_size > 0
    # The image's HEALTHCHECK (run every 2 s here instead of 10 s) passes on the read-only root filesystem.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and container.inspect("{{.State.Health.Status}}") != "healthy":
        time.sleep(0.5)
    assert container.inspect("{{.State.Health.Status}}") == "healthy", container.inspect("{{json .State.Health}}")
    written = docker("exec", container.name, "touch", "/opt/moltbot/probe", check=False)
    assert written.returncode != 0 and "Read-only file system" in written.stderr


def test_cpu_and_memory_limits(run_container):
    # 1 GiB: the real default's int8 graph and MiniLM take ~600 MB loaded, a running sequence ~95 MB more.
    container = run_container("--cpus", "1", "--memory", "1g", "--memory-swap", "1g")
    ready_s = container.wait_ready()
    print(f"\nstart to ready with --cpus 1 --memory 1g: {ready_s:.2f} s")
    assert container.inspect("{{.HostConfig.NanoCpus}}") == str(10**9)
    assert container.inspect("{{.HostConfig.Memory}}") == str(2**30)
    with container.client() as client:
        for _ in range(3):
            chat(client, CHAT_MODEL)
        embeddings = client.post("/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": ["limits"] * 16})
        assert embeddings.status_code == 200, embeddings.text
    state = container.state()
    assert state["Running"] and not state["OOMKilled"] and container.inspect("{{.RestartCount}}") == "0"
    # ONNX Runtime's pools follow the quota, not the host's cores (the runtime reads it as the container sees it).
    budget = docker("exec", container.name, "python", "-c",
                    "from moltbot.engine.sessions import cpu_budget; print(cpu_budget())")
    assert budget.stdout.strip() == "1"


def test_serves_with_no_network_at_all(run_container):
    """Everything the service needs is in the image: it starts and answers with --network none."""
    container = run_container("--network", "none", publish=False)
    container.wait_ready()
    out = container.exec_python(textwrap.dedent("""
        import json, urllib.request
        request = urllib.request.Request("http://127.0.0.1:8080/v1/chat/completions", method="POST",
            headers={"Content-Type": "application/json"},
            data=json.dumps({"model": "smollm2-135m-instruct", "max_tokens": 4,
                             "messages": [{"role": "user", "content": "hi"}]}).encode())
        print(json.load(urllib.request.urlopen(request, timeout=30))["choices"][0]["message"]["role"])
    """))
    assert out.strip() == "assistant"


def test_image_metadata_and_contents(image):
    config = json.loads(docker("image", "inspect", "-f", "{{json .Config}}", image).stdout)
    ports, paths = CONTRACT["ports"], CONTRACT["paths"]
    assert set(config["ExposedPorts"]) == {f"{ports['http']}/tcp", f"{ports['https']}/tcp"}
    assert set(config["Volumes"]) == {paths["models"], paths["plugins"], paths["logs"]}
    assert config["Healthcheck"]["Test"][0] == "CMD" and "/health" in config["Healthcheck"]["Test"][-1]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["ORT_DISABLE_TELEMETRY"] == "1"
    assert env["MOLTBOT_PORT"] == str(ports["http"]) and env["MOLTBOT_HTTPS_PORT"] == str(ports["https"])
    assert env["MOLTBOT_MODELS_DIR"] == paths["models"] and env["MOLTBOT_PLUGINS_DIR"] == paths["plugins"]
    assert env["MOLTBOT_LOGS_DIR"] == paths["logs"] and env["MOLTBOT_DEFAULTS_DIR"] == paths["defaults"]
    # The entrypoint drops to the service user and runs tini as PID 1 (#22 item 10: it reaps what killed plugin
    # workers leave behind); test_runtime_runs_as_the_service_user checks PID 1 is tini under that uid.
    assert config["Entrypoint"] == ["/usr/local/bin/moltbot-entrypoint"]
    assert config["Cmd"] == ["moltbot", "serve"]
    size_mb = int(docker("image", "inspect", "-f", "{{.Size}}", image).stdout) / 1e6
    print(f"\n{image}: {size_mb:.0f} MB")
    assert size_mb < 800  # 455 MB of runtime and MiniLM, 254 MB for smollm2-135m-instruct int8 (#21)
    probe = textwrap.dedent("""
        import importlib.util, json, os, pathlib, onnxruntime
        print(json.dumps({
            "absent": [m for m in ("torch", "transformers", "optimum", "pip", "sentence_transformers")
                       if importlib.util.find_spec(m) is None],
            "providers": onnxruntime.get_available_providers(),
            "nvidia": pathlib.Path(onnxruntime.__file__).parents[1].joinpath("nvidia").exists(),
            "defaults": sorted(p.name for p in pathlib.Path("/opt/moltbot/defaults").iterdir()),
            "leftovers": [p for p in ("/src", "/staging", "/opt/build-tools", "/root/.cache",
                                      "/usr/local/share/ca-certificates/build-host", "/var/lib/apt/lists/lock")
                          if os.path.exists(p)],
        }))
    """)
    result = docker("run", "--rm", "--network", "none", "--entrypoint", "python", image, "-c", probe)
    found = json.loads(result.stdout)
    assert found["absent"] == ["torch", "transformers", "optimum", "pip", "sentence_transformers"]
    assert "CUDAExecutionProvider" not in found["providers"] and not found["nvidia"]
    assert found["defaults"] == DEFAULTS_FOLDER_CONTENTS
    assert found["leftovers"] == []
    history = docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", image).stdout
    assert "PIP_CERT" not in history and "ca-certificates/build-host" not in history
