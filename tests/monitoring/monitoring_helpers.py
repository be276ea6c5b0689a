"""Starts real monitoring components (Debian's prometheus, node exporter, alertmanager) on 127.0.0.1 for tests.

Every process listens on a free local port, keeps its data in a temp dir and is stopped by its fixture;
every wait is bounded.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, TypeVar

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "monitoring"
PROMETHEUS_DIR = MONITORING / "prometheus"
DASHBOARDS_DIR = MONITORING / "grafana" / "dashboards"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))

T = TypeVar("T")


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run `make system-deps` (scripts/install-system-deps.sh)")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(probe: Callable[[], T], timeout: float, what: str, interval: float = 0.5) -> T:
    """Calls probe until it returns something truthy; fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = probe()
            if last:
                return last
        except (OSError, ValueError) as error:  # not up yet, or an answer we cannot read yet
            last = error
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last result: {last!r})")


def http_get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


class ManagedProcess:
    """A child process with its output in a log file, stopped with SIGTERM (then SIGKILL) on stop()."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def assert_running(self) -> None:
        if self.process.poll() is not None:
            pytest.fail(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")

    def wait_ready(self, url: str, timeout: float) -> None:
        """Waits for `url` to answer 200; stops the process (no leftovers) if it never does."""
        try:
            wait_until(lambda: self.assert_running() or http_get(url)[0] == 200, timeout, f"{self.name} at {url}")
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 15) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()
        return self.process.returncode


def start_node_exporter(work_dir: Path) -> tuple[ManagedProcess, str]:
    address = f"127.0.0.1:{free_port()}"
    exporter = ManagedProcess("node-exporter", [require_binary("prometheus-node-exporter"),
                                                f"--web.listen-address={address}"], work_dir)
    exporter.wait_ready(f"http://{address}/metrics", 20)
    return exporter, address


def write_targets(work_dir: Path, job: str, targets: list[str] | list[dict]) -> Path:
    """targets/<job>.yml in file_sd's format: addresses (one group without labels) or the groups themselves."""
    groups = [{"targets": targets}] if all(isinstance(item, str) for item in targets) else targets
    (work_dir / "targets").mkdir(exist_ok=True)
    path = work_dir / "targets" / f"{job}.yml"
    partial = path.with_suffix(".partial")  # written aside and renamed: Prometheus never reads half a file
    partial.write_text(yaml.safe_dump(groups))
    partial.replace(path)
    return path


DCGM_SAMPLE = Path(__file__).parent / "samples" / "dcgm-exporter-metrics.prom"


