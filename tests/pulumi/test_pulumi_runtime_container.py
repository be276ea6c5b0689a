"""The runtime container the dev stack declares really runs: same image, env, ports, volumes, healthcheck, limits.

The container's arguments are taken from what the program registered with the (mocked) Pulumi engine and
given to the real Docker engine, with two local changes: ports go to free ports on 127.0.0.1 and the named
volumes become temporary host folders, so the test touches nothing of a real deployment.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import time
import uuid
from pathlib import Path

import docker
import pytest

from pulumi_harness import REPO_ROOT, SECRETS, run_stack
from real_engine import free_port, http_body, http_get

pytestmark = pytest.mark.docker

PLUGINS_DIR = REPO_ROOT / "plugins"
READY_LINE = "AI Assistant service ready on port 8080"
# Every argument the program may give the runtime container; a new one must be carried over below.
TRANSLATED = {"name", "hostname", "image", "envs", "ports", "volumes", "uploads", "networksAdvanced",
              "healthcheck", "restart", "gpus", "cpus", "memory", "logDriver", "logOpts", "stopSignal",
              "stopTimeout", "destroyGraceSeconds", "labels", "wait", "waitTimeout"}
DURATION = re.compile(r"^(\d+)(ms|s|m)$")


def nanoseconds(duration: str) -> int:
    value, unit = DURATION.match(duration).groups()
    return int(value) * {"ms": 10**6, "s": 10**9, "m": 60 * 10**9}[unit]


def upload_archive(uploads: list[dict]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for upload in uploads:
            data = upload["content"].encode()
            entry = tarfile.TarInfo(upload["file"].lstrip("/"))
            entry.size = len(data)
            entry.mode = int(upload.get("permissions", "0644"), 8)
            entry.uid = int(upload.get("owner", "0"))
            archive.addfile(entry, io.BytesIO(data))
    return buffer.getvalue()


def test_declared_runtime_container_runs_on_the_real_engine(engine, runtime_image, tmp_path):
    declared = run_stack("dev").one("docker:index/container:Container", "moltbot-container").inputs
    assert set(declared) <= TRANSLATED, f"not carried over to the real run: {set(declared) - TRANSLATED}"
    assert declared["image"] == runtime_image

    suffix = uuid.uuid4().hex[:8]
    ports = {f"{int(p['internal'])}/tcp": ("127.0.0.1", free_port()) for p in declared["ports"]}
    volumes = {}
    for volume in declared["volumes"]:
        host_dir = tmp_path / Path(volume["containerPath"]).name
        host_dir.mkdir()
        volumes[str(host_dir)] = {"bind": volume["containerPath"], "mode": "ro" if volume["readOnly"] else "rw"}
    check = declared["healthcheck"]
    network = engine.networks.create(f"{declared['networksAdvanced'][0]['name']}-test-{suffix}", driver="bridge")
    aliases = declared["networksAdvanced"][0]["aliases"]
    container = None
    try:
        container = engine.containers.create(
            declared["image"],
            name=f"{declared['name']}-pulumi-test-{suffix}",
            hostname=declared["hostname"],
            environment=declared["envs"],
            ports=ports,
            volumes=volumes,
            network=network.name,
            networking_config={network.name: engine.api.create_endpoint_config(aliases=aliases)},
            healthcheck={
                "test": check["tests"],
                "interval": nanoseconds(check["interval"]),
                "timeout": nanoseconds(check["timeout"]),
                "retries": int(check["retries"]),
                "start_period": nanoseconds(check["startPeriod"]),
            },
            restart_policy={"Name": declared["restart"]},
            device_requests=[docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
            if declared.get("gpus") else None,
            nano_cpus=int(float(declared["cpus"]) * 10**9),
            mem_limit=f"{int(declared['memory'])}m",
            log_config=docker.types.LogConfig(type=declared["logDriver"], config=declared["logOpts"]),
            stop_signal=declared["stopSignal"],
            labels={label["label"]: label["value"] for label in declared["labels"]},
        )
        # Like the provider: each upload is a tar entry with its full path, extracted at / before the start.
        assert container.put_archive("/", upload_archive(declared["uploads"]))
        container.start()
        http_port = ports["8080/tcp"][1]
        base = f"http://127.0.0.1:{http_port}"

        deadline = time.monotonic() + 180
        while READY_LINE not in container.logs().decode(errors="replace"):
            container.reload()
            assert container.status in ("created", "running"), container.logs().decode(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "no ready line within 180 s:\n" + container.logs().decode()[-3000:]
            time.sleep(0.5)
        assert http_get(f"{base}/ready") == 200

        # The env carried the API keys (a Pulumi secret): /v1 needs one of them.
        assert http_get(f"{base}/v1/models") == 401
        assert http_get(f"{base}/v1/models", key=SECRETS["moltbot:apiKeys"].split(",")[1]) == 200

        # The uploads landed in the plugins volume (here a host folder), and the runtime found those plugins.
        for upload in declared["uploads"]:
            assert (tmp_path / upload["file"].removeprefix("/app/")).read_text() == upload["content"]
        plugin_names = {json.loads((PLUGINS_DIR / folder / "config.json").read_text())["name"]
                        for folder in {u["file"].split("/")[3] for u in declared["uploads"]
                                       if u["file"].endswith("/config.json")}}
        assert plugin_names, "the dev stack uploads the built-in plugins"
        listed = json.loads(http_body(f"{base}/v1/plugins", key=SECRETS["moltbot:apiKeys"].split(",")[0]))
        assert plugin_names <= {plugin["name"] for plugin in listed["data"]}

        # The declared healthcheck passes in this image (first probe after one interval).
        deadline = time.monotonic() + nanoseconds(check["interval"]) / 10**9 * 3 + 30
        while (health := engine.api.inspect_container(container.id)["State"]["Health"])["Status"] != "healthy":
            assert health["Status"] != "unhealthy" and time.monotonic() < deadline, \
                f"healthcheck {health['Status']}; last probes: {health['Log'][-2:]}"
            time.sleep(1)

        settings = engine.api.inspect_container(container.id)["HostConfig"]
        assert settings["RestartPolicy"]["Name"] == "unless-stopped"
        assert settings["NanoCpus"] == 2 * 10**9 and settings["Memory"] == 4096 * 1024**2
        assert (tmp_path / "logs" / "moltbot.log").stat().st_size > 0, "the runtime logs into the logs volume"

        # SIGTERM (the declared stop signal) drains and exits 0 within the declared stop timeout.
        container.stop(timeout=int(declared["stopTimeout"]))
        assert engine.api.inspect_container(container.id)["State"]["ExitCode"] == 0
    finally:
        if container is not None:
            container.remove(force=True)
        network.remove()
