"""alertmanager.yml: amtool checks, and Debian's real Alertmanager routing and inhibiting posted alerts."""

from __future__ import annotations

import subprocess

import pytest

from monitoring_helpers import MONITORING, Alertmanager, WebhookReceiver, require_binary, wait_until

CONFIG = MONITORING / "alertmanager" / "alertmanager.yml"


def amtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([require_binary("amtool"), *args], capture_output=True, text=True, timeout=60)


def test_config_passes_amtool_check_config():
    result = amtool("check-config", str(CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 receivers" in result.stdout and "2 inhibit rules" in result.stdout


@pytest.mark.parametrize("labels, receiver", [
    (["severity=critical", "alertname=MoltbotDown"], "on-call-pager"),
    (["severity=warning", "alertname=HostHighCpuUsage"], "team-chat"),
    (["alertname=SomethingWithoutSeverity"], "team-chat"),
])
def test_routes_by_severity(labels, receiver):
    result = amtool("config", "routes", "test", f"--config.file={CONFIG}", *labels)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == receiver


def alert(name: str, severity: str, instance: str) -> dict:
    return {"labels": {"alertname": name, "severity": severity, "instance": instance, "job": "test"},
            "annotations": {"summary": f"{name} on {instance}"}}


def test_alertmanager_pages_criticals_chats_warnings_and_inhibits_warnings_under_criticals(tmp_path):
    receiver = WebhookReceiver()
    alertmanager = None
    try:
        alertmanager = Alertmanager(tmp_path, receiver)
        alertmanager.post_alerts([
            alert("MoltbotDown", "critical", "a:8080"),
            alert("MoltbotQueueSaturated", "warning", "a:8080"),  # same instance as a critical: inhibited
            alert("HostHighCpuUsage", "warning", "h:9100"),
        ])
        wait_until(lambda: receiver.alert_names("/page") and receiver.alert_names("/chat"), 30,
                   "webhook notifications")
        assert receiver.alert_names("/page") == {"MoltbotDown"}
        assert receiver.alert_names("/chat") == {"HostHighCpuUsage"}
        states = {item["labels"]["alertname"]: item["status"] for item in alertmanager.alerts()}
        assert states["MoltbotQueueSaturated"]["state"] == "suppressed"
        assert states["MoltbotQueueSaturated"]["inhibitedBy"]
        assert states["MoltbotDown"]["state"] == "active"
    finally:
        if alertmanager:
            alertmanager.stop()
        receiver.stop()
