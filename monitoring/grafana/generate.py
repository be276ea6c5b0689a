"""Generates the Grafana dashboards in monitoring/grafana/dashboards/ from code (grafana-foundation-sdk).

The committed JSON is what Grafana provisions; edit this file, then run `make monitoring-dashboards`
(or `python monitoring/grafana/generate.py`). `--check` exits 1 when the committed JSON is out of date.
Metric names: runtime/moltbot/metrics.py, node exporter, NVIDIA DCGM exporter; recording rules:
monitoring/prometheus/rules/*.yml.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dashboard_model
from grafana_foundation_sdk.models import prometheus as prometheus_model

DASHBOARDS_DIR = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = dashboard_model.DataSourceRef(type_val="prometheus", uid="${datasource}")
REF_IDS = "ABCDEFGHIJ"

# Selectors shared by many panels; $instance/$model/$gpu are the dashboards' template variables.
RUNTIME = 'job="moltbot", instance=~"$instance"'
API_ROUTES = 'route=~"/v1/.*", route!="/v1/ws"'
NODE = 'job="node", instance=~"$instance"'
REAL_FILESYSTEMS = 'fstype!~"tmpfs|ramfs|squashfs|overlay"'
PHYSICAL_NICS = 'device!~"lo|veth.*|docker.*|br-.*|virbr.*|cali.*|flannel.*|cni.*"'
GPU = 'job="dcgm", instance=~"$instance", gpu=~"$gpu"'
GPU_LEGEND = "{{Hostname}} GPU {{gpu}}"


def query(expr: str, legend: str = "", ref_id: str = "A", instant: bool = False) -> prometheus.Dataquery:
    target = prometheus.Dataquery().expr(expr).ref_id(ref_id).datasource(DATASOURCE)
    if legend:
        target = target.legend_format(legend)
    return target.instant() if instant else target


def graph(title: str, description: str, unit: str, queries: list[tuple[str, str]], span: int = 12,
          stacked: bool = False) -> timeseries.Panel:
    panel = (
        timeseries.Panel().title(title).description(description).datasource(DATASOURCE).unit(unit)
        .span(span).height(8).fill_opacity(10 if not stacked else 40)
        .legend(common_builders.VizLegendOptions().display_mode(common.LegendDisplayMode.TABLE)
                .placement(common.LegendPlacement.BOTTOM).show_legend(True).calcs(["mean", "max", "lastNotNull"]))
        .tooltip(common_builders.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI)
                 .sort(common.SortOrder.DESCENDING))
    )
    if stacked:
        panel = panel.stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL))
    for ref_id, (expr, legend) in zip(REF_IDS, queries):
        panel = panel.with_target(query(expr, legend, ref_id))
    return panel


def single_stat(title: str, description: str, unit: str, expr: str, span: int = 4,
                thresholds: list[tuple[float | None, str]] | None = None) -> stat.Panel:
    steps = thresholds or [(None, "green")]
    return (
        stat.Panel().title(title).description(description).datasource(DATASOURCE).unit(unit).span(span).height(4)
        .graph_mode(common.BigValueGraphMode.AREA).color_mode(common.BigValueColorMode.BACKGROUND)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))
        .thresholds(dashboard.ThresholdsConfig().mode(dashboard_model.ThresholdsMode.ABSOLUTE).steps(
            [dashboard_model.Threshold(value=value, color=color) for value, color in steps]))
        .with_target(query(expr))
    )


def datasource_variable() -> dashboard.DatasourceVariable:
    return dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")


def query_variable(name: str, label: str, metric: str) -> dashboard.QueryVariable:
    """A multi-select variable over the values of label `name` on `metric` ("All" matches every value)."""
    return (
        dashboard.QueryVariable(name).label(label).datasource(DATASOURCE)
        .query(f"label_values({metric}, {name})")
        .refresh(dashboard_model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dashboard_model.VariableSort.ALPHABETICAL_ASC)
        .multi(True).include_all(True).all_value(".*")
    )


def new_dashboard(uid: str, title: str, description: str) -> dashboard.Dashboard:
    return (
        dashboard.Dashboard(title).uid(uid).description(description).tags(["moltbot"])
        .refresh("30s").time("now-3h", "now").timezone("browser")
        .tooltip(dashboard_model.DashboardCursorSync.CROSSHAIR)
        .with_variable(datasource_variable())
    )


def runtime_dashboard() -> dashboard.Dashboard:
    def quantiles(metric: str, selector: str, by: str) -> list[tuple[str, str]]:
        return [
            (f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket{{{selector}}}[$__rate_interval])))",
             f"p{int(q * 100)} {{{{{by}}}}}")
            for q in (0.5, 0.95, 0.99)
        ]

    model = f'{RUNTIME}, model=~"$model"'
    return (
        new_dashboard("moltbot-runtime", "Moltbot runtime",
                      "Requests, errors, latency, token throughput, scheduler queues, models and plugins of "
                      "the Moltbot runtime (job=\"moltbot\").")
        .with_variable(query_variable("instance", "Instance", 'up{job="moltbot"}'))
        .with_variable(query_variable("model", "Model", 'moltbot_model_info{job="moltbot", instance=~"$instance"}'))
        .with_row(dashboard.Row("Overview"))
        .with_panel(single_stat("Runtimes up", "Scraped runtime processes that answer /metrics.", "none",
                                f"sum(up{{{RUNTIME}}})", thresholds=[(None, "red"), (1, "green")]))
        .with_panel(single_stat("Runtimes ready", "Processes whose /ready answers 200 (all models loaded, not draining).",
                                "none", f"sum(moltbot_ready{{{RUNTIME}}})", thresholds=[(None, "red"), (1, "green")]))
        .with_panel(single_stat("API requests/s", "Requests to /v1 routes per second.", "reqps",
                                f"sum(rate(moltbot_requests_total{{{RUNTIME}, route=~\"/v1/.*\"}}[$__rate_interval]))"))
        .with_panel(single_stat("5xx ratio", "Share of /v1 requests answered with a server error (5m, worst instance).",
                                "percentunit", f"max(moltbot:api_requests_5xx:ratio_rate5m{{{RUNTIME}}})",
                                thresholds=[(None, "green"), (0.01, "orange"), (0.05, "red")]))
        .with_panel(single_stat("429 ratio", "Share of /v1 requests refused because a queue was full (5m, worst instance).",
                                "percentunit", f"max(moltbot:api_requests_429:ratio_rate5m{{{RUNTIME}}})",
                                thresholds=[(None, "green"), (0.01, "orange"), (0.05, "red")]))
        .with_panel(single_stat("Startup time", "Seconds from process start to ready (slowest instance).", "s",
                                f"max(moltbot_startup_seconds{{{RUNTIME}}})"))
        .with_row(dashboard.Row("Requests"))
        .with_panel(graph("Request rate by route", "HTTP requests per second, by route pattern.", "reqps",
                          [(f"sum by (route) (rate(moltbot_requests_total{{{RUNTIME}}}[$__rate_interval]))", "{{route}}")]))
        .with_panel(graph("Responses by status", "/v1 responses per second, by HTTP status code.", "reqps",
                          [(f"sum by (status) (rate(moltbot_requests_total{{{RUNTIME}, route=~\"/v1/.*\"}}[$__rate_interval]))",
                            "{{status}}")], stacked=True))
        .with_panel(graph("Error ratios", "5xx and 429 shares of /v1 requests over 5 minutes, per instance "
                          "(recording rules; alert at 5%).", "percentunit",
                          [(f"moltbot:api_requests_5xx:ratio_rate5m{{{RUNTIME}}}", "5xx {{instance}}"),
                           (f"moltbot:api_requests_429:ratio_rate5m{{{RUNTIME}}}", "429 {{instance}}")]))
        .with_panel(graph("Requests in flight", "HTTP requests being handled right now.", "none",
                          [(f"sum by (instance) (moltbot_http_requests_in_flight{{{RUNTIME}}})", "{{instance}}")]))
        .with_panel(graph("Request latency", "p50/p95/p99 of request duration by route, WebSocket excluded "
                          "(alert: p95 above 30s).", "s",
                          quantiles("moltbot_request_duration_seconds", f"{RUNTIME}, {API_ROUTES}", "route"), span=24))
        .with_row(dashboard.Row("Generation"))
        .with_panel(graph("Time to first token", "p50/p95/p99 from admission to the first token, by model "
                          "(alert: p95 above 2s).", "s",
                          quantiles("moltbot_time_to_first_token_seconds", model, "model")))
        .with_panel(graph("Inter-token latency", "p50/p95/p99 between consecutive tokens of a request, by model.", "s",
                          quantiles("moltbot_inter_token_latency_seconds", model, "model")))
        .with_panel(graph("Generated tokens/s", "Tokens generated per second, by model.", "short",
                          [(f"sum by (model) (rate(moltbot_generation_tokens_total{{{model}}}[$__rate_interval]))",
                            "{{model}}")]))
        .with_panel(graph("Prompt tokens/s", "Prompt tokens processed per second, by model.", "short",
                          [(f"sum by (model) (rate(moltbot_prompt_tokens_total{{{model}}}[$__rate_interval]))",
                            "{{model}}")]))
        .with_row(dashboard.Row("Scheduler"))
        .with_panel(graph("Queued requests", "Requests admitted and waiting for a batch slot, with the queue "
                          "capacity (full queue: 429).", "none",
                          [(f"sum by (model) (moltbot_queued_requests{{{model}}})", "queued {{model}}"),
                           (f"sum by (model) (moltbot_max_queued_requests{{{model}}})", "capacity {{model}}")]))
        .with_panel(graph("Running requests", "Requests in the running batch, with the batch capacity.", "none",
                          [(f"sum by (model) (moltbot_running_requests{{{model}}})", "running {{model}}"),
                           (f"sum by (model) (moltbot_max_running_requests{{{model}}})", "capacity {{model}}")]))
        .with_panel(graph("Rejected requests", "Requests refused with 429 per second because the model's queue "
                          "was full.", "reqps",
                          [(f"sum by (model) (rate(moltbot_rejected_requests_total{{{model}}}[$__rate_interval]))",
                            "{{model}}")]))
        .with_panel(graph("Queue utilisation", "Queued over queue capacity per instance and model (alert: above "
                          "80% for 5m).", "percentunit",
                          [(f"moltbot:queue_utilisation:ratio{{{model}}}", "{{instance}} {{model}}")]))
        .with_row(dashboard.Row("Models"))
        .with_panel(table.Panel().title("Served models").description(
            "Models each instance serves, with task, type and ONNX Runtime provider.").datasource(DATASOURCE)
            .span(12).height(8)
            .with_target(query(f"moltbot_model_info{{{model}}}", instant=True).format(prometheus_model.PromQueryFormat.TABLE)))
        .with_panel(graph("Model load time", "Seconds the last load of each model took.", "s",
                          [(f"max by (instance, model) (moltbot_model_load_seconds{{{model}}})", "{{instance}} {{model}}")],
                          span=6))
        .with_panel(graph("Model load failures", "Model configs that failed to load, per process (alert on any).",
                          "none",
                          [(f"sum by (instance, model) (moltbot_model_load_failures_total{{{RUNTIME}}})",
                            "{{instance}} {{model}}")], span=6))
        .with_row(dashboard.Row("Plugins"))
        .with_panel(graph("Plugin calls", "Plugin executions per second by plugin and outcome (ok, error, "
                          "timeout, invalid).", "ops",
                          [(f"sum by (plugin, outcome) (rate(moltbot_plugin_calls_total{{{RUNTIME}}}[$__rate_interval]))",
                            "{{plugin}} {{outcome}}")], span=8))
        .with_panel(graph("Plugin error ratio", "Share of calls ending in error or timeout, by plugin (alert: "
                          "above 10% for 10m).", "percentunit",
                          [(f"sum by (plugin) (rate(moltbot_plugin_calls_total{{{RUNTIME}, outcome=~\"error|timeout\"}}"
                            f"[$__rate_interval])) / sum by (plugin) (rate(moltbot_plugin_calls_total{{{RUNTIME}}}"
                            f"[$__rate_interval]))", "{{plugin}}")], span=8))
        .with_panel(graph("Plugin duration p95", "95th percentile of plugin execution time, and plugins that "
                          "failed to load.", "s",
                          [(f"histogram_quantile(0.95, sum by (le, plugin) (rate(moltbot_plugin_duration_seconds_bucket"
                            f"{{{RUNTIME}}}[$__rate_interval])))", "p95 {{plugin}}")], span=8))
        .with_panel(graph("Plugin load errors", "Plugins that failed to load (start or reload), per process.", "none",
                          [(f"sum by (instance, plugin) (moltbot_plugin_load_errors_total{{{RUNTIME}}})",
                            "{{instance}} {{plugin}}")], span=24))
    )


def host_dashboard() -> dashboard.Dashboard:
    cpus = f'count by (instance) (node_cpu_seconds_total{{{NODE}, mode="idle"}})'
    return (
        new_dashboard("moltbot-host", "Host",
                      "CPU, memory, disks, network and OOM kills of the hosts (node exporter, job=\"node\"), and "
                      "per-container usage (cAdvisor, job=\"cadvisor\").")
        .with_variable(query_variable("instance", "Host", 'up{job="node"}'))
        .with_row(dashboard.Row("CPU and memory"))
        .with_panel(graph("CPU utilisation", "Busy share of all CPUs over 5m (recording rule; alert: above 80% "
                          "for 5m).", "percentunit",
                          [(f"instance:node_cpu_utilisation:ratio_rate5m{{{NODE}}}", "{{instance}}")]))
        .with_panel(graph("CPU by mode", "CPU seconds per second by mode, as a share of the host's CPUs.",
                          "percentunit",
                          [(f"sum by (instance, mode) (rate(node_cpu_seconds_total{{{NODE}, mode!=\"idle\"}}"
                            f"[$__rate_interval])) / on (instance) group_left {cpus}", "{{instance}} {{mode}}")],
                          stacked=True))
        .with_panel(graph("Load average", "1-minute load average against the number of CPUs.", "short",
                          [(f"node_load1{{{NODE}}}", "load1 {{instance}}"), (cpus, "CPUs {{instance}}")]))
        .with_panel(graph("Memory available", "Available memory as a share of total (recording rule; alert: "
                          "below 10% for 5m).", "percentunit",
                          [(f"instance:node_memory_available:ratio{{{NODE}}}", "{{instance}}")]))
        .with_panel(graph("Memory used", "Memory in use (total minus available) and total.", "bytes",
                          [(f"node_memory_MemTotal_bytes{{{NODE}}} - node_memory_MemAvailable_bytes{{{NODE}}}",
                            "used {{instance}}"),
                           (f"node_memory_MemTotal_bytes{{{NODE}}}", "total {{instance}}")]))
        .with_panel(graph("Memory pressure and OOM kills", "Share of time tasks waited for memory (PSI), and "
                          "processes killed by the OOM killer (alert on any).", "short",
                          [(f"rate(node_pressure_memory_waiting_seconds_total{{{NODE}}}[$__rate_interval])",
                            "PSI waiting {{instance}}"),
                           (f"increase(node_vmstat_oom_kill{{{NODE}}}[$__rate_interval])", "OOM kills {{instance}}")]))
        .with_row(dashboard.Row("Disks"))
        .with_panel(graph("Filesystem used", "Used share of each filesystem (alerts: full within 24h, below 5% "
                          "free).", "percentunit",
                          [(f"1 - node_filesystem_avail_bytes{{{NODE}, {REAL_FILESYSTEMS}}} / "
                            f"node_filesystem_size_bytes{{{NODE}, {REAL_FILESYSTEMS}}}", "{{instance}} {{mountpoint}}")]))
        .with_panel(graph("Filesystem free", "Free bytes for unprivileged users per filesystem.", "bytes",
                          [(f"node_filesystem_avail_bytes{{{NODE}, {REAL_FILESYSTEMS}}}", "{{instance}} {{mountpoint}}")]))
        .with_panel(graph("Disk throughput", "Bytes read and written per second by device.", "Bps",
                          [(f"rate(node_disk_read_bytes_total{{{NODE}}}[$__rate_interval])", "read {{instance}} {{device}}"),
                           (f"rate(node_disk_written_bytes_total{{{NODE}}}[$__rate_interval])",
                            "write {{instance}} {{device}}")]))
        .with_panel(graph("Disk busy", "Share of time each device was busy with I/O.", "percentunit",
                          [(f"rate(node_disk_io_time_seconds_total{{{NODE}}}[$__rate_interval])", "{{instance}} {{device}}")]))
        .with_row(dashboard.Row("Network"))
        .with_panel(graph("Network throughput", "Bytes received and sent per second by interface.", "Bps",
                          [(f"rate(node_network_receive_bytes_total{{{NODE}, {PHYSICAL_NICS}}}[$__rate_interval])",
                            "in {{instance}} {{device}}"),
                           (f"rate(node_network_transmit_bytes_total{{{NODE}, {PHYSICAL_NICS}}}[$__rate_interval])",
                            "out {{instance}} {{device}}")]))
        .with_panel(graph("Network errors and drops", "Receive and transmit errors and drops per second.", "pps",
                          [(f"rate(node_network_receive_errs_total{{{NODE}, {PHYSICAL_NICS}}}[$__rate_interval]) + "
                            f"rate(node_network_transmit_errs_total{{{NODE}, {PHYSICAL_NICS}}}[$__rate_interval])",
                            "errors {{instance}} {{device}}"),
                           (f"rate(node_network_receive_drop_total{{{NODE}, {PHYSICAL_NICS}}}[$__rate_interval]) + "
                            f"rate(node_network_transmit_drop_total{{{NODE}, {PHYSICAL_NICS}}}[$__rate_interval])",
                            "drops {{instance}} {{device}}")]))
        .with_row(dashboard.Row("Containers"))
        .with_panel(graph("Container CPU", "CPU seconds per second used by each container (cAdvisor).", "short",
                          [('sum by (instance, name) (rate(container_cpu_usage_seconds_total{job="cadvisor", name!=""}'
                            '[$__rate_interval]))', "{{instance}} {{name}}")]))
        .with_panel(graph("Container memory", "Working-set memory of each container (what the OOM killer "
                          "counts; cAdvisor).", "bytes",
                          [('sum by (instance, name) (container_memory_working_set_bytes{job="cadvisor", name!=""})',
                            "{{instance}} {{name}}")]))
        .with_panel(graph("Containers by state", "Containers per state as the Docker engine reports them "
                          "(dockerd metrics-addr, job=\"docker\").", "none",
                          [('sum by (instance, state) (engine_daemon_container_states_containers{job="docker"})',
                            "{{instance}} {{state}}")], span=24))
    )


def gpu_dashboard() -> dashboard.Dashboard:
    return (
        new_dashboard("moltbot-gpu", "GPU",
                      "NVIDIA GPUs of the GPU hosts from the DCGM exporter (job=\"dcgm\"): utilisation, memory, "
                      "temperature, power, clocks and XID errors.")
        .with_variable(query_variable("instance", "Host", 'DCGM_FI_DEV_GPU_UTIL{job="dcgm"}'))
        .with_variable(query_variable("gpu", "GPU", 'DCGM_FI_DEV_GPU_UTIL{job="dcgm", instance=~"$instance"}'))
        .with_row(dashboard.Row("Load"))
        .with_panel(graph("GPU utilisation", "Share of time a kernel ran on the GPU (alert: above 95% for 20m).",
                          "percent", [(f"DCGM_FI_DEV_GPU_UTIL{{{GPU}}}", GPU_LEGEND)]))
        .with_panel(graph("Memory copy utilisation", "Share of time device memory was read or written.", "percent",
                          [(f"DCGM_FI_DEV_MEM_COPY_UTIL{{{GPU}}}", GPU_LEGEND)]))
        .with_panel(graph("Framebuffer used", "Used share of GPU memory (recording rule; alert: above 95% for "
                          "10m).", "percentunit", [(f"gpu:framebuffer_used:ratio{{{GPU}}}", GPU_LEGEND)]))
        .with_panel(graph("Framebuffer memory", "GPU memory used and free.", "decmbytes",
                          [(f"DCGM_FI_DEV_FB_USED{{{GPU}}}", f"used {GPU_LEGEND}"),
                           (f"DCGM_FI_DEV_FB_FREE{{{GPU}}}", f"free {GPU_LEGEND}")]))
        .with_row(dashboard.Row("Health"))
        .with_panel(graph("Temperature", "GPU die temperature (alert: above 85 °C for 5m).", "celsius",
                          [(f"DCGM_FI_DEV_GPU_TEMP{{{GPU}}}", GPU_LEGEND)]))
        .with_panel(graph("Power draw", "Board power draw.", "watt", [(f"DCGM_FI_DEV_POWER_USAGE{{{GPU}}}", GPU_LEGEND)]))
        .with_panel(graph("SM clock", "Streaming multiprocessor clock; drops under load mean throttling.", "rothz",
                          [(f"DCGM_FI_DEV_SM_CLOCK{{{GPU}}}", GPU_LEGEND)]))
        .with_panel(graph("XID errors", "Number of the last XID error the driver reported, 0 when none (alert "
                          "on any).", "none", [(f"DCGM_FI_DEV_XID_ERRORS{{{GPU}}}", GPU_LEGEND)]))
    )


DASHBOARDS = {"moltbot-runtime": runtime_dashboard, "moltbot-host": host_dashboard, "moltbot-gpu": gpu_dashboard}


def render(uid: str) -> str:
    """The dashboard as the JSON text committed under dashboards/, with panel ids numbered in order."""
    model = json.loads(json.dumps(DASHBOARDS[uid]().build(), cls=JSONEncoder))
    for panel_id, panel in enumerate(model["panels"], start=1):
        panel["id"] = panel_id
    return json.dumps(model, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed dashboard differs")
    parser.add_argument("--output", type=Path, default=DASHBOARDS_DIR, help="folder for the JSON files")
    args = parser.parse_args(argv)
    stale = []
    for uid in DASHBOARDS:
        path = args.output / f"{uid}.json"
        text = render(uid)
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if stale:
        print("out of date (run monitoring/grafana/generate.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
