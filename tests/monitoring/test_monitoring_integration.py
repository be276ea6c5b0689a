"""End to end with real components: a Moltbot runtime and node exporter scraped by Debian's Prometheus, which
evaluates the project's rules and sends alerts to a real Alertmanager that notifies a local webhook.

The one change to the shipped rules: MoltbotDown's `for: 1m` becomes 2s (with 1s scrape and evaluation
intervals), so stopping the runtime fires the alert within seconds instead of more than a minute. The rule's
expression, labels and annotations stay those of monitoring/prometheus/rules/moltbot.yml.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from monitoring_helpers import (DASHBOARDS_DIR, FILEBEAT_DIR, REPO, RULE_FILES, Alertmanager, Prometheus,
                                WebhookReceiver, apply_filebeat_input, dashboard_queries, free_port,
                                serve_dcgm_sample, start_node_exporter, wait_until, write_test_plugins)

MOLTBOT = REPO / ".venv" / "bin" / "moltbot"
READY_TIMEOUT = 300  # the first start in a fresh checkout makes the embedded default models (~1 min here)
CHAT_REQUESTS = 5
# Runtime dashboard panels that must show data once chat and embedding requests went through.
PANELS_WITH_DATA = [
    "Runtimes up", "Runtimes ready", "API requests/s", "5xx ratio", "Startup time", "Request rate by route",
    "Responses by status", "Error ratios", "Requests in flight", "Request latency", "Time to first token",
    "Inter-token latency", "Generated tokens/s", "Prompt tokens/s", "Queued requests", "Running requests",
    "Queue utilisation", "Served models", "Model load time", "variable instance", "variable model",
]


class Runtime:
    """`moltbot serve` on a free 127.0.0.1 port with temp logs, models and plugins dirs."""

    def __init__(self, work_dir: Path, defaults_dir: Path):
        self.port = free_port()
        self.logs_dir = work_dir / "logs"
        env = {key: value for key, value in os.environ.items() if not key.startswith("MOLTBOT_")}
        # The tests' defaults (tiny-chat and MiniLM, tests/conftest.py), as every other live server of the suite.
        env.update(MOLTBOT_LOGS_DIR=str(self.logs_dir), MOLTBOT_MODELS_DIR=str(work_dir / "models"),
                   MOLTBOT_PLUGINS_DIR=str(work_dir / "plugins"), MOLTBOT_DEFAULTS_DIR=str(defaults_dir))
        write_test_plugins(work_dir / "plugins")
        self.output: list[str] = []
        self.ready = threading.Event()
        self.process = subprocess.Popen([str(MOLTBOT), "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                                        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._read_output, daemon=True).start()
        if not self.ready.wait(READY_TIMEOUT) or self.process.poll() is not None:
            self.stop()
            pytest.fail(f"runtime not ready within {READY_TIMEOUT}s:\n" + "".join(self.output[-30:]))
        self.url = f"http://127.0.0.1:{self.port}"

    def _read_output(self) -> None:
        for line in self.process.stdout:
            self.output.append(line)
            if line.strip() == f"AI Assistant service ready on port {self.port}":
                self.ready.set()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(40)  # drains up to 30 s
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


def short_runtime_down_rules(work_dir: Path) -> list[Path]:
    rules_dir = work_dir / "rule-sources"
    rules_dir.mkdir()
    paths = []
    for path in RULE_FILES:
        rules = yaml.safe_load(path.read_text())
        for group in rules["groups"]:
            for rule in group["rules"]:
                if rule.get("alert") == "MoltbotDown":
                    rule["for"] = "2s"
        paths.append(rules_dir / path.name)
        paths[-1].write_text(yaml.safe_dump(rules, sort_keys=False))
    return paths


@pytest.fixture(scope="module")
def stack(tmp_path_factory, defaults_dir):
    work_dir = tmp_path_factory.mktemp("monitoring-integration")
    stopped = []
    try:
        exporter, exporter_address = start_node_exporter(work_dir)
        stopped.append(exporter.stop)
        receiver = WebhookReceiver()
        stopped.append(receiver.stop)
        alertmanager = Alertmanager(work_dir, receiver)
        stopped.append(alertmanager.stop)
        # A stand-in DCGM exporter on the same address as the runtime: to the rules, a GPU host.
        dcgm = serve_dcgm_sample()
        stopped.append(dcgm.shutdown)
        runtime = Runtime(work_dir, defaults_dir)
        stopped.append(runtime.stop)
        prometheus = Prometheus(work_dir, {"moltbot": [f"127.0.0.1:{runtime.port}"], "node": [exporter_address],
                                           "alertmanager": [alertmanager.address],
                                           "dcgm": [f"127.0.0.1:{dcgm.server_port}"]},
                                short_runtime_down_rules(work_dir))
        stopped.append(prometheus.stop)
        yield {"runtime": runtime, "prometheus": prometheus, "receiver": receiver, "dcgm": dcgm}
    finally:
        for stop in reversed(stopped):
            stop()


def test_prometheus_scrapes_the_runtime_and_node_exporter(stack):
    prometheus = stack["prometheus"]
    prometheus.wait_for_up("moltbot")
    prometheus.wait_for_up("node")
    assert prometheus.value('moltbot_ready{job="moltbot"}') == 1.0
    assert {item["metric"]["model"] for item in prometheus.query('moltbot_model_info{job="moltbot"}')} == {
        "tiny-chat", "all-minilm-l6-v2"}
    assert prometheus.value('node_vmstat_oom_kill{job="node"}') is not None


def test_request_counters_rise_after_traffic(stack):
    prometheus, runtime = stack["prometheus"], stack["runtime"]
    chats = 'sum(moltbot_requests_total{job="moltbot", route="/v1/chat/completions", status="200"})'
    tokens = 'sum(moltbot_generation_tokens_total{job="moltbot", model="tiny-chat"})'
    prometheus.wait_for_up("moltbot")
    chats_before = prometheus.value(chats) or 0.0
    tokens_before = prometheus.value(tokens) or 0.0
    with httpx.Client(base_url=runtime.url, timeout=60) as client:
        for i in range(CHAT_REQUESTS):
            answer = client.post("/v1/chat/completions", json={
                "model": "tiny-chat", "max_tokens": 8, "messages": [{"role": "user", "content": f"hello {i}"}]})
            assert answer.status_code == 200, answer.text
            if i == 0:  # let Prometheus see the new counters once, so rate() over them is not 0
                wait_until(lambda: prometheus.value(chats) == chats_before + 1, 30, "the first chat counted")
        answer = client.post("/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": ["a", "b"]})
        assert answer.status_code == 200, answer.text
    wait_until(lambda: prometheus.value(chats) == chats_before + CHAT_REQUESTS, 30,
               f"Prometheus to count {CHAT_REQUESTS} more chat completions")
    assert prometheus.value(tokens) >= tokens_before + CHAT_REQUESTS
    assert prometheus.value('sum(moltbot_requests_total{job="moltbot", route="/v1/embeddings"})') >= 1
    assert prometheus.value('sum(moltbot_time_to_first_token_seconds_count{job="moltbot"})') >= CHAT_REQUESTS


def test_runtime_dashboard_and_recording_rules_show_live_data(stack):
    prometheus = stack["prometheus"]
    queries = dict(dashboard_queries(DASHBOARDS_DIR / "moltbot-runtime.json"))

    def panels_without_data() -> list[str]:
        return [title for title, promql in queries.items()
                if title.rsplit(" [", 1)[0] in PANELS_WITH_DATA and not prometheus.query(promql)]

    missing, deadline = panels_without_data(), time.monotonic() + 30
    while missing and time.monotonic() < deadline:
        time.sleep(1)
        missing = panels_without_data()
    assert not missing, f"runtime dashboard panels without data: {missing}"
    for title, promql in queries.items():
        prometheus.query(promql)  # the others (plugins, rejections, failures) run without error too
    assert prometheus.value('sum(moltbot:api_requests:rate5m{route="/v1/chat/completions"})') > 0
    assert prometheus.value("max(moltbot:api_requests_5xx:ratio_rate5m)") == 0.0
    for group in prometheus.api("rules")["groups"]:
        for rule in group["rules"]:
            assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))


def test_plugin_calls_and_load_errors_reach_the_dashboard_and_the_alerts(stack):
    prometheus, runtime = stack["prometheus"], stack["runtime"]
    calls = 'sum(moltbot_plugin_calls_total{job="moltbot", plugin="echo"})'
    with httpx.Client(base_url=runtime.url, timeout=30) as client:
        for payload in ({"text": "a"}, {"text": "b"}, {"text": "c", "fail": True}):
            answer = client.post("/v1/plugins/echo/execute", json=payload)
            assert (answer.status_code == 200) == ("fail" not in payload), answer.text
            wait_until(lambda: prometheus.value(calls), 30, "plugin calls counted")  # see the first call alone
    wait_until(lambda: prometheus.value(calls) == 3, 30, "3 plugin calls counted")
    outcomes = {item["metric"]["outcome"]: float(item["value"][1]) for item in
                prometheus.query('moltbot_plugin_calls_total{job="moltbot", plugin="echo"}')}
    assert outcomes == {"ok": 2.0, "error": 1.0}
    queries = dict(dashboard_queries(DASHBOARDS_DIR / "moltbot-runtime.json"))
    for panel in ("Plugin calls [A]", "Plugin error ratio [A]", "Plugin duration p95 [A]", "Plugin load errors [A]"):
        wait_until(lambda: prometheus.query(queries[panel]), 30, f"data in {panel}")
    # The broken plugin's counter was 1 from the first scrape on: the `unless ... offset 30m` term catches it.
    alerts = wait_until(lambda: [item for item in prometheus.alerts("MoltbotPluginLoadFailed")
                                 if item["state"] == "firing"], 30, "MoltbotPluginLoadFailed firing")
    assert [item["labels"]["plugin"] for item in alerts] == ["broken"]


def test_runtime_log_file_fits_the_filebeat_pipeline(stack):
    runtime_input = next(item for item in yaml.safe_load((FILEBEAT_DIR / "filebeat.yml").read_text())["filebeat.inputs"]
                         if item["id"] == "moltbot-runtime-logs")
    lines = (stack["runtime"].logs_dir / "moltbot.log").read_text().splitlines()
    events = [apply_filebeat_input(runtime_input, line) for line in lines]
    access = [event for event in events if event["moltbot"].get("route") == "/v1/chat/completions"]
    assert len(access) >= CHAT_REQUESTS
    assert all(event["moltbot"]["status"] == 200 and event["log"]["logger"] == "moltbot.access" for event in access)
    assert any(event["moltbot"].get("model") == "tiny-chat" and "load_seconds" in event["moltbot"] for event in events)


def test_runtime_on_the_cpu_of_a_gpu_host_is_caught_by_the_host_join(stack):
    """The runtime (CPU here) and the DCGM stand-in share the address 127.0.0.1, so prometheus.yml gives both
    host="127.0.0.1": MoltbotGpuHostServingOnCpu goes pending for each served model. Once the DCGM target file
    names another host, the runtime's host has no GPU any more and the alert goes away."""
    prometheus = stack["prometheus"]
    providers = {item["metric"]["model"]: item["metric"]["provider"]
                 for item in prometheus.query('moltbot_model_info{job="moltbot"}')}
    assert providers == {"tiny-chat": "CPUExecutionProvider", "all-minilm-l6-v2": "CPUExecutionProvider"}

    def pending() -> dict[str, dict]:
        return {item["labels"]["model"]: item for item in prometheus.alerts("MoltbotGpuHostServingOnCpu")}

    alerts = wait_until(lambda: len(pending()) == 2 and pending(), 30, "MoltbotGpuHostServingOnCpu pending")
    assert set(alerts) == {"tiny-chat", "all-minilm-l6-v2"}
    for alert in alerts.values():
        assert alert["state"] == "pending"  # `for: 10m`
        assert alert["labels"]["host"] == "127.0.0.1" and alert["labels"]["severity"] == "warning"

    prometheus.set_targets("dcgm", [{"targets": [f"127.0.0.1:{stack['dcgm'].server_port}"],
                                     "labels": {"host": "gpu-elsewhere"}}])
    wait_until(lambda: prometheus.query('up{job="dcgm", host="gpu-elsewhere"}'), 30, "the relabelled DCGM target")
    wait_until(lambda: not pending(), 30, "MoltbotGpuHostServingOnCpu gone")


def test_stopping_the_runtime_fires_the_runtime_down_alert_and_pages(stack):
    prometheus, receiver = stack["prometheus"], stack["receiver"]
    assert prometheus.alerts("MoltbotDown") == []
    assert stack["runtime"].stop() == 0  # SIGTERM: drains and exits 0
    alerts = wait_until(lambda: [item for item in prometheus.alerts("MoltbotDown") if item["state"] == "firing"],
                        30, "MoltbotDown firing")
    assert alerts[0]["labels"]["severity"] == "critical"
    assert alerts[0]["annotations"]["runbook_url"] == "monitoring/RUNBOOK.md#moltbotdown"
    wait_until(lambda: "MoltbotDown" in receiver.alert_names("/page"), 30,
               "Alertmanager to page the on-call webhook")
