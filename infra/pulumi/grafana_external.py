"""ExistingGrafana: the dashboards declared in a Grafana the team already runs, with the pulumiverse-grafana provider.

Besides (or instead of) the bundled Grafana container, a stack with `moltbot:externalGrafanaUrl` and the secret
`moltbot:externalGrafanaToken` (a Grafana service-account token with the Editor role, or Admin when the data
source is declared too) gets, in that Grafana:

- a folder (`moltbot:externalGrafanaFolder`, default "Moltbot", uid `moltbot`);
- a Prometheus data source when `moltbot:externalGrafanaPrometheusUrl` is set (the Prometheus that scrapes the
  runtimes, as that Grafana reaches it), uid `moltbot-prometheus`, preselected in the dashboards' `datasource`
  picker; without it the picker starts on that Grafana's default Prometheus data source;
- each dashboard of monitoring/grafana/dashboards/ the stack's platform ships (the same generated JSON the
  bundled Grafana and the Kubernetes ConfigMaps get), overwriting an older version of the same uid.

The same JSON, posted through Grafana's HTTP API, is what tests/monitoring/test_grafana_render.py renders in a
real Grafana where one can run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pulumi
import pulumiverse_grafana as grafana

from stack_config import GPU_DASHBOARD, HOST_DASHBOARD, ConfigError, Settings, require_secret

KEYS = ("externalGrafanaUrl", "externalGrafanaToken", "externalGrafanaFolder", "externalGrafanaPrometheusUrl")
FOLDER_UID = "moltbot"
DATASOURCE_UID = "moltbot-prometheus"
DATASOURCE_NAME = "Moltbot Prometheus"
# As monitoring/grafana/provisioning/datasources/prometheus.yml: the scrape interval, so $__rate_interval fits it.
DATASOURCE_JSON = {"timeInterval": "15s", "httpMethod": "POST"}


@dataclass(frozen=True)
class ExternalGrafana:
    url: str
    token: pulumi.Output  # secret
    folder: str
    prometheus_url: str | None
    dashboards: list[Path]


def dashboards_for(dashboards_dir: Path, platform: str, gpu: bool) -> list[Path]:
    """The dashboards a stack ships: the GPU one on GPU stacks only; on Kubernetes not the host one (nodes
    belong to the cluster's own monitoring), as the ConfigMaps of k8s_dashboards.py."""
    if not dashboards_dir.is_dir():
        raise ConfigError(f"moltbot:monitoringDir: Grafana's dashboards folder {dashboards_dir} is missing")
    skip = (set() if gpu else {GPU_DASHBOARD}) | ({HOST_DASHBOARD} if platform != "docker" else set())
    return [path for path in sorted(dashboards_dir.glob("*.json")) if path.name not in skip]


def dashboard_json(path: Path, datasource_uid: str | None = None) -> str:
    """A dashboard as Grafana gets it: the committed JSON, with the `datasource` picker preselecting
    `datasource_uid` when given (the data source this program declares)."""
    document: dict[str, Any] = json.loads(path.read_text())
    if datasource_uid:
        for variable in document.get("templating", {}).get("list", []):
            if variable.get("type") == "datasource" and variable.get("name") == "datasource":
                variable["current"] = {"selected": True, "text": DATASOURCE_NAME, "value": datasource_uid}
    return json.dumps(document, sort_keys=True)


def _http_url(key: str, raw: str) -> str:
    parsed = urlparse(raw)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(f"moltbot:{key}: {raw!r} is not an http(s) URL (e.g. https://grafana.example.com)")
    if parsed.username or parsed.password:
        raise ConfigError(f"moltbot:{key}: put no credentials in the URL; the token goes in "
                          "moltbot:externalGrafanaToken (a secret)")
    return raw.rstrip("/")


def load(settings: Settings, config: pulumi.Config | None = None) -> ExternalGrafana | None:
    """The external Grafana of the stack's config, or None when moltbot:externalGrafanaUrl is not set."""
    config = config or pulumi.Config("moltbot")
    raw_url = config.get("externalGrafanaUrl")
    if not raw_url:
        others = [key for key in KEYS[1:] if config.get(key) is not None]
        if others:
            raise ConfigError(f"moltbot:{others[0]} is set but moltbot:externalGrafanaUrl is not: set the URL of "
                              "the Grafana to declare the dashboards in, or remove the other externalGrafana keys")
        return None
    url = _http_url("externalGrafanaUrl", raw_url)
    token = config.get_secret("externalGrafanaToken")
    if token is None:
        raise ConfigError("moltbot:externalGrafanaToken: required with moltbot:externalGrafanaUrl; a Grafana "
                          "service-account token, set with `pulumi config set --secret moltbot:externalGrafanaToken`")
    require_secret("externalGrafanaToken", "and revoke the exposed token")
    prometheus = config.get("externalGrafanaPrometheusUrl")
    folder = (config.get("externalGrafanaFolder") or "Moltbot").strip()
    if not folder:
        raise ConfigError("moltbot:externalGrafanaFolder: empty; leave it unset for 'Moltbot'")
    return ExternalGrafana(
        url=url, token=token, folder=folder,
        prometheus_url=_http_url("externalGrafanaPrometheusUrl", prometheus) if prometheus else None,
        dashboards=dashboards_for(settings.monitoring_dir / "grafana" / "dashboards", settings.platform,
                                  settings.gpu))


class ExistingGrafana(pulumi.ComponentResource):
    """The folder, the data source when asked, and the dashboards, through one explicit grafana Provider."""

    def __init__(self, name: str, external: ExternalGrafana, opts: pulumi.ResourceOptions | None = None):
        super().__init__("moltbot:grafana:ExistingGrafana", name, None, opts)
        self.provider = grafana.Provider(f"{name}-provider", url=external.url, auth=external.token,
                                         opts=pulumi.ResourceOptions(parent=self))
        on_grafana = pulumi.ResourceOptions(parent=self, provider=self.provider)
        self.folder = grafana.oss.Folder(f"{name}-folder", title=external.folder, uid=FOLDER_UID, opts=on_grafana)
        self.datasource: grafana.oss.DataSource | None = None
        if external.prometheus_url:
            self.datasource = grafana.oss.DataSource(
                f"{name}-prometheus", type="prometheus", name=DATASOURCE_NAME, uid=DATASOURCE_UID,
                url=external.prometheus_url, access_mode="proxy", json_data_encoded=json.dumps(DATASOURCE_JSON),
                opts=on_grafana)
        after = [self.datasource] if self.datasource else []
        self.dashboards = [
            grafana.oss.Dashboard(
                f"{name}-dashboard-{path.stem.removeprefix('moltbot-')}",
                config_json=dashboard_json(path, DATASOURCE_UID if self.datasource else None),
                folder=self.folder.uid, overwrite=True,
                opts=pulumi.ResourceOptions(parent=self, provider=self.provider, depends_on=after))
            for path in external.dashboards
        ]
        self.urls = pulumi.Output.all(*[d.url for d in self.dashboards])
        self.register_outputs({"folder": self.folder.uid, "dashboards": self.urls})
