"""DockerStorage: the stack's bridge network and where each service keeps its data on the Docker host."""

from __future__ import annotations

import pulumi
import pulumi_docker as docker


class DockerStorage(pulumi.ComponentResource):
    """A bridge network plus one place per data set: a named volume, or `<dataDir>/<name>` on the host.

    Host paths (moltbot:dataDir, /data/moltbot in the Ansible role) hold the runtime's data sets, where
    operators drop model configs and plugins. The monitoring services' data always lives in named
    volumes: their images run as their own users (Grafana 472, Prometheus 65534), and a fresh named
    volume takes the owner of the image's folder where a new host folder would belong to root.
    `mount(name, path)` gives the volume argument for a container either way.
    """

    def __init__(self, name: str, prefix: str, host_data_sets: list[str], volume_data_sets: list[str],
                 data_dir: str | None, opts: pulumi.ResourceOptions | None = None):
        super().__init__("moltbot:docker:Storage", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.network = docker.Network(
            f"{name}-network",
            name=f"{prefix}-net",
            driver="bridge",
            labels=[docker.NetworkLabelArgs(label="com.moltbot.stack", value=prefix)],
            opts=child,
        )
        # The bridge's address on the host: where containers on host networking listen for this network only.
        self.gateway = self.network.ipam_configs.apply(lambda configs: configs[0].gateway)
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
            "volumes": {k: v.name for k, v in self.volumes.items()},
            "hostPaths": self.host_paths,
        })

    def mount(self, data_set: str, container_path: str, read_only: bool = False) -> docker.ContainerVolumeArgs:
        if data_set in self.host_paths:
            return docker.ContainerVolumeArgs(host_path=self.host_paths[data_set],
                                              container_path=container_path, read_only=read_only)
        return docker.ContainerVolumeArgs(volume_name=self.volumes[data_set].name,
                                          container_path=container_path, read_only=read_only)

    def attach(self, alias: str) -> list[docker.ContainerNetworksAdvancedArgs]:
        return [docker.ContainerNetworksAdvancedArgs(name=self.network.name, aliases=[alias])]
