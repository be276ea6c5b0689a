"""Prometheus config and rules: promtool checks, promtool unit tests, and the conventions every alert follows."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from monitoring_helpers import PROMETHEUS_DIR, RULE_FILES, MONITORING, all_alerts, require_binary

UNIT_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
ALWAYS_FIRING = {"Watchdog"}  # has no "not firing" case; its unit test checks it fires with no input at all


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([require_binary("promtool"), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_rule_files_pass_promtool_check():
    result = promtool("check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_unit_tests_pass():
    assert UNIT_TESTS, "no promtool unit tests found"
    result = promtool("test", "rules", *map(str, UNIT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(UNIT_TESTS), result.stdout


def test_every_alert_is_unit_tested_firing_and_not_firing():
    firing, quiet = set(), set()
    for path in UNIT_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {alert["alert"] for alert in all_alerts()}
    assert names - firing == set(), "alerts without a firing unit test"
    assert names - quiet - ALWAYS_FIRING == set(), "alerts without a not-firing unit test"
    assert ALWAYS_FIRING & quiet == set(), "an always-firing alert expected quiet"


def test_watchdog_always_fires_and_is_routed_apart():
    (watchdog,) = [alert for alert in all_alerts() if alert["alert"] == "Watchdog"]
    assert watchdog["expr"].strip() == "vector(1)"
    assert "for" not in watchdog
    assert watchdog["labels"]["severity"] == "none"  # neither pages nor chats (alertmanager.yml: heartbeat)


def github_anchor(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_has_severity_texts_and_a_runbook_section():
    runbook = (MONITORING / "RUNBOOK.md").read_text()
    anchors = {github_anchor(line.lstrip("#")) for line in runbook.splitlines() if line.startswith("#")}
    alerts = all_alerts()
    assert len(alerts) >= 20
    for alert in alerts:
        name = alert["alert"]
        assert alert["labels"]["severity"] in ({"none"} if name in ALWAYS_FIRING else {"critical", "warning"}), name
        for key in ("summary", "description", "runbook_url"):
            assert alert["annotations"].get(key), f"{name} lacks {key}"
        page, _, anchor = alert["annotations"]["runbook_url"].partition("#")
        assert page == "monitoring/RUNBOOK.md", name
        assert anchor == name.lower(), f"{name}: runbook anchor {anchor!r}"
        assert anchor in anchors, f"{name}: no section '## {name}' in monitoring/RUNBOOK.md"


def test_issue_alerts_are_all_there():
    names = {alert["alert"] for alert in all_alerts()}
    assert {
        "HostHighCpuUsage", "HostMemoryPressure", "HostOomKill", "HostDiskWillFillIn24Hours", "MoltbotDown",
        "MoltbotNotReady", "MoltbotHighErrorRate", "MoltbotHighRequestLatency", "MoltbotHighTimeToFirstToken",
        "MoltbotQueueSaturated", "MoltbotRequestsRejected", "MoltbotModelLoadFailed", "MoltbotPluginErrors",
        "GpuHighUtilization", "GpuMemoryNearlyFull", "GpuTemperatureHigh", "GpuXidError",
    } <= names
    # Issue #12: meta-alerts, Prometheus and Alertmanager self-alerts, node-mixin basics, GPU host on the CPU.
    assert {
        "Watchdog", "TargetDown", "MoltbotTargetMissing", "PrometheusBadConfig", "PrometheusRuleFailures",
        "PrometheusNotConnectedToAlertmanagers", "PrometheusErrorSendingAlertsToSomeAlertmanagers",
        "PrometheusNotIngestingSamples", "PrometheusFileSDReadErrors", "AlertmanagerFailedReload",
        "AlertmanagerFailedToSendAlerts", "NodeFilesystemFilesFillingUp", "NodeFilesystemAlmostOutOfFiles",
        "NodeHighNumberConntrackEntriesUsed", "NodeClockSkewDetected", "NodeClockNotSynchronising",
        "NodeNetworkReceiveErrs", "NodeNetworkTransmitErrs", "NodeFileDescriptorLimit",
        "ProcessFileDescriptorsNearLimit", "NodeSystemdServiceFailed", "MoltbotGpuHostServingOnCpu",
    } <= names
    exprs = {alert["alert"]: alert["expr"] for alert in all_alerts()}
    assert 'absent(up{job="moltbot"})' in exprs["MoltbotTargetMissing"]
    assert 'node_systemd_unit_state{job="node", state="failed"}' in exprs["NodeSystemdServiceFailed"]
    assert "moltbot_model_info" in exprs["MoltbotGpuHostServingOnCpu"] and 'up{job="dcgm"}' in exprs[
        "MoltbotGpuHostServingOnCpu"]


def test_prometheus_config_passes_promtool_with_the_example_targets(tmp_path):
    """The config as shipped, with each targets/*.yml.example in place: every file_sd file is found and parsed."""
    deployed = tmp_path / "prometheus"
    shutil.copytree(PROMETHEUS_DIR, deployed)
    for example in (deployed / "targets").glob("*.yml.example"):
        example.rename(example.with_suffix(""))
    result = promtool("check", "config", "prometheus.yml", cwd=deployed)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stdout + result.stderr, result.stdout + result.stderr
    config = yaml.safe_load((deployed / "prometheus.yml").read_text())
    for job in config["scrape_configs"]:
        if "file_sd_configs" not in job:
            continue
        result = promtool("check", "service-discovery", "--timeout=1s", "prometheus.yml", job["job_name"],
                          cwd=deployed)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f'"job": "{job["job_name"]}"' in result.stdout, f"no target discovered for {job['job_name']}"


def test_prometheus_scrapes_runtime_node_gpu_container_and_monitoring_metrics():
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {"moltbot", "node", "dcgm", "prometheus", "alertmanager", "cadvisor", "docker"} <= jobs.keys()
    assert jobs["moltbot"]["metrics_path"] == "/metrics"
    assert jobs["prometheus"]["static_configs"] == [{"targets": ["localhost:9090"]}]
    assert config["rule_files"] == ["rules/*.yml"]
    # The file_sd contract of monitoring/README.md: job <job> reads targets/<job>*.yml, and the alerting
    # section the same file as the alertmanager job.
    for name, job in jobs.items():
        if name != "prometheus":
            assert job["file_sd_configs"] == [{"files": [f"targets/{name}*.yml"]}], name
    assert config["alerting"]["alertmanagers"] == [{"file_sd_configs": [{"files": ["targets/alertmanager*.yml"]}]}]


def test_every_job_gets_a_host_label():
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    for job in config["scrape_configs"]:
        assert any(rule.get("target_label") == "host" for rule in job.get("relabel_configs", [])), job["job_name"]


def test_host_label_is_the_groups_or_else_the_address_without_port(tmp_path):
    """What Prometheus makes of target groups with and without `host` (promtool check service-discovery)."""
    deployed = tmp_path / "prometheus"
    shutil.copytree(PROMETHEUS_DIR, deployed)
    (deployed / "targets" / "node.yml").write_text(yaml.safe_dump([
        {"targets": ["gpu-1.example.internal:9100", "10.0.0.7:9100", "[fd00::7]:9100", "bare-host"]},
        {"targets": ["node-exporter:9100"], "labels": {"host": "gpu-1.example.internal"}},
    ]))
    result = promtool("check", "service-discovery", "--timeout=1s", "prometheus.yml", "node", cwd=deployed)
    assert result.returncode == 0, result.stdout + result.stderr
    hosts = {target["labels"]["instance"]: target["labels"]["host"] for target in json.loads(result.stdout)}
    assert hosts == {
        "gpu-1.example.internal:9100": "gpu-1.example.internal", "10.0.0.7:9100": "10.0.0.7",
        "[fd00::7]:9100": "[fd00::7]", "bare-host:80": "bare-host", "node-exporter:9100": "gpu-1.example.internal",
    }


EXAMPLE_PORTS = {"moltbot": 8080, "node": 9100, "dcgm": 9400, "alertmanager": 9093}


@pytest.mark.parametrize("job, port", EXAMPLE_PORTS.items())
def test_example_target_files_show_the_contract(job, port):
    """One group per machine with its `host`, on the documented port; the README names the file."""
    groups = yaml.safe_load((PROMETHEUS_DIR / "targets" / f"{job}.yml.example").read_text())
    assert groups
    for group in groups:
        assert len(group["targets"]) == 1, group
        assert group["targets"][0].endswith(f":{port}"), group
        assert group["labels"]["host"] == group["targets"][0].rsplit(":", 1)[0], group
    readme = (MONITORING / "README.md").read_text()
    assert f"| `targets/{job}.yml` | `{job}` | {port}" in readme


def test_gpu_hosts_of_the_examples_have_a_dcgm_target_or_the_gpu_label():
    targets = PROMETHEUS_DIR / "targets"
    dcgm_hosts = {group["labels"]["host"] for group in yaml.safe_load((targets / "dcgm.yml.example").read_text())}
    runtime = yaml.safe_load((targets / "moltbot.yml.example").read_text())
    node_hosts = {group["labels"]["host"] for group in yaml.safe_load((targets / "node.yml.example").read_text())}
    assert dcgm_hosts <= {group["labels"]["host"] for group in runtime} <= node_hosts
    assert {group["labels"]["host"] for group in runtime if group["labels"].get("gpu") == "true"} == dcgm_hosts
