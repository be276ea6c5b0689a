"""MoltbotContainer: the runtime service as one hardened container on a Docker host, with its image and init step."""

from __future__ import annotations

import shlex

import pulumi
import pulumi_docker as docker

import contract
from docker_storage import DockerStorage
from stack_config import ADMIN_API_KEYS_FILE, API_KEYS_FILE, TMP_SIZE_MIB, Settings, container_env, text_files

# The image's Python answers the healthcheck, so it needs no curl. It asks /ready (every model loaded), not /health
# (the server answers): `pulumi up` waits for healthy (wait=True), so an upgrade whose container never loads its
# models fails the update instead of passing once the HTTP server is up.
HEALTHCHECK_COMMAND = [
    "CMD", "python", "-c",
    f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{contract.HTTP_PORT}/ready', timeout=4)",
]
RUNTIME_USER = f"{contract.RUNTIME_UID}:{contract.RUNTIME_GID}"
# The data sets the runtime writes (the model cache lives in the models volume); the init step gives them to
# the service user, as the image's entrypoint would when started as root.
WRITABLE_DIRS = (contract.MODELS_DIR, contract.LOGS_DIR)
# Readable by the service user only.
PRIVATE_MODE = "0400"


def data_sets(settings: Settings) -> dict[str, str]:
    """The runtime's data sets (DockerStorage names) and where they are mounted in the container."""
    mounts = {"models": contract.MODELS_DIR, "plugins": contract.PLUGINS_DIR, "logs": contract.LOGS_DIR}
    if settings.tls_cert is not None:
        mounts["tls"] = contract.TLS_DIR
    if settings.api_keys is not None or settings.admin_api_keys is not None:
        mounts["secrets"] = API_KEYS_FILE.rsplit("/", 1)[0]
    return mounts


def init_command(private_files: list[str]) -> list[str]:
    """The init step's shell command: writable data sets and private files to the service user."""
    steps = [f"chown {RUNTIME_USER} {' '.join(WRITABLE_DIRS)}"]
    if private_files:
        files = " ".join(shlex.quote(f) for f in private_files)
        steps.append(f"chown {RUNTIME_USER} {files} && chmod {PRIVATE_MODE} {files}")
    return ["/bin/sh", "-ec", "\n".join(steps)]


