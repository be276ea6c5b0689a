"""DockerMonitoring: Prometheus, Alertmanager, Grafana, node exporter (and the DCGM exporter on GPU hosts).

The configuration comes from the repository's monitoring/ folder and is uploaded into the containers
(not bind-mounted), so the same program works against a remote engine (moltbot:dockerHost=ssh://...):
a changed file changes the upload and Pulumi replaces that container.
"""

from __future__ import annotations

from pathlib import Path

import pulumi
import pulumi_docker as docker
import yaml

import contract
from docker_storage import DockerStorage
from stack_config import GPU_DASHBOARD, ConfigError, Settings

NODE_EXPORTER_PORT = 9100
# Grafana reads its admin password from this file (GF_SECURITY_ADMIN_PASSWORD__FILE), so that it is in no
# container variable that `docker inspect` shows; private to the image's grafana user (uid 472).
GRAFANA_PASSWORD_FILE = "/run/secrets/grafana/admin-password"
GRAFANA_UID = "472"


def config_uploads(source: Path, target: str, skip: tuple[str, ...] = ()) -> list[docker.ContainerUploadArgs]:
    """Every file under `source` (sorted, so plans are stable) as an upload below `target`.

    Top-level names in `skip` (promtool's rule tests, the GPU dashboard on CPU hosts) and `*.example`
    files stay behind.
    """
    uploads = []
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        relative = path.relative_to(source).as_posix()
        if relative.split("/")[0] in skip or path.suffix == ".example":
            continue
        uploads.append(docker.ContainerUploadArgs(file=f"{target}/{relative}", content=path.read_text()))
    return uploads


def scrape_targets(settings: Settings) -> list[docker.ContainerUploadArgs]:
    """file_sd target lists for prometheus.yml's jobs: the stack's containers by their network aliases
    (node-exporter, on the host's network, by the name Prometheus's /etc/hosts gives the bridge's address).

    Every group names the one machine they all run on (`host`, which the rules join different jobs' series
    by) and the stack; the runtime's group says `gpu: "true"` on GPU stacks.
    """
    targets = {"moltbot": f"moltbot:{contract.HTTP_PORT}", "node": f"node-exporter:{NODE_EXPORTER_PORT}",
               "alertmanager": "alertmanager:9093"}
    if settings.gpu:
        targets["dcgm"] = "dcgm-exporter:9400"
    labels = {"host": settings.machine, "stack": pulumi.get_stack()}
    return [
        docker.ContainerUploadArgs(
            file=f"/etc/prometheus/targets/{job}.yml",
            content=yaml.safe_dump([{"targets": [target], "labels": {
                **labels, **({"gpu": "true"} if job == "moltbot" and settings.gpu else {})}}]),
        )
        for job, target in targets.items()
    ]


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise ConfigError(f"moltbot:monitoringDir: {what} {path} is missing")
    return path


