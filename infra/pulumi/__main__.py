"""Moltbot environment: one Docker host (runtime + monitoring) or a Kubernetes scale-out.

Reads the stack's `moltbot:*` config (stack_config.py), composes the components and exports the URLs.
"""

import pulumi
import pulumi_docker as docker

import grafana_external
import stack_config
from docker_monitoring import DockerMonitoring
from docker_runtime import MoltbotContainer, data_sets
from docker_storage import DockerStorage
from k8s_dashboards import GrafanaDashboards
from k8s_monitoring import OperatorMonitoring
from k8s_runtime import MoltbotKubernetes

settings = stack_config.load()
external_grafana = grafana_external.load(settings)

if settings.platform == "docker":
    # Without moltbot:dockerHost or a registry login the default provider talks to the local engine
    # (DOCKER_HOST or the socket) with the credentials of ~/.docker/config.json.
    provider = None
    if settings.docker_host or settings.registry_username:
        provider = docker.Provider(
            "docker-host", host=settings.docker_host,
            registry_auth=[docker.ProviderRegistryAuthArgs(
                address=settings.registry, username=settings.registry_username,
                password=settings.registry_password)] if settings.registry_username else None)
    on_host = pulumi.ResourceOptions(providers=[provider] if provider else None)
    storage = DockerStorage(
        "storage", prefix="moltbot",
        host_data_sets=list(data_sets(settings)),
        volume_data_sets=["prometheus", "alertmanager", "grafana"] if settings.monitoring else [],
        data_dir=settings.data_dir, monitoring=settings.monitoring, opts=on_host)
    runtime = MoltbotContainer("moltbot", settings, storage, opts=on_host)
    pulumi.export("url", runtime.url)
    pulumi.export("container", runtime.container.name)
    pulumi.export("imageId", runtime.image.image_id)
    pulumi.export("network", storage.network.name)
    if settings.monitoring:
        monitoring = DockerMonitoring("monitoring", settings, storage, prefix="moltbot", opts=on_host)
        pulumi.export("prometheusUrl", monitoring.prometheus_url)
        pulumi.export("alertmanagerUrl", monitoring.alertmanager_url)
        pulumi.export("grafanaUrl", monitoring.grafana_url)
        pulumi.export("monitoringNetwork", storage.monitoring_network.name)
else:
    # The default Kubernetes provider uses the current kubeconfig context (KUBECONFIG, kubernetes:context).
    cluster = MoltbotKubernetes("moltbot", settings)
    pulumi.export("url", cluster.url)
    pulumi.export("namespace", cluster.namespace.metadata.name)
    if settings.prometheus_operator:
        OperatorMonitoring("moltbot", settings, cluster.labels,
                           opts=pulumi.ResourceOptions(depends_on=[cluster.service]))
    # The dashboards for Grafana's dashboard sidecar (kube-prometheus-stack's Grafana has one).
    GrafanaDashboards("moltbot", settings, opts=pulumi.ResourceOptions(depends_on=[cluster.namespace]))

if external_grafana:
    # The same dashboards (and the Prometheus data source when asked) in a Grafana the team already runs.
    existing = grafana_external.ExistingGrafana("moltbot-grafana", external_grafana)
    pulumi.export("externalGrafanaDashboards", existing.urls)
