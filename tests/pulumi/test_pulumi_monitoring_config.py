"""The monitoring configuration the Docker stacks upload, loaded by a real Prometheus and checked by amtool.

The monitoring images can't be pulled here, so Debian's Prometheus (`make system-deps`) runs the declared
command line on the uploaded /etc/prometheus tree (paths moved into a temp folder, listening on 127.0.0.1).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from pulumi_harness import run_stack
from real_engine import free_port

CONTAINER = "docker:index/container:Container"


def write_uploads(container, prefix: str, root: Path) -> None:
    for upload in container.inputs["uploads"]:
        assert upload["file"].startswith(prefix + "/"), upload["file"]
        path = root / upload["file"].removeprefix(prefix + "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(upload["content"])


def api(base: str, path: str) -> dict:
    with urllib.request.urlopen(base + path, timeout=5) as response:
        return json.loads(response.read())["data"]


def binary(name: str) -> str:
    found = shutil.which(name)
    assert found, f"{name} is missing: run `make system-deps`"
    return found


@pytest.mark.parametrize("stack, jobs", [
    ("dev", {"moltbot": "moltbot:8080", "node": "node-exporter:9100", "alertmanager": "alertmanager:9093"}),
    ("prod", {"moltbot": "moltbot:8080", "node": "node-exporter:9100", "alertmanager": "alertmanager:9093",
              "dcgm": "dcgm-exporter:9400"}),
])
def test_prometheus_runs_the_uploaded_configuration(stack, jobs, tmp_path):
    declared = run_stack(stack).one(CONTAINER, "monitoring-prometheus")
    config_dir, data_dir = tmp_path / "etc-prometheus", tmp_path / "data"
    write_uploads(declared, "/etc/prometheus", config_dir)
    port = free_port()
    command = [arg.replace("/etc/prometheus", str(config_dir)).replace("=/prometheus", f"={data_dir}")
               for arg in declared.inputs["command"]]
    assert f"--config.file={config_dir}/prometheus.yml" in command
    process = subprocess.Popen([binary("prometheus"), *command, f"--web.listen-address=127.0.0.1:{port}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "Prometheus did not get ready in 60 s"
            try:
                with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.5)

        # Every rule group of the uploaded rule files is loaded.
        loaded = {group["name"] for group in api(base, "/api/v1/rules")["groups"]}
        expected = {group["name"] for path in (config_dir / "rules").glob("*.yml")
                    for group in yaml.safe_load(path.read_text())["groups"]}
        assert expected and loaded == expected

        # file_sd picked up the stack's target lists: each job scrapes the container by its network alias.
        deadline = time.monotonic() + 30
        while True:
            targets = api(base, "/api/v1/targets")["activeTargets"]
            found = {t["labels"]["job"]: t["labels"]["instance"] for t in targets if t["labels"]["job"] in jobs}
            if found == jobs or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert found == jobs
        assert {t["labels"]["stack"] for t in targets if t["labels"]["job"] in jobs} == {stack}
        # One machine under one `host` label across its jobs, although each is reached under its own address.
        assert {t["labels"]["host"] for t in targets if t["labels"]["job"] in jobs} == {socket.gethostname()}
        alertmanagers = api(base, "/api/v1/alertmanagers")["activeAlertmanagers"]
        assert [a["url"] for a in alertmanagers] == ["http://alertmanager:9093/api/v2/alerts"]
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_alertmanager_upload_passes_amtool(tmp_path):
    declared = run_stack("dev").one(CONTAINER, "monitoring-alertmanager")
    write_uploads(declared, "/etc/alertmanager", tmp_path)
    result = subprocess.run([binary("amtool"), "check-config", str(tmp_path / "alertmanager.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_uploads_are_provisioning_files_and_dashboards(tmp_path):
    declared = run_stack("dev").one(CONTAINER, "monitoring-grafana")
    files = {u["file"]: u["content"] for u in declared.inputs["uploads"]}
    datasources = yaml.safe_load(files["/etc/grafana/provisioning/datasources/prometheus.yml"])["datasources"]
    assert datasources[0]["url"] == "${PROMETHEUS_URL}"
    provider = yaml.safe_load(files["/etc/grafana/provisioning/dashboards/moltbot.yml"])["providers"][0]
    dashboards = {f: c for f, c in files.items() if f.startswith(provider["options"]["path"] + "/")}
    assert dashboards, "the dashboard provider's folder holds the uploaded dashboards"
    for content in dashboards.values():
        assert json.loads(content)["uid"]
