"""DockerStorage: the stack's bridge networks and where each service keeps its data on the Docker host."""

from __future__ import annotations

import pulumi
import pulumi_docker as docker


class DockerStorage(pulumi.ComponentResource):
    """Two bridge networks plus one place per data set: a named volume, or `<dataDir>/<name>` on the host.

    The runtime's network (`<prefix>-net`) holds the runtime and Prometheus only; the monitoring network
    (`<prefix>-monitoring-net`, with monitoring) holds Prometheus, Alertmanager, Grafana and the exporters.
    Alertmanager's API has no authentication at all (anyone reaching it can silence every alert), and the runtime
    runs plugins: it must not reach it, nor Grafana.

    Host paths (moltbot:dataDir, /data/moltbot in the Ansible role) hold the runtime's data sets, where
    operators drop model configs and plugins. The monitoring services' data always lives in named
    volumes: their images run as their own users (Grafana 472, Prometheus 65534), and a fresh named
    volume takes the owner of the image's folder where a new host folder would belong to root.
    `mount(name, path)` gives the volume argument for a container either way.
    """

    def __init__(self, name: str, prefix: str, host_data_sets: list[str], volume_data_sets: list[str],
                 data_dir: str | None, monitoring: bool = False, opts: pulumi.ResourceOptions | None = None):
        super().__init__("moltbot:docker:Storage", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        def bridge(logical: str, network_name: str) -> docker.Network:
            return docker.Network(
                f"{name}-{logical}", name=network_name, driver="bridge",
                labels=[docker.NetworkLabelArgs(label="com.moltbot.stack", value=prefix)], opts=child)

        self.network = bridge("network", f"{prefix}-net")
        self.monitoring_network = bridge("monitoring-network", f"{prefix}-monitoring-net") if monitoring else None
        # The monitoring bridge's address on the host: where containers on host networking (node exporter) listen
        # for the monitoring network only.
        self.gateway = (self.monitoring_network or self.network).ipam_configs.apply(
            lambda configs: configs[0].gateway)
        self.host_paths = {d: f"{data_dir}/{d}" for d in host_data_sets} if data_dir else {}
        self.volumes: dict[str, docker.Volume] = {}
        for data_set in host_data_sets + volume_data_sets:
            if data_set not in self.host_paths:
                self.volumes[data_set] = docker.Volume(
                    f"{name}-{data_set}",
                    name=f"{prefix}-{data_set}",
                    labels=[docker.VolumeLabelArgs(label="com.moltbot.stack", value=prefix)],
                    opts=child,
                )
        self.register_outputs({
            "network": self.network.name,
            "monitoringNetwork": self.monitoring_network.name if self.monitoring_network else None,
            "volumes": {k: v.name for k, v in self.volumes.items()},
            "hostPaths": self.host_paths,
        })

    def mount(self, data_set: str, container_path: str, read_only: bool = False) -> docker.ContainerVolumeArgs:
        if data_set in self.host_paths:
            return docker.ContainerVolumeArgs(host_path=self.host_paths[data_set],
                                              container_path=container_path, read_only=read_only)
        return docker.ContainerVolumeArgs(volume_name=self.volumes[data_set].name,
                                          container_path=container_path, read_only=read_only)

    def attach(self, alias: str, runtime: bool = True, monitoring: bool = False
               ) -> list[docker.ContainerNetworksAdvancedArgs]:
        """The networks a container joins under `alias`: the runtime's, the monitoring one, or both (Prometheus)."""
        networks = ([self.network] if runtime else []) + \
            ([self.monitoring_network] if monitoring and self.monitoring_network else [])
        return [docker.ContainerNetworksAdvancedArgs(name=n.name, aliases=[alias]) for n in networks]
