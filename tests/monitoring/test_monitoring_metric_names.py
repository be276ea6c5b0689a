"""The rules and dashboards use the runtime's metric and label names (runtime/moltbot/metrics.py), and every other
metric name they use belongs to one of the exporters Prometheus scrapes (whether those names exist is checked
against the real exporters in test_monitoring_queries.py)."""

from __future__ import annotations

import re

import pytest
from prometheus_client import Counter, Gauge, Histogram

from moltbot import metrics
from monitoring_helpers import DASHBOARDS_DIR, RULE_FILES, dashboard_queries, metric_names, rule_expressions

# Labels every target has (job, instance, and host from prometheus.yml's relabelling) or may carry from its
# file_sd group (gpu, on runtime targets): see monitoring/README.md, "Scrape targets".
TARGET_LABELS = {"job", "instance", "host", "gpu"}
METRIC = re.compile(r"\b(moltbot_[a-z_]+)\b(\{[^}]*\})?")
MATCHER_LABEL = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|on)\s*\(([^)]*)\)")


def runtime_series() -> dict[str, set[str]]:
    """Every series name the runtime exposes, with its label names."""
    series = {}
    for collector in vars(metrics).values():
        if not isinstance(collector, (Counter, Gauge, Histogram)):
            continue
        labels = set(collector._labelnames)
        if isinstance(collector, Counter):
            series[f"{collector._name}_total"] = labels
        elif isinstance(collector, Histogram):
            series[f"{collector._name}_bucket"] = labels | {"le"}
            series[f"{collector._name}_count"] = labels
            series[f"{collector._name}_sum"] = labels
        else:
            series[collector._name] = labels
    return series


EXPRESSIONS = rule_expressions() + [
    (f"{path.stem}: {title}", promql) for path in sorted(DASHBOARDS_DIR.glob("*.json"))
    for title, promql in dashboard_queries(path)
]


def test_runtime_series_are_read_from_metrics_py():
    series = runtime_series()
    assert series["moltbot_requests_total"] == {"route", "method", "status"}
    assert "le" in series["moltbot_time_to_first_token_seconds_bucket"]


@pytest.mark.parametrize("name, expr", [item for item in EXPRESSIONS if "moltbot_" in item[1]],
                         ids=[name for name, expr in EXPRESSIONS if "moltbot_" in expr])
def test_expression_uses_runtime_metric_and_label_names(name, expr):
    series = runtime_series()
    used_labels: set[str] = set()
    for metric, selector in METRIC.findall(expr):
        assert metric in series, f"{metric} is not exposed by runtime/moltbot/metrics.py"
        known = series[metric] | TARGET_LABELS
        for label in MATCHER_LABEL.findall(selector or ""):
            assert label in known, f"{metric} has no label {label!r}"
        used_labels |= known
    for grouping in GROUPING.findall(expr):
        for label in filter(None, (part.strip() for part in grouping.split(","))):
            assert label in used_labels, f"grouping by {label!r}, which none of the metrics has"


# Where each non-runtime metric name comes from: (prefix, source). Anything else in a rule or a dashboard is a
# typo or an exporter this list (and the monitoring README) does not know yet.
EXPORTER_PREFIXES = [
    ("node_", "node exporter"),
    ("DCGM_FI_", "NVIDIA DCGM exporter"),
    ("prometheus_", "Prometheus"),
    ("alertmanager_", "Alertmanager"),
    ("process_", "the process collector of Prometheus, Alertmanager and the exporters"),
    ("container_", "cAdvisor"),
    ("engine_daemon_", "dockerd"),
]
SYNTHETIC = {"up"}  # made by Prometheus for every target


def recording_rule_names() -> set[str]:
    import yaml

    return {rule["record"] for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"] if "record" in rule}


def test_metric_names_are_found_in_promql():
    assert metric_names(
        'sum by (job) (rate(a_total{route=~"/v1/.*"}[5m] offset 1h)) / on (job) group_left (x) b_total > bool 0.5'
    ) == {"a_total", "b_total"}
    assert metric_names('absent(up{job="moltbot"}) or vector(1) and time() - 24 * 3600 > 1e3') == {"up"}
    assert metric_names('label_replace(c, "host", "$1", "instance", "(.*):.*")  # d, e') == {"c"}


@pytest.mark.parametrize("name, expr", EXPRESSIONS, ids=[name for name, _ in EXPRESSIONS])
def test_every_metric_comes_from_a_known_source(name, expr):
    recorded = recording_rule_names()
    for metric in metric_names(expr):
        if metric.startswith("moltbot_"):
            continue  # test_expression_uses_runtime_metric_and_label_names
        if ":" in metric:
            assert metric in recorded, f"{metric} is not a recording rule of monitoring/prometheus/rules"
            continue
        assert metric in SYNTHETIC or any(metric.startswith(prefix) for prefix, _ in EXPORTER_PREFIXES), (
            f"{metric}: from none of the scraped exporters ({', '.join(p for p, _ in EXPORTER_PREFIXES)})")
