"""Every PromQL expression of the rules and dashboards runs on a real Prometheus without errors.

Debian's prometheus scrapes a real node exporter, a DCGM exporter sample (no GPU here), a real Alertmanager
and itself, with the project's rule files loaded, so host, GPU and monitoring expressions must also return
data, and every metric name they use must exist in those processes; runtime expressions are run with live
runtime data by test_monitoring_integration.py.
"""

from __future__ import annotations

import pytest
import yaml

from monitoring_helpers import (DASHBOARDS_DIR, RULE_FILES, Alertmanager, Prometheus, WebhookReceiver,
                                dashboard_queries, metric_names, rule_expressions, serve_dcgm_sample,
                                start_node_exporter, wait_until)

# cAdvisor does not run here and the shared Docker engine has no metrics-addr: their container panels may
# be empty, but must still parse and run.
NO_DATA_HERE = ('job="cadvisor"', 'job="docker"')
# Metric names (or prefixes) that nothing here exposes, and why; their rules have promtool unit tests.
NOT_EXPOSED_HERE = {
    "node_systemd_": "node exporter's systemd collector (--collector.systemd) needs systemd and D-Bus",
    "container_": "cAdvisor does not run here",
    "engine_daemon_": "the Docker engine here has no metrics-addr",
}
EXPRESSIONS = rule_expressions() + [
    (f"{path.stem}: {title}", promql) for path in sorted(DASHBOARDS_DIR.glob("*.json"))
    for title, promql in dashboard_queries(path)
]


def meta_alerts() -> dict[str, str]:
    path = next(path for path in RULE_FILES if path.name == "meta.yml")
    return {rule["alert"]: rule["expr"] for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"] if "alert" in rule}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("prometheus-queries")
    dcgm = serve_dcgm_sample()
    receiver = WebhookReceiver()
    exporter = alertmanager = server = None
    try:
        exporter, exporter_address = start_node_exporter(work_dir)
        alertmanager = Alertmanager(work_dir, receiver)
        server = Prometheus(work_dir, {"node": [exporter_address], "dcgm": [f"127.0.0.1:{dcgm.server_port}"],
                                       "alertmanager": [alertmanager.address]}, RULE_FILES)
        for job in ("node", "dcgm", "alertmanager", "prometheus"):
            server.wait_for_up(job)
        # rate() over a few 1s scrapes, and a rule evaluation after that.
        wait_until(lambda: server.query("instance:node_cpu_utilisation:ratio_rate5m"), 30, "host recording rules")
        yield {"prometheus": server, "alertmanager": alertmanager}
    finally:
        if server:
            server.stop()
        if alertmanager:
            alertmanager.stop()
        receiver.stop()
        dcgm.shutdown()
        if exporter:
            exporter.stop()


@pytest.fixture(scope="module")
def prometheus(stack):
    return stack["prometheus"]


@pytest.mark.parametrize("name, expr", rule_expressions(), ids=[name for name, _ in rule_expressions()])
def test_rule_expression_runs(prometheus, name, expr):
    prometheus.query(expr)


def test_rules_are_loaded_and_evaluate_without_errors(prometheus):
    groups = prometheus.api("rules")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == len(rule_expressions())
    wait_until(lambda: all(rule.get("lastEvaluation", "").startswith("20") for group in prometheus.api("rules")["groups"]
                           for rule in group["rules"]), 20, "every rule evaluated")
    for group in prometheus.api("rules")["groups"]:
        for rule in group["rules"]:
            assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))


def test_gpu_alerts_pick_the_busy_gpu_of_the_dcgm_sample(prometheus):
    """GPU 1 of the sample runs at 98% with 97.7% memory used, GPU 0 is calm; no XID, both below 85 °C."""
    def gpus_with(alert: str) -> set[str]:
        return {item["labels"]["gpu"] for item in prometheus.alerts(alert)}

    wait_until(lambda: gpus_with("GpuMemoryNearlyFull"), 20, "GpuMemoryNearlyFull pending")
    assert gpus_with("GpuHighUtilization") == {"1"}
    assert gpus_with("GpuMemoryNearlyFull") == {"1"}
    assert gpus_with("GpuTemperatureHigh") == set()
    assert gpus_with("GpuXidError") == set()
    (alert,) = prometheus.alerts("GpuMemoryNearlyFull")
    assert alert["state"] == "pending"  # `for: 10m`
    assert alert["labels"]["modelName"] == "NVIDIA H200" and alert["labels"]["severity"] == "warning"


