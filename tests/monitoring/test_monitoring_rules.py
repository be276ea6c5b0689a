"""Prometheus config and rules: promtool checks, promtool unit tests, and the conventions every alert follows."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from monitoring_helpers import PROMETHEUS_DIR, RULE_FILES, MONITORING, all_alerts, require_binary

UNIT_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))


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
    assert names - quiet == set(), "alerts without a not-firing unit test"


def github_anchor(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_has_severity_texts_and_a_runbook_section():
    runbook = (MONITORING / "RUNBOOK.md").read_text()
    anchors = {github_anchor(line.lstrip("#")) for line in runbook.splitlines() if line.startswith("#")}
    alerts = all_alerts()
    assert len(alerts) >= 20
    for alert in alerts:
        name = alert["alert"]
        assert alert["labels"]["severity"] in {"critical", "warning"}, name
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


def test_prometheus_scrapes_runtime_node_gpu_and_container_metrics():
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {"moltbot", "node", "dcgm", "cadvisor", "docker"} <= jobs.keys()
    assert jobs["moltbot"]["metrics_path"] == "/metrics"
    assert config["rule_files"] == ["rules/*.yml"]
