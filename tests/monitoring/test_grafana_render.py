"""The dashboards in a real Grafana over a real Prometheus scraping a live runtime under a short generated load,
opened in headless Chromium: no panel shows "No data" or an error; PNGs of each (docs/images/ with
MOLTBOT_SCREENSHOTS=docs, `make grafana-screenshots`).

Two Grafanas: one provisioned as the deployments do it (monitoring/grafana/provisioning/ with PROMETHEUS_URL,
the dashboards' JSON in the provider's folder), and a bare one standing for "the Grafana a team already runs",
where the JSON infra/pulumi/grafana_external.py declares is posted through Grafana's HTTP API with a
service-account token, as the pulumiverse-grafana provider does.

Grafana comes from MOLTBOT_TEST_GRAFANA_HOME (an unpacked Grafana release: bin/grafana, conf/, public/) or a
`grafana`/`grafana-server` on PATH with /usr/share/grafana (Grafana's Debian package). Neither Grafana's
packages, its release archives nor its container image can be obtained on the machines this project is built
and tested on (no Grafana in Debian, PyPI or npm; no container registry; no GitHub downloads), so there the
Grafana tests are skipped with that reason. What runs everywhere: the runtime, node exporter, a DCGM exporter
sample and Prometheus under the generated load, and the check that every panel's query returns data on it.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from monitoring_helpers import (
    DASHBOARDS_DIR,
    MONITORING,
    REPO,
    RULE_FILES,
    ManagedProcess,
    Prometheus,
    dashboard_queries,
    free_port,
    serve_dcgm_sample,
    start_node_exporter,
    write_test_plugins,
)

from tests.conftest import Server, start_server
from tests.ui.browser import launched_chromium, playwright_missing

sys.path.insert(0, str(REPO / "infra" / "pulumi"))
import grafana_external  # noqa: E402  (infra/pulumi/grafana_external.py: what the Pulumi program declares)

PROVISIONING = MONITORING / "grafana" / "provisioning"
ADMIN_PASSWORD = "grafana-test-password"
# Panels no test here can fill: cAdvisor and dockerd metrics (nothing exposes them on these machines).
NO_DATA_HERE = ('job="cadvisor"', 'job="docker"')
DASHBOARD_UIDS = ("moltbot-runtime", "moltbot-host", "moltbot-gpu")

# ---- Grafana ---------------------------------------------------------------------------------------------
def grafana_image() -> str:
    """The Grafana image the deployments pin (deploy/contract.json)."""
    return str(json.loads((REPO / "deploy" / "contract.json").read_text())["images"]["grafana"])


def find_grafana() -> tuple[str, list[str], Path | None] | None:
    """How to start a Grafana here: ("binary", command, home path) for an unpacked release in
    MOLTBOT_TEST_GRAFANA_HOME or Grafana's Debian package, ("image", docker command, None) when the Docker
    engine has the pinned image; None when there is no Grafana here."""
    home_env = os.environ.get("MOLTBOT_TEST_GRAFANA_HOME")
    home = Path(home_env) if home_env else Path("/usr/share/grafana")
    for binary, argv in (("grafana", ["server"]), ("grafana-server", [])):
        path = str(home / "bin" / binary) if home_env else shutil.which(binary)
        if path and Path(path).exists() and (home / "public").is_dir():
            return "binary", [path, *argv], home
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "image", "inspect", grafana_image()], capture_output=True,
                                 timeout=30).returncode == 0:
        return "image", [docker], None
    return None


GRAFANA_MISSING = (
    "no Grafana here: set MOLTBOT_TEST_GRAFANA_HOME to an unpacked Grafana release, install Grafana's Debian "
    "package (grafana, /usr/share/grafana), or load the pinned image (deploy/contract.json) into the Docker "
    "engine; neither Debian, PyPI, npm nor a container registry offers one on the machines this project is "
    "tested on")


@dataclass
class Grafana:
    process: ManagedProcess
    url: str

    def api(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> Any:
        auth = {"Authorization": f"Bearer {token}"} if token else {
            "Authorization": "Basic " + base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()}
        answer = httpx.request(method, self.url + path, headers=auth, timeout=30, **kwargs)
        assert answer.status_code < 300, f"{method} {path}: {answer.status_code} {answer.text[:500]}"
        return answer.json()

    def stop(self) -> None:
        self.process.stop()


GRAFANA_SETTINGS = {  # as GF_<SECTION>_<KEY> variables; the same in grafana.ini for a release or package
    "security": {"admin_user": "admin", "admin_password": ADMIN_PASSWORD},
    "analytics": {"reporting_enabled": "false", "check_for_updates": "false", "check_for_plugin_updates": "false"},
    "news": {"news_feed_enabled": "false"},
    "users": {"default_theme": "light", "allow_sign_up": "false"},
    "auth.anonymous": {"enabled": "false"},
    "log": {"mode": "console", "level": "warn"},
}


def start_grafana(work_dir: Path, prometheus_url: str | None) -> Grafana:
    """A Grafana on a free 127.0.0.1 port; provisioned as the deployments do it when `prometheus_url` is given:
    monitoring/grafana/provisioning/ as /etc/grafana/provisioning (the datasource file reads PROMETHEUS_URL),
    the dashboards' JSON in the provider's folder (/var/lib/grafana/dashboards/moltbot in the image)."""
    found = find_grafana()
    assert found is not None, GRAFANA_MISSING
    kind, command, home = found
    port = free_port()
    provisioning = work_dir / "provisioning"
    dashboards = work_dir / "dashboards" / "moltbot"
    for sub in ("datasources", "dashboards", "plugins", "alerting"):
        (provisioning / sub).mkdir(parents=True, exist_ok=True)
    dashboards.mkdir(parents=True)
    if prometheus_url:
        shutil.copy(PROVISIONING / "datasources" / "prometheus.yml", provisioning / "datasources")
        shutil.copy(PROVISIONING / "dashboards" / "moltbot.yml", provisioning / "dashboards")
        for path in DASHBOARDS_DIR.glob("*.json"):
            shutil.copy(path, dashboards)
    env_settings = {f"GF_{section.replace('.', '_').upper()}_{key.upper()}": value
                    for section, values in GRAFANA_SETTINGS.items() for key, value in values.items()}
    env_settings.update(GF_SERVER_HTTP_ADDR="127.0.0.1", GF_SERVER_HTTP_PORT=str(port),
                        PROMETHEUS_URL=prometheus_url or "")
    if kind == "image":
        # The deployments' container, on the host's network so that it reaches Prometheus on 127.0.0.1 (it
        # listens on 127.0.0.1 only); the files where the deployments put them, readable by its user (472).
        for path in [work_dir, *work_dir.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        argv = [*command, "run", "--rm", "--network", "host", "--name", f"moltbot-test-grafana-{port}",
                *[f"--env={key}={value}" for key, value in env_settings.items()],
                f"--volume={provisioning}:/etc/grafana/provisioning:ro",
                f"--volume={dashboards}:/var/lib/grafana/dashboards/moltbot:ro", grafana_image()]
        env = dict(os.environ)
    else:
        # A release or the package: its paths moved into work_dir, the provider's folder rewritten to it.
        provider_file = provisioning / "dashboards" / "moltbot.yml"
        if provider_file.exists():
            provider = yaml.safe_load(provider_file.read_text())
            for item in provider["providers"]:
                item["options"]["path"] = str(dashboards)
            provider_file.write_text(yaml.safe_dump(provider))
        env_settings.update(GF_PATHS_DATA=str(work_dir / "data"), GF_PATHS_LOGS=str(work_dir / "logs"),
                            GF_PATHS_PLUGINS=str(work_dir / "plugins"), GF_PATHS_PROVISIONING=str(provisioning))
        argv = [*command, f"--homepath={home}"]
        env = {**os.environ, **env_settings}
    process = ManagedProcess("grafana", argv, work_dir, env=env)
    url = f"http://127.0.0.1:{port}"
    process.wait_ready(f"{url}/api/health", 180)
    return Grafana(process, url)


# ---- the stack under load (runs everywhere) ---------------------------------------------------------------
def generate_load(url: str, seconds: float = 12.0) -> dict[str, int]:
    """A short mixed load that touches every runtime panel: chat (streamed and not) and embeddings from a few
    clients, plugin calls that succeed and fail, and bursts beyond the one-slot queue (429s)."""
    counts = {"chat": 0, "embeddings": 0, "plugin": 0, "rejected": 0}
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(number: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            i = 0
            while time.monotonic() < deadline:
                i += 1
                if number == 0:
                    answer = http.post("/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": [f"text {i}"]})
                    kind = "embeddings"
                elif number == 1:
                    answer = http.post("/v1/plugins/echo/execute", json={"text": "hi", "fail": i % 3 == 0})
                    kind = "plugin"
                else:
                    answer = http.post("/v1/chat/completions", json={
                        "model": "tiny-chat", "max_tokens": 24, "stream": i % 2 == 0,
                        "messages": [{"role": "user", "content": f"hello {number} {i}"}]})
                    kind = "chat"
                with lock:
                    if answer.status_code == 429:
                        counts["rejected"] += 1
                    elif answer.status_code < 300 or kind == "plugin":
                        counts[kind] += 1
                time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return counts


@dataclass
class Stack:
    runtime: Server
    prometheus: Prometheus
    load: dict[str, int]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, defaults_dir: Path) -> Iterator[Stack]:
    work_dir = tmp_path_factory.mktemp("grafana-render")
    stopped: list[Any] = []
    try:
        exporter, exporter_address = start_node_exporter(work_dir)
        stopped.append(exporter.stop)
        dcgm = serve_dcgm_sample()
        stopped.append(dcgm.shutdown)
        home = work_dir / "runtime"
        write_test_plugins(home / "plugins")
        (home / "models").mkdir(parents=True)
        (home / "models" / "broken.json").write_text('{"name": "broken", "source": "local", "path": "/nowhere"}')
        # One running and one queued request per model: the chat clients' bursts are partly rejected (429).
        runtime = start_server(home, env={"MOLTBOT_DEFAULT_MODELS": "on", "MOLTBOT_MAX_RUNNING": "1",
                                          "MOLTBOT_MAX_QUEUED": "1"})
        stopped.append(runtime.stop)
        runtime.wait_ready()
        host = {"host": "moltbot-test-host"}
        prometheus = Prometheus(work_dir, {
            "moltbot": [{"targets": [f"127.0.0.1:{runtime.port}"], "labels": host}],
            "node": [{"targets": [exporter_address], "labels": host}],
            "dcgm": [{"targets": [f"127.0.0.1:{dcgm.server_port}"], "labels": host}],
        }, RULE_FILES)
        stopped.append(prometheus.stop)
        prometheus.wait_for_up("moltbot")
        load = generate_load(runtime.url)
        yield Stack(runtime, prometheus, load)
    finally:
        for stop in reversed(stopped):
            stop()


def test_the_load_reaches_every_kind_of_request(stack: Stack) -> None:
    assert stack.load["chat"] > 5 and stack.load["embeddings"] > 5 and stack.load["plugin"] > 5
    assert stack.load["rejected"] > 0, stack.load  # the queue was full at times


@pytest.mark.parametrize("dashboard", DASHBOARD_UIDS)
def test_every_panel_query_returns_data_under_the_load(stack: Stack, dashboard: str) -> None:
    """What Grafana will show, at the PromQL level: every panel's query returns series (bar cAdvisor/dockerd)."""
    queries = [(title, promql) for title, promql in dashboard_queries(DASHBOARDS_DIR / f"{dashboard}.json")
               if not any(job in promql for job in NO_DATA_HERE)]

    def empty() -> list[str]:
        return [title for title, promql in queries if not stack.prometheus.query(promql)]

    missing, deadline = empty(), time.monotonic() + 60
    while missing and time.monotonic() < deadline:
        time.sleep(2)
        missing = empty()
    assert not missing, f"{dashboard}: panels without data under load: {missing}"


