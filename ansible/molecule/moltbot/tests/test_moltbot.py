"""The runtime container runs as the reference article's `docker run`, with limits, keys, TLS and plugins."""

import json

import pytest

KEY = "molecule-key-1"


def http(host, url: str, *curl_args: str) -> int:
    return int(host.check_output(f"curl -ks -o /dev/null -w '%{{http_code}}' --max-time 10 {' '.join(curl_args)} {url}"))


@pytest.fixture(scope="module")
def container(host) -> dict:
    return json.loads(host.check_output("docker inspect moltbot"))[0]


def test_container_runs_with_restart_unless_stopped(container):
    assert container["State"]["Running"]
    assert container["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"


def test_image_was_loaded_from_the_archive(host, container):
    assert host.file("/var/cache/moltbot/image.tar").exists
    assert container["Config"]["Image"] == "moltbot:latest"


def test_volumes_are_the_three_data_directories(container):
    mounts = {m["Destination"]: m["Source"] for m in container["Mounts"]}
    assert mounts["/app/models"] == "/data/moltbot/models"
    assert mounts["/app/plugins"] == "/data/moltbot/plugins"
    assert mounts["/app/logs"] == "/data/moltbot/logs"


def test_ports_8080_and_8443_are_published(container):
    ports = container["HostConfig"]["PortBindings"]
    assert ports["8080/tcp"][0]["HostPort"] == "8080"
    assert ports["8443/tcp"][0]["HostPort"] == "8443"


def test_cpu_and_memory_limits(container):
    assert container["HostConfig"]["NanoCpus"] == 1_500_000_000
    assert container["HostConfig"]["Memory"] == 2 * 1024**3


def test_no_gpu_requested_without_a_gpu(container):
    assert not container["HostConfig"]["DeviceRequests"]


def test_health_and_ready(host):
    assert http(host, "http://127.0.0.1:8080/health") == 200
    assert http(host, "http://127.0.0.1:8080/ready") == 200


def test_https_with_the_shipped_certificate(host):
    assert http(host, "https://127.0.0.1:8443/health") == 200
    assert host.file("/data/moltbot/tls/tls.key").mode == 0o640


def test_api_keys_are_enforced(host):
    assert http(host, "http://127.0.0.1:8080/v1/models") == 401
    assert http(host, "http://127.0.0.1:8080/v1/models", "-H", f"'Authorization: Bearer {KEY}'") == 200
    assert http(host, "http://127.0.0.1:8080/v1/models", "-H", "'x-api-key: molecule-key-2'") == 200


def test_plugin_from_the_controller_is_served(host):
    assert host.file("/data/moltbot/plugins/code_assistant/plugin.py").uid == 10001
    plugins = host.check_output(f"curl -fs -H 'Authorization: Bearer {KEY}' http://127.0.0.1:8080/v1/plugins")
    assert "code_assistant" in plugins


def test_runtime_logs_land_in_the_data_directory(host):
    first_line = host.check_output("head -n 1 /data/moltbot/logs/moltbot.log")
    assert isinstance(json.loads(first_line), dict)