def serve_dcgm_sample():
    """A stand-in DCGM exporter on 127.0.0.1: serves samples/dcgm-exporter-metrics.prom as its /metrics."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    body = DCGM_SAMPLE.read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def prometheus_test_config(work_dir: Path, address: str, targets: dict[str, list[str] | list[dict]],
                           rule_files: list[Path], interval: str = "1s") -> Path:
    """Writes the project's prometheus.yml with short intervals, its own address and file_sd target files.

    Scrape jobs, relabelling, rule files and service discovery stay those of monitoring/prometheus/prometheus.yml.
    """
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval=interval, scrape_timeout=interval, evaluation_interval=interval)
    for job in config["scrape_configs"]:
        job.pop("scrape_interval", None)
        if job["job_name"] == "prometheus":
            job["static_configs"] = [{"targets": [address]}]
    (work_dir / "rules").mkdir(exist_ok=True)
    for rule_file in rule_files:
        shutil.copy(rule_file, work_dir / "rules" / rule_file.name)
    (work_dir / "targets").mkdir(exist_ok=True)
    for job, job_targets in targets.items():
        write_targets(work_dir, job, job_targets)
    path = work_dir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class Prometheus:
    def __init__(self, work_dir: Path, targets: dict[str, list[str] | list[dict]], rule_files: list[Path]):
        self.work_dir = work_dir
        self.address = f"127.0.0.1:{free_port()}"
        self.url = f"http://{self.address}"
        config = prometheus_test_config(work_dir, self.address, targets, rule_files)
        self.process = ManagedProcess("prometheus", [
            require_binary("prometheus"), f"--config.file={config}", f"--web.listen-address={self.address}",
            f"--storage.tsdb.path={work_dir / 'data'}", "--storage.tsdb.retention.time=1h",
            # Firing alerts are re-sent every second, not every minute: the first send of an alert that fires
            # at once (Watchdog) may come before the Alertmanager is discovered, and is dropped.
            "--rules.alert.resend-delay=1s",
        ], work_dir)
        self.process.wait_ready(f"{self.url}/-/ready", 30)

    def api(self, path: str, **params: str) -> object:
        """GETs /api/v1/<path>; raises AssertionError with Prometheus' message when it reports an error."""
        status, body = http_get(f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}")
        answer = json.loads(body)
        assert answer.get("status") == "success", f"{path} {params}: HTTP {status}: {answer}"
        return answer["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def wait_for_up(self, job: str, timeout: float = 30) -> None:
        wait_until(lambda: self.value(f'min(up{{job="{job}"}})') == 1.0, timeout, f'up{{job="{job}"}} == 1')

    def alerts(self, name: str) -> list[dict]:
        return [alert for alert in self.api("alerts")["alerts"] if alert["labels"]["alertname"] == name]

    def set_targets(self, job: str, targets: list[str] | list[dict]) -> None:
        """Rewrites targets/<job>.yml; Prometheus' file_sd picks the change up by itself."""
        write_targets(self.work_dir, job, targets)

    def metric_names(self) -> set[str]:
        return set(self.api("label/__name__/values"))

    def stop(self) -> None:
        self.process.stop()


def rule_expressions() -> list[tuple[str, str]]:
    """(rule name, PromQL) for every recording and alerting rule."""
    expressions = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                expressions.append((rule.get("alert") or rule["record"], rule["expr"]))
    return expressions


_PROMQL_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_PROMQL_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_PROMQL_IDENTIFIER = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")
_PROMQL_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
                    "offset", "bool", "inf", "nan", "start", "end"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, keywords, labels or durations)."""
    text = re.sub(r"#[^\n]*", "", _PROMQL_STRING.sub('""', expr))
    text = re.sub(r"\{[^}]*\}", " ", text)      # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)    # ranges and subqueries
    text = _PROMQL_LABEL_LIST.sub(" ", text)      # by (...), on (...), group_left (...)
    return {name for name in _PROMQL_IDENTIFIER.findall(text) if name.lower() not in _PROMQL_KEYWORDS}


def all_alerts() -> list[dict]:
    return [rule for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"] if "alert" in rule]


# Values Grafana would put in for its built-in variables when a panel is drawn.
GRAFANA_BUILTINS = {"__rate_interval": "1m", "__interval": "30s", "__range": "1h"}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
_LABEL_VALUES = re.compile(r"^label_values\((.+),\s*(\w+)\)$", re.S)


def grafana_to_promql(expr: str, variables: set[str]) -> str:
    """PromQL that Prometheus can run for a dashboard expression: built-ins get typical values, the dashboard's
    own variables ".*" (their "All" value). An unknown variable is an error in the dashboard."""
    def substitute(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name in GRAFANA_BUILTINS:
            return GRAFANA_BUILTINS[name]
        assert name in variables, f"unknown variable ${name} in {expr!r}"
        return ".*"

    promql = _VARIABLE.sub(substitute, expr)
    label_values = _LABEL_VALUES.match(promql.strip())
    if label_values:  # Grafana's variable query function: the same series, grouped by the label
        promql = f"group by ({label_values.group(2)}) ({label_values.group(1)})"
    assert "$" not in promql, promql
    return promql


def _panels(panels: list[dict]) -> list[dict]:
    flat = []
    for panel in panels:
        flat.append(panel)
        flat.extend(_panels(panel.get("panels", [])))
    return flat


def dashboard_queries(path: Path) -> list[tuple[str, str]]:
    """(panel or variable title, PromQL ready for Prometheus) for every query of a dashboard JSON file."""
    model = json.loads(path.read_text())
    variables = {variable["name"] for variable in model["templating"]["list"]}
    queries = []
    for panel in _panels(model["panels"]):
        for target in panel.get("targets", []):
            queries.append((f'{panel["title"]} [{target["refId"]}]', grafana_to_promql(target["expr"], variables)))
    for variable in model["templating"]["list"]:
        if variable["type"] == "query":
            queries.append((f'variable {variable["name"]}', grafana_to_promql(variable["query"], variables)))
    return queries


FILEBEAT_DIR = MONITORING / "filebeat"
_ENV_REFERENCE = re.compile(r"\$\{(\w+)(?::([^}]*))?\}")
# Go reference-time tokens used by filebeat.yml's timestamp layouts, as strptime directives.
_GO_LAYOUT_TOKENS = [("2006", "%Y"), ("01", "%m"), ("02", "%d"), ("15", "%H"), ("04", "%M"), ("05", "%S"),
                     (".000", ".%f")]


def expand_filebeat_env(value: str, env: dict[str, str]) -> str:
    """Filebeat's ${NAME:default} expansion."""
    return _ENV_REFERENCE.sub(lambda m: env.get(m.group(1), m.group(2) if m.group(2) is not None else ""), value)


def go_layout_to_strptime(layout: str) -> str:
    converted = layout
    for token, directive in _GO_LAYOUT_TOKENS:
        converted = converted.replace(token, directive)
    assert not re.search(r"\d", converted), f"layout {layout!r} uses Go tokens this check does not know"
    return converted


def _pop_path(event: dict, dotted: str) -> object:
    node = event
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.get(key)
        if not isinstance(node, dict):
            raise KeyError(dotted)
    return node.pop(leaf)


