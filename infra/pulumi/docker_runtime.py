"""MoltbotContainer: the runtime service as one container on a Docker host."""

from __future__ import annotations

import pulumi
import pulumi_docker as docker

from docker_storage import DockerStorage
from stack_config import Settings, container_env, text_files

# The image's Python answers the healthcheck, so it needs no curl.
HEALTHCHECK_COMMAND = [
    "CMD", "python", "-c",
    "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=4)",
]
TLS_DIR = "/app/tls"  # file names as in the Ansible role and the Kubernetes TLS Secret
RUNTIME_UID = "10001"  # the image's `moltbot` user (Dockerfile; moltbot_data_owner in the Ansible role)


class MoltbotContainer(pulumi.ComponentResource):
    """The runtime container: port 8080 (8443 with TLS), models/plugins/logs, MOLTBOT_* env, limits, healthcheck."""

    def __init__(self, name: str, settings: Settings, storage: DockerStorage,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("moltbot:docker:Runtime", name, None, opts)
        env = container_env(settings)
        # Model configs and plugin folders from the machine running `pulumi up` (like the Ansible role's
        # moltbot_model_configs / moltbot_plugins), copied into the volumes when the container is created.
        uploads = [
            docker.ContainerUploadArgs(file=f"/app/models/{relative}", content=text)
            for relative, text in text_files(settings.model_configs_dir, "*.json", "moltbot:modelConfigsDir").items()
        ] + [
            docker.ContainerUploadArgs(file=f"/app/plugins/{relative}", content=text)
            for relative, text in text_files(settings.plugins_dir, "*", "moltbot:pluginsDir").items()
        ]
        ports = [docker.ContainerPortArgs(internal=8080, external=settings.http_port, ip=settings.bind_address)]
        if settings.tls_cert is not None:
            env["MOLTBOT_TLS_CERT"] = f"{TLS_DIR}/tls.crt"
            env["MOLTBOT_TLS_KEY"] = f"{TLS_DIR}/tls.key"
            uploads += [
                docker.ContainerUploadArgs(file=f"{TLS_DIR}/tls.crt", content=settings.tls_cert),
                # Readable by the service user only (the image's user 10001, which the runtime runs as).
                docker.ContainerUploadArgs(file=f"{TLS_DIR}/tls.key", content=settings.tls_key,
                                           permissions="0400", owner=RUNTIME_UID),
            ]
            ports.append(docker.ContainerPortArgs(internal=8443, external=settings.https_port,
                                                  ip=settings.bind_address))
        plain_envs = [f"{key}={value}" for key, value in env.items()]
        envs: pulumi.Input[list[str]] = plain_envs
        if settings.api_keys is not None:
            # The whole list becomes a Pulumi secret: encrypted in the state, masked in previews and logs.
            envs = settings.api_keys.apply(lambda keys: plain_envs + [f"MOLTBOT_API_KEYS={','.join(keys)}"])

        self.container = docker.Container(
            f"{name}-container",
            name=name,
            image=settings.image,
            hostname=name,
            envs=envs,
            ports=ports,
            volumes=[
                storage.mount("models", "/app/models"),
                storage.mount("plugins", "/app/plugins"),
                storage.mount("logs", "/app/logs"),
            ],
            uploads=uploads,
            networks_advanced=storage.attach("moltbot"),
            healthcheck=docker.ContainerHealthcheckArgs(
                tests=HEALTHCHECK_COMMAND, interval="15s", timeout="5s", retries=3, start_period="120s",
            ),
            restart="unless-stopped",
            gpus="all" if settings.gpu else None,
            cpus=f"{settings.cpus:g}",
            memory=settings.memory_mb,
            log_driver="json-file",
            log_opts={"max-size": "10m", "max-file": "3"},
            # SIGTERM drains in-flight requests (MOLTBOT_SHUTDOWN_TIMEOUT) before exiting; Docker kills later.
            stop_signal="SIGTERM",
            stop_timeout=settings.shutdown_timeout + 15,
            destroy_grace_seconds=settings.shutdown_timeout + 15,
            labels=[docker.ContainerLabelArgs(label="com.moltbot.component", value="runtime")],
            # `pulumi up` returns once /health answers, or fails after the timeout (model load included).
            wait=True,
            wait_timeout=300,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.url = pulumi.Output.from_input(settings.url(settings.bind_address, settings.http_port))
        self.register_outputs({"url": self.url, "container": self.container.name})
