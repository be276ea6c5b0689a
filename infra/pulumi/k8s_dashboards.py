"""GrafanaDashboards: the repository's Grafana dashboards as ConfigMaps for Grafana's dashboard sidecar."""

from __future__ import annotations

from pathlib import Path

import pulumi
import pulumi_kubernetes as k8s
from pulumi_kubernetes.meta.v1 import ObjectMetaArgs

from stack_config import GPU_DASHBOARD, HOST_DASHBOARD, ConfigError, Settings

# The label kube-prometheus-stack's Grafana sidecar looks for (sidecar.dashboards.label / labelValue).
SIDECAR_LABEL = {"grafana_dashboard": "1"}


def dashboard_files(dashboards_dir: Path, gpu: bool) -> list[Path]:
    """The dashboards a cluster gets: not the host one (node metrics and their dashboards belong to the
    cluster's own monitoring, as with the rules), the GPU one on GPU clusters only."""
    if not dashboards_dir.is_dir():
        raise ConfigError(f"moltbot:monitoringDir: Grafana's dashboards folder {dashboards_dir} is missing")
    skip = {HOST_DASHBOARD} | (set() if gpu else {GPU_DASHBOARD})
    return [path for path in sorted(dashboards_dir.glob("*.json")) if path.name not in skip]


class GrafanaDashboards(pulumi.ComponentResource):
    """One ConfigMap per dashboard, labelled grafana_dashboard=1, in moltbot:dashboardsNamespace.

    The sidecar of kube-prometheus-stack's Grafana watches its own namespace unless
    `sidecar.dashboards.searchNamespace` says otherwise: set moltbot:dashboardsNamespace to Grafana's
    namespace, or let the sidecar search this one.
    """

    def __init__(self, name: str, settings: Settings, opts: pulumi.ResourceOptions | None = None):
        super().__init__("moltbot:kubernetes:Dashboards", name, None, opts)
        self.config_maps = []
        for path in dashboard_files(settings.monitoring_dir / "grafana" / "dashboards", settings.gpu):
            config_map = f"{name}-dashboard-{path.stem.removeprefix('moltbot-')}"
            self.config_maps.append(k8s.core.v1.ConfigMap(
                config_map,
                metadata=ObjectMetaArgs(name=config_map, namespace=settings.dashboards_namespace,
                                        labels={"app.kubernetes.io/name": "moltbot", **SIDECAR_LABEL}),
                data={path.name: path.read_text()},
                opts=pulumi.ResourceOptions(parent=self),
            ))
        self.register_outputs({})
