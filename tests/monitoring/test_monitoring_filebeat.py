"""filebeat.yml and the index template, checked against log files the runtime's own logging code writes.

Filebeat and Elasticsearch cannot be installed here (no Elastic repository or registry), so Filebeat's
parsing of the config, its harvesting and shipping are not exercised; the input paths, parser and
processors are applied to real runtime log lines by apply_filebeat_input.
"""

from __future__ import annotations

import glob
import json
import re
import subprocess
import sys

import pytest
import yaml

from monitoring_helpers import FILEBEAT_DIR, apply_filebeat_input, expand_filebeat_env

CONFIG = yaml.safe_load((FILEBEAT_DIR / "filebeat.yml").read_text())
TEMPLATE = json.loads((FILEBEAT_DIR / "moltbot-logs-template.json").read_text())
INPUTS = {item["id"]: item for item in CONFIG["filebeat.inputs"]}

# Writes rotated JSON log files with the runtime's logging setup (moltbot.logs.configure), in a child
# process so the test session's logging stays untouched.
WRITE_LOGS = """
import logging, sys
from pathlib import Path
from moltbot import logs
logs.configure("INFO", Path(sys.argv[1]), max_bytes=4000, backups=3)
access = logging.getLogger("moltbot.access")
for i in range(60):
    access.info("POST /v1/chat/completions 200", extra={"request_id": f"req-{i}", "method": "POST",
                "route": "/v1/chat/completions", "status": 200, "latency_ms": 12.5, "model": "tiny-chat",
                "prompt_tokens": 9, "completion_tokens": 16, "client": "127.0.0.1"})
try:
    raise RuntimeError("boom")
except RuntimeError:
    logging.getLogger("moltbot").exception("unhandled error", extra={"request_id": "req-x"})
"""


@pytest.fixture(scope="module")
def runtime_logs_dir(tmp_path_factory):
    logs_dir = tmp_path_factory.mktemp("moltbot-logs")
    subprocess.run([sys.executable, "-c", WRITE_LOGS, str(logs_dir)], check=True, timeout=60, capture_output=True)
    return logs_dir


def runtime_log_pattern(env: dict[str, str]) -> str:
    (path,) = INPUTS["moltbot-runtime-logs"]["paths"]
    return expand_filebeat_env(path, env)


def test_runtime_input_reads_the_log_file_and_its_rotations(runtime_logs_dir):
    names = sorted(path.name for path in runtime_logs_dir.iterdir())
    assert names == ["moltbot.log", "moltbot.log.1", "moltbot.log.2", "moltbot.log.3"]
    (runtime_logs_dir / "other.txt").write_text("not a runtime log\n")
    matched = glob.glob(runtime_log_pattern({"MOLTBOT_LOGS_DIR": str(runtime_logs_dir)}))
    assert sorted(path.rsplit("/", 1)[1] for path in matched) == names


def test_runtime_input_defaults_to_the_host_logs_dir_and_follows_the_container_mount():
    assert runtime_log_pattern({}) == "/data/moltbot/logs/moltbot.log*"
    assert runtime_log_pattern({"MOLTBOT_LOGS_DIR": "/app/logs"}) == "/app/logs/moltbot.log*"


def _mapped_fields(properties: dict, prefix: str = "") -> set[str]:
    fields = set()
    for name, mapping in properties.items():
        fields.add(prefix + name)
        fields |= _mapped_fields(mapping.get("properties", {}), f"{prefix}{name}.")
    return fields


def _leaves(event: dict, prefix: str = "") -> dict[str, object]:
    leaves = {}
    for key, value in event.items():
        if isinstance(value, dict):
            leaves.update(_leaves(value, f"{prefix}{key}."))
        else:
            leaves[prefix + key] = value
    return leaves


def test_runtime_lines_become_ecs_fields_that_the_index_template_maps(runtime_logs_dir):
    mapped = _mapped_fields(TEMPLATE["template"]["mappings"]["properties"])
    lines = [line for path in sorted(runtime_logs_dir.glob("moltbot.log*")) for line in path.read_text().splitlines()]
    assert len(lines) > 30  # the oldest lines rotated out (3 backups of 4000 bytes)
    events = [apply_filebeat_input(INPUTS["moltbot-runtime-logs"], line) for line in lines]
    for event in events:
        assert event["@timestamp"].year >= 2026
        assert event["log"]["level"] in {"INFO", "ERROR"} and event["log"]["logger"].startswith("moltbot")
        assert event["message"] and event["service"]["name"] == "moltbot"
        assert "time" not in event["moltbot"] and "level" not in event["moltbot"]
        for field, value in _leaves(event).items():
            # Anything not mapped must be a string (dynamic template: keyword), never a clash.
            assert field in mapped or isinstance(value, str), f"{field}={value!r} has no mapping"
    access = next(event for event in events if event["moltbot"].get("route") == "/v1/chat/completions")
    assert access["moltbot"]["status"] == 200 and access["moltbot"]["latency_ms"] == 12.5
    crash = next(event for event in events if event["log"]["level"] == "ERROR")
    assert "RuntimeError: boom" in crash["error"]["stack_trace"]


def test_container_input_adds_container_metadata_and_skips_the_runtime_duplicate():
    containers = INPUTS["docker-container-logs"]
    assert containers["paths"] == ["/var/lib/docker/containers/*/*.log"]
    assert containers["parsers"] == [{"container": {"stream": "all", "format": "docker"}}]
    processors = {kind: options for item in containers["processors"] for kind, options in item.items()}
    assert "add_docker_metadata" in processors
    runtime_image = re.compile(processors["drop_event"]["when"]["regexp"]["container.image.name"])
    for image in ("moltbot:latest", "registry.example.com/team/moltbot:0.1.0", "moltbot"):
        assert runtime_image.search(image), image
    for image in ("prom/prometheus:v2.42.0", "moltbot-exporter:1", "nvidia/dcgm-exporter:3.3.5"):
        assert not runtime_image.search(image), image


def test_host_metadata_is_added_to_every_event():
    assert any("add_host_metadata" in item for item in CONFIG["processors"])


def test_exactly_one_output_is_enabled_and_hosts_tls_and_secrets_come_from_the_environment():
    outputs = {key.split(".", 1)[1]: value for key, value in CONFIG.items() if key.startswith("output.")}
    assert set(outputs) == {"elasticsearch", "logstash"}
    enabled = {name for name, output in outputs.items() if expand_filebeat_env(str(output["enabled"]), {}) == "true"}
    assert enabled == {"elasticsearch"}
    switched = {name for name, output in outputs.items()
                if expand_filebeat_env(str(output["enabled"]), {"ELASTICSEARCH_ENABLED": "false",
                                                                 "LOGSTASH_ENABLED": "true"}) == "true"}
    assert switched == {"logstash"}
    for output in outputs.values():
        assert all(host.startswith("${") for host in output["hosts"])
        assert output["ssl.verification_mode"] == "full" and output["ssl.certificate_authorities"]
    assert outputs["elasticsearch"]["password"].startswith("${")
    assert outputs["elasticsearch"]["index"].startswith("moltbot-logs-")
    assert any(re.fullmatch(pattern.replace("*", ".*"), "moltbot-logs-2026.11.30")
               for pattern in TEMPLATE["index_patterns"])


def test_ansible_template_rendering_leaves_the_file_unchanged():
    """The Ansible filebeat role renders this file as a Jinja template: nothing in it may look like Jinja."""
    import jinja2

    text = (FILEBEAT_DIR / "filebeat.yml").read_text()
    rendered = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True).from_string(text).render()
    assert rendered == text
