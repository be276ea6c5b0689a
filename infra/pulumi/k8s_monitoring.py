"""OperatorMonitoring: a ServiceMonitor and a PrometheusRule for clusters running the Prometheus Operator."""

from __future__ import annotations

from pathlib import Path

import pulumi
import yaml
from pulumi_kubernetes.apiextensions import CustomResource
from pulumi_kubernetes.meta.v1 import ObjectMetaArgs

from stack_config import ConfigError, Settings


def rule_groups(rules_dir: Path, gpu: bool) -> list[dict]:
    """The groups of monitoring/prometheus/rules/moltbot.yml, and gpu.yml on GPU clusters.

    host.yml stays out: on a cluster, node metrics and their alerts belong to the cluster's own
    monitoring stack (kube-prometheus ships them), not to this application.
    """
    groups = []
    for stem in ("moltbot", "gpu") if gpu else ("moltbot",):
        path = rules_dir / f"{stem}.yml"
        if not path.is_file():
            raise ConfigError(f"moltbot:monitoringDir: the rule file {path} is missing")
        document = yaml.safe_load(path.read_text()) or {}
        if not isinstance(document.get("groups"), list):
            raise ConfigError(f"moltbot:monitoringDir: {path} has no `groups:` list")
        groups += document["groups"]
    return groups


class OperatorMonitoring(pulumi.ComponentResource):
    def __init__(self, name: str, settings: Settings, service_labels: dict[str, str],
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("moltbot:kubernetes:Monitoring", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        metadata = ObjectMetaArgs(namespace=settings.namespace,
                                  labels={**service_labels, **settings.operator_labels})
        self.service_monitor = CustomResource(
            f"{name}-servicemonitor",
            api_version="monitoring.coreos.com/v1",
            kind="ServiceMonitor",
            metadata=ObjectMetaArgs(name=name, namespace=metadata.namespace, labels=metadata.labels),
            spec={
                "selector": {"matchLabels": service_labels},
                "namespaceSelector": {"matchNames": [settings.namespace]},
                "endpoints": [{"port": "http", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}],
            },
            opts=child,
        )
        self.prometheus_rule = CustomResource(
            f"{name}-rules",
            api_version="monitoring.coreos.com/v1",
            kind="PrometheusRule",
            metadata=ObjectMetaArgs(name=name, namespace=metadata.namespace, labels=metadata.labels),
            spec={"groups": rule_groups(settings.monitoring_dir / "prometheus" / "rules", settings.gpu)},
            opts=child,
        )
        self.register_outputs({})