@pytest.mark.parametrize("dashboard", ["moltbot-host", "moltbot-gpu", "moltbot-runtime"])
def test_dashboard_queries_run(prometheus, dashboard):
    queries = dashboard_queries(DASHBOARDS_DIR / f"{dashboard}.json")
    assert queries
    for title, promql in queries:
        try:
            result = prometheus.query(promql)
        except AssertionError as error:
            pytest.fail(f"{dashboard} / {title}: {error}")
        if dashboard != "moltbot-runtime" and not any(prefix in promql for prefix in NO_DATA_HERE):
            assert result, f"{dashboard} / {title}: no data for {promql}"


def test_gpu_memory_ratio_from_dcgm_sample(prometheus):
    # gpu 1 of the sample: 139853 MiB used, 3342 MiB free.
    ratio = prometheus.value('gpu:framebuffer_used:ratio{gpu="1"}')
    assert ratio == pytest.approx(139853 / (139853 + 3342))


def not_exposed_here(metric: str) -> bool:
    return any(metric.startswith(prefix) for prefix in NOT_EXPOSED_HERE)


def test_every_exporter_metric_of_the_rules_and_dashboards_exists(prometheus):
    """node_*, DCGM_*, prometheus_*, alertmanager_*, process_*: names the real processes expose (a typo, or a
    name an exporter version renamed, would leave its alert silent for ever)."""
    # Counters with an `alertmanager` label appear once Prometheus has sent alerts there (Watchdog).
    wait_until(lambda: prometheus.query('prometheus_notifications_sent_total{job="prometheus"}'), 30,
               "Prometheus to send alerts to the Alertmanager")
    names = prometheus.metric_names()
    missing: dict[str, list[str]] = {}
    used_exceptions = set()
    for title, expr in EXPRESSIONS:
        for metric in metric_names(expr):
            if metric.startswith("moltbot_") or ":" in metric:
                continue  # test_monitoring_metric_names.py
            if not_exposed_here(metric):
                used_exceptions |= {prefix for prefix in NOT_EXPOSED_HERE if metric.startswith(prefix)}
                continue
            if metric not in names:
                missing.setdefault(metric, []).append(title)
    assert not missing, f"metrics no process here exposes: {missing}"
    assert used_exceptions == set(NOT_EXPOSED_HERE), "NOT_EXPOSED_HERE lists names no rule or panel uses"


def test_targets_carry_their_host(prometheus):
    hosts = {item["metric"]["job"]: item["metric"]["host"] for item in prometheus.query("up")}
    assert hosts == {"node": "127.0.0.1", "dcgm": "127.0.0.1", "alertmanager": "127.0.0.1", "prometheus": "127.0.0.1"}


def test_watchdog_reaches_alertmanager_and_only_the_heartbeat_receiver(stack):
    def watchdogs() -> list[dict]:
        return [item for item in stack["alertmanager"].alerts() if item["labels"]["alertname"] == "Watchdog"]

    (watchdog,) = wait_until(watchdogs, 30, "Watchdog in Alertmanager")
    assert watchdog["status"]["state"] == "active"
    assert [receiver["name"] for receiver in watchdog["receivers"]] == ["heartbeat"]
    assert watchdog["labels"]["severity"] == "none"


def test_meta_alerts_are_quiet_on_a_healthy_stack(prometheus):
    """Prometheus connected to its Alertmanager, every target up, samples ingested, target files readable."""
    alerts = meta_alerts()
    for name, expr in alerts.items():
        if name not in ("Watchdog", "MoltbotTargetMissing"):
            assert prometheus.query(expr) == [], name
    assert prometheus.value(alerts["Watchdog"]) == 1.0
    assert prometheus.value('prometheus_notifications_alertmanagers_discovered{job="prometheus"}') == 1.0


def test_no_runtime_target_is_caught_by_moltbot_target_missing(prometheus):
    """This Prometheus has no runtime target at all: the absent() alert is pending (its `for` is 10m)."""
    (alert,) = wait_until(lambda: prometheus.alerts("MoltbotTargetMissing"), 20, "MoltbotTargetMissing pending")
    assert alert["state"] == "pending"
    assert alert["labels"] == {"alertname": "MoltbotTargetMissing", "job": "moltbot", "severity": "critical"}


def test_an_unreadable_target_file_raises_prometheus_file_sd_read_errors(prometheus):
    broken = prometheus.work_dir / "targets" / "cadvisor-broken.yml"
    broken.write_text("- targets: [unclosed\n")
    try:
        (alert,) = wait_until(lambda: prometheus.alerts("PrometheusFileSDReadErrors"), 30,
                              "PrometheusFileSDReadErrors pending")
    finally:
        broken.unlink()
    assert alert["state"] == "pending"  # `for: 20m`
    assert alert["labels"]["job"] == "prometheus" and alert["labels"]["severity"] == "warning"
