"""Grafana dashboards: the committed JSON is the generator's output, and the dashboards are complete."""

from __future__ import annotations

import importlib.util
import json

import yaml

from monitoring_helpers import DASHBOARDS_DIR, MONITORING, dashboard_queries

GENERATOR = MONITORING / "grafana" / "generate.py"


def load_generator():
    spec = importlib.util.spec_from_file_location("moltbot_dashboards_generator", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_dashboards_equal_generator_output():
    generator = load_generator()
    committed = sorted(path.name for path in DASHBOARDS_DIR.glob("*.json"))
    assert committed == sorted(f"{uid}.json" for uid in generator.DASHBOARDS)
    for uid in generator.DASHBOARDS:
        assert (DASHBOARDS_DIR / f"{uid}.json").read_text() == generator.render(uid), (
            f"{uid}.json is stale: run `make monitoring-dashboards` and commit the result")


def test_generator_check_mode_reports_a_stale_dashboard(tmp_path):
    generator = load_generator()
    assert generator.main(["--output", str(tmp_path)]) == 0
    assert generator.main(["--check", "--output", str(tmp_path)]) == 0
    (tmp_path / "moltbot-gpu.json").write_text("{}")
    assert generator.main(["--check", "--output", str(tmp_path)]) == 1


def test_dashboards_have_the_expected_titles_and_well_formed_panels():
    titles = {}
    for path in DASHBOARDS_DIR.glob("*.json"):
        model = json.loads(path.read_text())
        titles[model["title"]] = model
        assert model["uid"] == path.stem
        panels = [panel for panel in model["panels"] if panel["type"] != "row"]
        assert len({panel["id"] for panel in model["panels"]}) == len(model["panels"]), "duplicate panel ids"
        for panel in panels:
            assert panel["title"] and panel.get("description"), panel
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"], panel["title"]
            ref_ids = [target["refId"] for target in panel["targets"]]
            assert len(set(ref_ids)) == len(ref_ids) and all(ref_ids), panel["title"]
            assert all(target["expr"].strip() for target in panel["targets"]), panel["title"]
        assert model["templating"]["list"][0]["type"] == "datasource"
    assert set(titles) == {"Moltbot runtime", "Host", "GPU"}


def test_runtime_dashboard_covers_the_issue_panels():
    model = json.loads((DASHBOARDS_DIR / "moltbot-runtime.json").read_text())
    exprs = " ".join(query for _, query in dashboard_queries(DASHBOARDS_DIR / "moltbot-runtime.json"))
    for metric in ("moltbot_requests_total", "moltbot_request_duration_seconds_bucket",
                   "moltbot_time_to_first_token_seconds_bucket", "moltbot_inter_token_latency_seconds_bucket",
                   "moltbot_generation_tokens_total", "moltbot_queued_requests", "moltbot_running_requests",
                   "moltbot_model_load_seconds", "moltbot_plugin_calls_total", "moltbot_rejected_requests_total"):
        assert metric in exprs, metric
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (le, route) (rate(moltbot_request_duration_seconds_bucket" in exprs
    assert {variable["name"] for variable in model["templating"]["list"]} == {"datasource", "instance", "model"}


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards():
    datasources = yaml.safe_load((MONITORING / "grafana/provisioning/datasources/prometheus.yml").read_text())
    (prometheus,) = datasources["datasources"]
    assert prometheus["type"] == "prometheus" and prometheus["url"] == "${PROMETHEUS_URL}"
    providers = yaml.safe_load((MONITORING / "grafana/provisioning/dashboards/moltbot.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