# ---- in Grafana (where one runs) -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = playwright_missing() or (GRAFANA_MISSING if find_grafana() is None else None)
    if reason:
        pytest.skip(reason)
    with launched_chromium() as browser:
        yield browser


@pytest.fixture(scope="module")
def provisioned_grafana(browser: Any, stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Grafana]:
    grafana = start_grafana(tmp_path_factory.mktemp("grafana-provisioned"), stack.prometheus.url)
    yield grafana
    grafana.stop()


@pytest.fixture(scope="module")
def existing_grafana(browser: Any, stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Grafana]:
    grafana = start_grafana(tmp_path_factory.mktemp("grafana-existing"), None)
    yield grafana
    grafana.stop()


def screenshot_dir(tmp_path: Path) -> Path:
    if os.environ.get("MOLTBOT_SCREENSHOTS") == "docs":
        target = REPO / "docs" / "images"
        target.mkdir(parents=True, exist_ok=True)
        return target
    return tmp_path


def panel_problems(browser: Any, grafana: Grafana, uid: str, screenshot: Path) -> dict[str, list[str]]:
    """Opens a dashboard (last 15 minutes, every panel in view) and returns the panels showing "No data" and
    those showing an error, after its queries have settled; saves a PNG of it. The selectors are Grafana's own
    test ids (@grafana/e2e-selectors 11.6: `data-testid Panel header <title>` on each panel's section,
    `data-testid Panel status error` on a panel whose query failed); the viewport is tall enough that every
    panel is in view (Grafana draws only those)."""
    auth = base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()
    context = browser.new_context(viewport={"width": 1600, "height": 4500},
                                  extra_http_headers={"Authorization": f"Basic {auth}"})
    try:
        page = context.new_page()
        page.goto(f"{grafana.url}/d/{uid}?orgId=1&from=now-15m&to=now&kiosk", wait_until="networkidle")
        page.wait_for_selector('[data-testid^="data-testid Panel header"]', timeout=60_000)
        page.wait_for_load_state("networkidle")
        time.sleep(2)  # the last panels draw
        problems: dict[str, list[str]] = {"no data": [], "error": []}
        for panel in page.locator('[data-testid^="data-testid Panel header"]').all():
            title = (panel.get_attribute("data-testid") or "").removeprefix("data-testid Panel header ").strip()
            if "No data" in panel.inner_text():
                problems["no data"].append(title)
            if panel.locator('[data-testid="data-testid Panel status error"]').count():
                problems["error"].append(title)
        page.screenshot(path=str(screenshot), full_page=True)
        return problems
    finally:
        context.close()