class MoltbotContainer(pulumi.ComponentResource):
    """The runtime: its image (RemoteImage), an init container that fills the volumes, the hardened container.

    The runtime container runs as the image's service user with a read-only root file system, no
    capabilities and no-new-privileges. Docker refuses uploads into a container whose root is read-only
    (the provider copies them at `/`), so the files from the machine running `pulumi up` (model configs,
    plugins, TLS material, the API keys file) are uploaded into an init container that mounts the same
    volumes; it runs once to hand the writable data sets and the private files to the service user, and the
    runtime container is replaced whenever the init container is (its ID is one of the runtime's labels).
    """

    def __init__(self, name: str, settings: Settings, storage: DockerStorage,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("moltbot:docker:Runtime", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        # With moltbot:imagePull=always the tag is resolved to the registry's current digest at every
        # `pulumi up`; a new digest is a new RemoteImage (pulled), so a new image ID, so a new container.
        # A pinned digest (`repo@sha256:...`) is pulled once; a plain tag uses the host's image, pulled
        # when absent (rebuilt locally: `pulumi up --refresh` picks up its new ID).
        image_name: pulumi.Input[str] = settings.image
        if settings.image_pull == "always":
            registry_image = docker.get_registry_image_output(
                name=settings.image, opts=pulumi.InvokeOutputOptions(parent=self))
            repository = settings.image.rsplit(":", 1)[0] if ":" in settings.image.rsplit("/", 1)[-1] \
                else settings.image
            image_name = registry_image.sha256_digest.apply(lambda digest: f"{repository}@{digest}")
        self.image = docker.RemoteImage(
            f"{name}-image", name=image_name, keep_locally=True, opts=child)
        # The image ID, as the provider reads containers back: no spurious replacement after a refresh.
        image_id = self.image.image_id

        mounts = data_sets(settings)
        uploads = [
            docker.ContainerUploadArgs(file=f"{contract.MODELS_DIR}/{relative}", content=text)
            for relative, text in text_files(settings.model_configs_dir, "*.json", "moltbot:modelConfigsDir").items()
        ] + [
            docker.ContainerUploadArgs(file=f"{contract.PLUGINS_DIR}/{relative}", content=text)
            for relative, text in text_files(settings.plugins_dir, "*", "moltbot:pluginsDir").items()
        ]
        private_files = []
        env = container_env(settings)
        ports = [docker.ContainerPortArgs(internal=contract.HTTP_PORT, external=settings.http_port,
                                          ip=settings.http_bind_address)]
        if settings.tls_cert is not None:
            env["MOLTBOT_TLS_CERT"] = contract.TLS_CERT
            env["MOLTBOT_TLS_KEY"] = contract.TLS_KEY
            uploads += [
                docker.ContainerUploadArgs(file=contract.TLS_CERT, content=settings.tls_cert),
                docker.ContainerUploadArgs(file=contract.TLS_KEY, content=settings.tls_key,
                                           permissions=PRIVATE_MODE, owner=str(contract.RUNTIME_UID)),
            ]
            private_files.append(contract.TLS_KEY)
            ports.append(docker.ContainerPortArgs(internal=contract.HTTPS_PORT, external=settings.https_port,
                                                  ip=settings.bind_address))
        if settings.api_keys is not None:
            # A Pulumi secret: encrypted in the state, masked in previews and logs; a file in the container.
            env["MOLTBOT_API_KEYS_FILE"] = API_KEYS_FILE
            uploads.append(docker.ContainerUploadArgs(
                file=API_KEYS_FILE, content=settings.api_keys.apply(lambda keys: "".join(f"{k}\n" for k in keys)),
                permissions=PRIVATE_MODE, owner=str(contract.RUNTIME_UID)))
            private_files.append(API_KEYS_FILE)
        if settings.admin_api_keys is not None:
            # Separate admin keys (plugin reload, knowledge base ingest), a file beside the API keys file.
            env["MOLTBOT_ADMIN_API_KEYS_FILE"] = ADMIN_API_KEYS_FILE
            uploads.append(docker.ContainerUploadArgs(
                file=ADMIN_API_KEYS_FILE,
                content=settings.admin_api_keys.apply(lambda keys: "".join(f"{k}\n" for k in keys)),
                permissions=PRIVATE_MODE, owner=str(contract.RUNTIME_UID)))
            private_files.append(ADMIN_API_KEYS_FILE)
        if settings.api_keys is None and settings.admin_api_keys is None:
            # The container listens on 0.0.0.0, where the runtime refuses to serve without keys; the stack
            # publishes it on loopback alone then (stack_config refuses anything else without keys).
            env["MOLTBOT_ALLOW_UNAUTHENTICATED"] = "true"
        plain_env = [f"{key}={value}" for key, value in env.items()]
        # The plugins' secrets (moltbot:pluginEnv) join the variables as a secret Output: encrypted in the state,
        # masked in previews (the whole list is then secret); `docker inspect` on the host shows them, as any
        # container variable.
        envs: pulumi.Input[list[str]] = plain_env if settings.plugin_env is None else settings.plugin_env.apply(
            lambda extra: plain_env + [f"{key}={value}" for key, value in sorted(extra.items())])

        self.init = docker.Container(
            f"{name}-init",
            name=f"{name}-init",
            image=image_id,
            entrypoints=init_command(private_files),
            volumes=[storage.mount(data_set, path) for data_set, path in mounts.items()],
            uploads=uploads,
            # Runs once, to completion (attach), and stays as an exited container like a finished init container.
            must_run=False,
            attach=True,
            restart="no",
            network_mode="none",
            capabilities=docker.ContainerCapabilitiesArgs(drops=["ALL"], adds=["CHOWN", "FOWNER"]),
            security_opts=["no-new-privileges"],
            labels=[docker.ContainerLabelArgs(label="com.moltbot.component", value="runtime-init")],
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
        )

        self.container = docker.Container(
            f"{name}-container",
            name=name,
            image=image_id,
            hostname=name,
            envs=envs,
            ports=ports,
            # The plugins are code: read-only for the runtime (the init container writes them), as on Kubernetes.
            volumes=[storage.mount(data_set, path, read_only=data_set in ("plugins", "tls", "secrets"))
                     for data_set, path in mounts.items()],
            networks_advanced=storage.attach("moltbot"),
            # Hardened: the image's service user, nothing writable but the volumes and /tmp, no capabilities.
            user=RUNTIME_USER,
            read_only=True,
            tmpfs={"/tmp": f"rw,nosuid,nodev,size={TMP_SIZE_MIB}m"},
            capabilities=docker.ContainerCapabilitiesArgs(drops=["ALL"]),
            security_opts=["no-new-privileges"],
            healthcheck=docker.ContainerHealthcheckArgs(
                tests=HEALTHCHECK_COMMAND, interval="15s", timeout="5s", retries=3, start_period="120s",
            ),
            restart="unless-stopped",
            gpus="all" if settings.gpu else None,
            cpus=f"{settings.cpus:g}",
            memory=settings.memory_mb,
            # The provider has no --pids-limit: the nproc ulimit bounds the service user's processes and threads.
            ulimits=[docker.ContainerUlimitArgs(name="nproc", soft=settings.pids_limit, hard=settings.pids_limit)],
            log_driver="json-file",
            log_opts={"max-size": "10m", "max-file": "3"},
            # SIGTERM drains in-flight requests (MOLTBOT_SHUTDOWN_TIMEOUT) before exiting; Docker kills later.
            stop_signal="SIGTERM",
            stop_timeout=settings.shutdown_timeout + 15,
            destroy_grace_seconds=settings.shutdown_timeout + 15,
            labels=[docker.ContainerLabelArgs(label="com.moltbot.component", value="runtime"),
                    # New uploads make a new init container, and so a new runtime container.
                    docker.ContainerLabelArgs(label="com.moltbot.init", value=self.init.id)],
            # `pulumi up` returns once /ready answers (the healthcheck), or fails after the timeout.
            wait=True,
            wait_timeout=300,
            # The old container holds the name and the host ports until it is gone.
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True, depends_on=[self.init]),
        )
        self.url = pulumi.Output.from_input(settings.api_url)
        self.register_outputs({"url": self.url, "container": self.container.name,
                               "imageId": image_id, "repoDigest": self.image.repo_digest})