class DockerMonitoring(pulumi.ComponentResource):
    def __init__(self, name: str, settings: Settings, storage: DockerStorage, prefix: str,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("moltbot:docker:Monitoring", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        monitoring = settings.monitoring_dir
        bind = settings.monitoring_bind_address
        _require(monitoring / "prometheus" / "prometheus.yml", "the Prometheus configuration")
        _require(monitoring / "alertmanager" / "alertmanager.yml", "the Alertmanager configuration")
        _require(monitoring / "grafana" / "provisioning", "Grafana's provisioning folder")
        _require(monitoring / "grafana" / "dashboards", "Grafana's dashboards folder")
        log_opts = {"max-size": "10m", "max-file": "3"}

        # Prometheus scrapes the runtime, so it joins both networks; the rest only the monitoring one (DockerStorage).
        def service(alias: str, host_network: bool = False, scrapes_runtime: bool = False,
                    **kwargs) -> docker.Container:
            network = {"network_mode": "host"} if host_network else \
                {"hostname": alias,
                 "networks_advanced": storage.attach(alias, runtime=scrapes_runtime, monitoring=True)}
            return docker.Container(
                f"{name}-{alias}",
                name=f"{prefix}-{alias}",
                **network,
                restart="unless-stopped",
                log_driver="json-file",
                log_opts=log_opts,
                labels=[docker.ContainerLabelArgs(label="com.moltbot.component", value=alias)],
                opts=child,
                **kwargs,
            )

        self.prometheus = service(
            "prometheus",
            scrapes_runtime=True,
            image=settings.images["prometheusImage"],
            command=[
                "--config.file=/etc/prometheus/prometheus.yml",
                "--storage.tsdb.path=/prometheus",
                "--storage.tsdb.retention.time=15d",
                # No --web.enable-lifecycle: Prometheus has no authentication here, and with it anything on the
                # bridge could POST /-/quit or /-/reload. A changed configuration replaces the container instead.
            ],
            ports=[docker.ContainerPortArgs(internal=9090, external=settings.prometheus_port, ip=bind)],
            volumes=[storage.mount("prometheus", "/prometheus")],
            uploads=config_uploads(monitoring / "prometheus", "/etc/prometheus", skip=("tests",))
            + scrape_targets(settings),
            # node exporter listens on the bridge's host address; this name is its scrape target.
            hosts=[docker.ContainerHostArgs(host="node-exporter", ip=storage.gateway)],
            healthcheck=docker.ContainerHealthcheckArgs(
                tests=["CMD", "wget", "-q", "-O-", "http://127.0.0.1:9090/-/ready"], interval="15s", retries=3),
        )
        self.alertmanager = service(
            "alertmanager",
            image=settings.images["alertmanagerImage"],
            command=["--config.file=/etc/alertmanager/alertmanager.yml", "--storage.path=/alertmanager"],
            ports=[docker.ContainerPortArgs(internal=9093, external=settings.alertmanager_port, ip=bind)],
            volumes=[storage.mount("alertmanager", "/alertmanager")],
            uploads=config_uploads(monitoring / "alertmanager", "/etc/alertmanager"),
        )
        grafana_env = [
            "GF_SECURITY_ADMIN_USER=admin",
            f"GF_SECURITY_ADMIN_PASSWORD__FILE={GRAFANA_PASSWORD_FILE}",
            "GF_USERS_ALLOW_SIGN_UP=false",
            "GF_AUTH_ANONYMOUS_ENABLED=false",
            # Read by the datasource provisioning file (monitoring/grafana/provisioning/datasources/).
            "PROMETHEUS_URL=http://prometheus:9090",
        ]
        password_file = docker.ContainerUploadArgs(
            file=GRAFANA_PASSWORD_FILE, content=pulumi.Output.secret(settings.grafana_admin_password),
            owner=GRAFANA_UID, permissions="0400")
        self.grafana = service(
            "grafana",
            image=settings.images["grafanaImage"],
            envs=grafana_env,
            ports=[docker.ContainerPortArgs(internal=3000, external=settings.grafana_port, ip=bind)],
            volumes=[storage.mount("grafana", "/var/lib/grafana")],
            uploads=[password_file]
            + config_uploads(monitoring / "grafana" / "provisioning", "/etc/grafana/provisioning")
            + config_uploads(monitoring / "grafana" / "dashboards", "/var/lib/grafana/dashboards/moltbot",
                             skip=() if settings.gpu else (GPU_DASHBOARD,)),
        )
        # Host metrics: the host's network namespace (its interfaces, not a container's), process table and root
        # file system (read-only at /host). It listens on the monitoring network's bridge address only: reachable
        # from the host and its containers (a host address, so the runtime's too: read-only metrics), not from
        # other machines.
        self.node_exporter = service(
            "node-exporter",
            host_network=True,
            image=settings.images["nodeExporterImage"],
            command=storage.gateway.apply(lambda gateway: [
                "--path.rootfs=/host", f"--web.listen-address={gateway}:{NODE_EXPORTER_PORT}"]),
            pid_mode="host",
            mounts=[docker.ContainerMountArgs(
                type="bind", source="/", target="/host", read_only=True,
                bind_options=docker.ContainerMountBindOptionsArgs(propagation="rslave"),
            )],
        )
        self.dcgm_exporter = None
        if settings.gpu:
            self.dcgm_exporter = service(
                "dcgm-exporter",
                image=settings.images["dcgmExporterImage"],
                gpus="all",
                capabilities=docker.ContainerCapabilitiesArgs(adds=["SYS_ADMIN"]),
            )
        self.prometheus_url = pulumi.Output.from_input(settings.url(bind, settings.prometheus_port))
        self.alertmanager_url = pulumi.Output.from_input(settings.url(bind, settings.alertmanager_port))
        self.grafana_url = pulumi.Output.from_input(settings.url(bind, settings.grafana_port))
        self.register_outputs({
            "prometheusUrl": self.prometheus_url,
            "alertmanagerUrl": self.alertmanager_url,
            "grafanaUrl": self.grafana_url,
        })