def allowed_without_data(uid: str) -> set[str]:
    """Panels of the dashboard with a query nothing here can fill (cAdvisor, dockerd)."""
    return {title.rsplit(" [", 1)[0] for title, promql in dashboard_queries(DASHBOARDS_DIR / f"{uid}.json")
            if any(job in promql for job in NO_DATA_HERE)}


@pytest.mark.parametrize("uid", DASHBOARD_UIDS)
def test_provisioned_dashboards_render_with_data(browser: Any, provisioned_grafana: Grafana, uid: str,
                                                 tmp_path: Path) -> None:
    found = provisioned_grafana.api("GET", f"/api/dashboards/uid/{uid}")
    assert found["meta"]["provisioned"] and found["meta"]["folderTitle"] == "Moltbot"
    problems = panel_problems(browser, provisioned_grafana, uid, screenshot_dir(tmp_path) / f"grafana-{uid}.png")
    assert problems["error"] == [], problems
    assert set(problems["no data"]) <= allowed_without_data(uid), problems


def test_the_json_pulumi_declares_renders_in_an_existing_grafana(browser: Any, existing_grafana: Grafana,
                                                                 stack: Stack, tmp_path: Path) -> None:
    grafana = existing_grafana
    account = grafana.api("POST", "/api/serviceaccounts", json={"name": "moltbot-pulumi", "role": "Admin"})
    token = grafana.api("POST", f"/api/serviceaccounts/{account['id']}/tokens", json={"name": "pulumi"})["key"]
    # As grafana_external.ExistingGrafana declares them: the folder, the data source, each dashboard.
    grafana.api("POST", "/api/folders", token, json={"uid": grafana_external.FOLDER_UID, "title": "Moltbot"})
    grafana.api("POST", "/api/datasources", token, json={
        "name": grafana_external.DATASOURCE_NAME, "uid": grafana_external.DATASOURCE_UID, "type": "prometheus",
        "access": "proxy", "url": stack.prometheus.url, "jsonData": grafana_external.DATASOURCE_JSON})
    paths = grafana_external.dashboards_for(DASHBOARDS_DIR, "docker", gpu=True)
    for path in paths:
        model = json.loads(grafana_external.dashboard_json(path, grafana_external.DATASOURCE_UID))
        grafana.api("POST", "/api/dashboards/db", token, json={
            "dashboard": model, "folderUid": grafana_external.FOLDER_UID, "overwrite": True})
    for path in paths:
        uid = json.loads(path.read_text())["uid"]
        problems = panel_problems(browser, grafana, uid, tmp_path / f"existing-{uid}.png")
        assert problems["error"] == [], problems
        assert set(problems["no data"]) <= allowed_without_data(uid), problems