def _put_path(event: dict, dotted: str, value: object) -> None:
    node = event
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


def apply_filebeat_input(input_config: dict, line: str) -> dict:
    """What Filebeat makes of one log line with this input's ndjson parser and processors.

    Covers the parser and processor types filebeat.yml uses (ndjson, add_fields, drop_fields, timestamp,
    rename); any other type fails, so the check cannot silently skip a step.
    """
    import datetime

    event: dict = {"message": line}
    for parser in input_config.get("parsers", []):
        (kind, options), = parser.items()
        assert kind == "ndjson", kind
        _put_path(event, options["target"], json.loads(line))
    for processor in input_config.get("processors", []):
        (kind, options), = processor.items()
        if kind == "add_fields":
            for key, value in options["fields"].items():
                _put_path(event, f'{options["target"]}.{key}', value)
        elif kind == "drop_fields":
            for field in options["fields"]:
                try:
                    _pop_path(event, field)
                except KeyError:
                    assert options.get("ignore_missing"), field
        elif kind == "timestamp":
            raw = _pop_path(event, options["field"])
            _put_path(event, options["field"], raw)
            parsed = None
            for layout in options["layouts"]:
                try:
                    parsed = datetime.datetime.strptime(raw, go_layout_to_strptime(layout))
                    break
                except ValueError:
                    continue
            assert parsed is not None, f"no layout of {options['layouts']} parses {raw!r}"
            event["@timestamp"] = parsed.replace(tzinfo=datetime.timezone.utc)
        elif kind == "rename":
            for field in options["fields"]:
                try:
                    value = _pop_path(event, field["from"])
                except KeyError:
                    assert options.get("ignore_missing"), field
                    continue
                _put_path(event, field["to"], value)
        else:
            raise AssertionError(f"processor {kind} is not covered by this check")
    return event


class WebhookReceiver:
    """Records the JSON bodies Alertmanager POSTs to it, by URL path."""

    def __init__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.received: list[tuple[str, dict]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append((self.path, json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alert_names(self, path: str) -> set[str]:
        return {labels["alertname"] for labels in self.alert_labels(path)}

    def alert_labels(self, path: str) -> list[dict]:
        return [alert["labels"] for got_path, body in self.received if got_path == path for alert in body["alerts"]]

    def stop(self) -> None:
        self.server.shutdown()


class Alertmanager:
    """The project's alertmanager.yml with its webhook URLs pointed at `receiver` and short group waits."""

    def __init__(self, work_dir: Path, receiver: WebhookReceiver):
        config = yaml.safe_load((MONITORING / "alertmanager" / "alertmanager.yml").read_text())
        for item in config["receivers"]:
            for webhook in item.get("webhook_configs", []):
                webhook["url"] = receiver.url + urllib.parse.urlparse(webhook["url"]).path
        for route in [config["route"], *config["route"].get("routes", [])]:
            if "group_wait" in route:
                route["group_wait"] = "1s"
        path = work_dir / "alertmanager.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.address = f"127.0.0.1:{free_port()}"
        self.url = f"http://{self.address}"
        self.process = ManagedProcess("alertmanager", [
            require_binary("prometheus-alertmanager"), f"--config.file={path}",
            f"--storage.path={work_dir / 'alertmanager-data'}", f"--web.listen-address={self.address}",
            "--cluster.listen-address=",
        ], work_dir)
        self.process.wait_ready(f"{self.url}/-/ready", 30)

    def post_alerts(self, alerts: list[dict]) -> None:
        request = urllib.request.Request(f"{self.url}/api/v2/alerts", data=json.dumps(alerts).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200

    def alerts(self) -> list[dict]:
        return json.loads(http_get(f"{self.url}/api/v2/alerts")[1])

    def stop(self) -> None:
        self.process.stop()


ECHO_PLUGIN = '''
from moltbot.plugins import BasePlugin


class EchoPlugin(BasePlugin):
    def execute(self, context):
        if context.input.get("fail"):
            raise RuntimeError("asked to fail")
        return {"text": context.input["text"]}
'''


def write_test_plugins(plugins_dir: Path) -> None:
    """`echo` (fails on request) and `broken` (a syntax error: counted as a plugin load error)."""
    for name, source in (("echo", ECHO_PLUGIN), ("broken", "def execute(:\n")):
        folder = plugins_dir / name
        folder.mkdir(parents=True)
        (folder / "__init__.py").write_text("")
        (folder / "plugin.py").write_text(source)
        (folder / "config.json").write_text(json.dumps({
            "name": name, "version": "1.0.0", "description": f"{name} plugin of the monitoring tests",
            "class": f"{name.capitalize()}Plugin", "enabled": True, "timeout": 5,
            "input_schema": {"type": "object", "required": ["text"], "properties": {
                "text": {"type": "string"}, "fail": {"type": "boolean"}}},
        }))
