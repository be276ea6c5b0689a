"""The rules and dashboards use the runtime's metric and label names (runtime/moltbot/metrics.py)."""

from __future__ import annotations

import re

import pytest
from prometheus_client import Counter, Gauge, Histogram

from moltbot import metrics
from monitoring_helpers import DASHBOARDS_DIR, dashboard_queries, rule_expressions

TARGET_LABELS = {"job", "instance"}
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