STUB_GRAFANA = """#!{python}
# Stands in for Grafana's server in test_start_grafana_provisions_as_the_deployments_do: records its arguments
# and environment, answers /api/health. Not Grafana: it checks only how this file starts one.
import json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
with open(os.path.join(os.environ["GF_PATHS_DATA"] + "-stub.json"), "w") as out:
    env = {{k: v for k, v in os.environ.items() if k.startswith(("GF_", "PROM"))}}
    json.dump({{"argv": sys.argv[1:], "env": env}}, out)
class Health(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"{{}}")
    def log_message(self, *args):
        pass
HTTPServer(("127.0.0.1", int(os.environ["GF_SERVER_HTTP_PORT"])), Health).serve_forever()
"""


def test_start_grafana_provisions_as_the_deployments_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness itself, with a stub server in place of Grafana (runs everywhere): the deployments'
    provisioning files, the dashboards in the provider's folder, the settings Grafana reads."""
    home = tmp_path / "grafana-home"
    (home / "bin").mkdir(parents=True)
    (home / "public").mkdir()
    stub = home / "bin" / "grafana"
    stub.write_text(STUB_GRAFANA.format(python=sys.executable))
    stub.chmod(0o755)
    monkeypatch.setenv("MOLTBOT_TEST_GRAFANA_HOME", str(home))
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    grafana = start_grafana(work_dir, "http://127.0.0.1:9999")
    try:
        recorded = json.loads((work_dir / "data-stub.json").read_text())
    finally:
        grafana.stop()
    assert recorded["argv"] == ["server", f"--homepath={home}"]
    env = recorded["env"]
    assert env["PROMETHEUS_URL"] == "http://127.0.0.1:9999" and env["GF_SERVER_HTTP_ADDR"] == "127.0.0.1"
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == ADMIN_PASSWORD and env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    provisioning = Path(env["GF_PATHS_PROVISIONING"])
    assert (provisioning / "datasources" / "prometheus.yml").read_text() == (
        PROVISIONING / "datasources" / "prometheus.yml").read_text()
    provider = yaml.safe_load((provisioning / "dashboards" / "moltbot.yml").read_text())["providers"][0]
    shipped = yaml.safe_load((PROVISIONING / "dashboards" / "moltbot.yml").read_text())["providers"][0]
    folder = Path(provider["options"].pop("path"))
    shipped["options"].pop("path")
    assert provider == shipped  # only the folder moved
    assert sorted(p.name for p in folder.glob("*.json")) == sorted(p.name for p in DASHBOARDS_DIR.glob("*.json"))
