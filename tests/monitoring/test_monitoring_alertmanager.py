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
    assert "3 receivers" in result.stdout and "3 inhibit rules" in result.stdout


@pytest.mark.parametrize("labels, receiver", [
    (["severity=none", "alertname=Watchdog"], "heartbeat"),
    (["severity=critical", "alertname=MoltbotTargetMissing", "job=moltbot"], "on-call-pager"),
    (["severity=critical", "alertname=MoltbotDown"], "on-call-pager"),
    (["severity=warning", "alertname=HostHighCpuUsage"], "team-chat"),
    (["alertname=SomethingWithoutSeverity"], "team-chat"),
])
def test_routes_by_severity(labels, receiver):
    result = amtool("config", "routes", "test", f"--config.file={CONFIG}", *labels)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == receiver


def alert(name: str, severity: str, instance: str | None, job: str = "test") -> dict:
    labels = {"alertname": name, "severity": severity, "job": job}
    if instance:
        labels["instance"] = instance
    return {"labels": labels, "annotations": {"summary": f"{name} on {instance or job}"}}


def test_heartbeat_receiver_sends_nothing_until_configured():
    import yaml

    config = yaml.safe_load(CONFIG.read_text())
    (heartbeat,) = [receiver for receiver in config["receivers"] if receiver["name"] == "heartbeat"]
    assert set(heartbeat) == {"name"}
    (route,) = [route for route in config["route"]["routes"] if route["receiver"] == "heartbeat"]
    assert route["repeat_interval"] == "1m" and not route.get("continue")


def test_alertmanager_pages_criticals_chats_warnings_and_inhibits_warnings_under_criticals(tmp_path):
    receiver = WebhookReceiver()
    alertmanager = None
    try:
        alertmanager = Alertmanager(tmp_path, receiver)
        alertmanager.post_alerts([
            alert("MoltbotDown", "critical", "a:8080", job="moltbot"),
            alert("MoltbotQueueSaturated", "warning", "a:8080", job="moltbot"),  # same instance as a critical
            alert("HostHighCpuUsage", "warning", "h:9100", job="node"),
            alert("Watchdog", "none", None, job=""),  # to the heartbeat receiver: nothing sent
            alert("TargetDown", "warning", None, job="moltbot"),  # MoltbotDown of the same job inhibits it
            alert("TargetDown", "warning", None, job="docker"),
            # A critical without an instance must not inhibit the warnings without one (TargetDown of docker).
            alert("MoltbotTargetMissing", "critical", None, job="moltbot-canary"),
        ])
        wait_until(lambda: receiver.alert_names("/page") == {"MoltbotDown", "MoltbotTargetMissing"}
                   and receiver.alert_names("/chat") == {"HostHighCpuUsage", "TargetDown"}, 30,
                   "webhook notifications")
        assert [labels["job"] for labels in receiver.alert_labels("/chat") if labels["alertname"] == "TargetDown"] == [
            "docker"]
        states = {(item["labels"]["alertname"], item["labels"].get("job")): item for item in alertmanager.alerts()}
        for key in (("MoltbotQueueSaturated", "moltbot"), ("TargetDown", "moltbot")):
            assert states[key]["status"]["state"] == "suppressed", key
            assert states[key]["status"]["inhibitedBy"], key
        assert states[("MoltbotDown", "moltbot")]["status"]["state"] == "active"
        assert states[("TargetDown", "docker")]["status"]["state"] == "active"
        watchdog = states[("Watchdog", None)]
        assert watchdog["status"]["state"] == "active"
        assert [receiver["name"] for receiver in watchdog["receivers"]] == ["heartbeat"]
        assert "Watchdog" not in receiver.alert_names("/page") | receiver.alert_names("/chat")
    finally:
        if alertmanager:
            alertmanager.stop()
        receiver.stop()
