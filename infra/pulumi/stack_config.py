"""The stack's settings: every `moltbot:*` config key read, checked and turned into one typed object.

The key names are shared with the Ansible `moltbot` role (see README.md for the mapping). Every check
raises ConfigError with the key's full name, so `pulumi up` stops before touching a host.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi

import contract

PROJECT_DIR = Path(__file__).resolve().parent
CPU_IMAGE = "moltbot:latest"
GPU_IMAGE = "moltbot:gpu"

# Pinned public images for the monitoring services, from the deployment contract (deploy/contract.json, the one
# place they are pinned); each one can be overridden by its config key.
DEFAULT_IMAGES = {
    "prometheusImage": contract.IMAGES["prometheus"],
    "alertmanagerImage": contract.IMAGES["alertmanager"],
    "grafanaImage": contract.IMAGES["grafana"],
    "nodeExporterImage": contract.IMAGES["node_exporter"],
    "dcgmExporterImage": contract.IMAGES["dcgm_exporter"],
}

# The API keys reach the runtime as a file (MOLTBOT_API_KEYS_FILE, one key per line), never as environment
# variables that `docker inspect` or the pod spec would show. Docker: a volume the init container writes;
# Kubernetes: the keys Secret mounted there. The path is the deployment contract's, as in the Ansible role.
API_KEYS_FILE = contract.API_KEYS_FILE
# Admin keys (routes that change server state), a file beside it (MOLTBOT_ADMIN_API_KEYS_FILE).
ADMIN_API_KEYS_FILE = contract.ADMIN_API_KEYS_FILE
# Size of the /tmp tmpfs (Docker) or emptyDir (Kubernetes) under the read-only root file system, in MiB.
TMP_SIZE_MIB = 512
# Dashboards of monitoring/grafana/dashboards/ that only some stacks ship.
GPU_DASHBOARD = "moltbot-gpu.json"
HOST_DASHBOARD = "moltbot-host.json"
# Docker Hub's registry as the Docker provider keys its credentials, and as a kubelet's docker config does.
DOCKER_HUB_REGISTRY = "registry-1.docker.io"
DOCKER_HUB_CONFIG_KEY = "https://index.docker.io/v1/"

# Variables the program sets itself from dedicated keys; `moltbot:env` may not override them.
MANAGED_ENV = {
    "MOLTBOT_HOST": "moltbot:bindAddress (the container always listens on 0.0.0.0)",
    "MOLTBOT_PORT": "moltbot:httpPort",
    "MOLTBOT_HTTPS_PORT": "moltbot:httpsPort",
    "MOLTBOT_API_KEYS": "moltbot:apiKeys",
    "MOLTBOT_API_KEYS_FILE": "moltbot:apiKeys",
    "MOLTBOT_ADMIN_API_KEYS": "moltbot:adminApiKeys",
    "MOLTBOT_ADMIN_API_KEYS_FILE": "moltbot:adminApiKeys",
    "MOLTBOT_TLS_CERT": "moltbot:tlsCert",
    "MOLTBOT_TLS_KEY": "moltbot:tlsKey",
    "MOLTBOT_MODELS_DIR": f"the models volume ({contract.MODELS_DIR})",
    "MOLTBOT_PLUGINS_DIR": f"the plugins volume ({contract.PLUGINS_DIR})",
    "MOLTBOT_LOGS_DIR": f"the logs volume ({contract.LOGS_DIR})",
    "MOLTBOT_DEVICE": "moltbot:gpu",
    "MOLTBOT_ALLOW_UNAUTHENTICATED": "moltbot:apiKeys (set only when no key is configured: the API is then "
                                     "published on loopback alone)",
}

# Who may reach the pods through the NetworkPolicy: the ingress controller and Prometheus, each a namespace
# selector plus an optional pod selector (label maps). These defaults match ingress-nginx and
# kube-prometheus-stack installed in their usual namespaces.
DEFAULT_PEERS = {
    "ingressFrom": {"namespaceLabels": {"kubernetes.io/metadata.name": "ingress-nginx"},
                    "podLabels": {"app.kubernetes.io/name": "ingress-nginx"}},
    "prometheusFrom": {"namespaceLabels": {"kubernetes.io/metadata.name": "monitoring"},
                       "podLabels": {"app.kubernetes.io/name": "prometheus"}},
    # Where the pods may send DNS queries (the NetworkPolicy's egress): the cluster DNS of kubeadm, kind, k3s, EKS,
    # GKE and AKS (CoreDNS or kube-dns, labelled k8s-app=kube-dns in kube-system).
    "dnsTo": {"namespaceLabels": {"kubernetes.io/metadata.name": "kube-system"},
              "podLabels": {"k8s-app": "kube-dns"}},
}
# The cloud instance metadata addresses (AWS, GCP, Azure, OpenStack; AWS's IPv6 one): credentials of the node's
# cloud identity. No egress rule admits them, whatever CIDR moltbot:egress names.
METADATA_NETWORKS = ("169.254.169.254/32", "fd00:ec2::254/128")

_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([bkmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_MEMORY_FACTORS = {"b": 1, "": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_ENV_NAME = re.compile(r"^MOLTBOT_[A-Z0-9_]+$")
# Plugin secrets are ordinary variable names; the runtime's own settings (MOLTBOT_*) go in moltbot:env, and names
# that change how the image's Python or loader runs are refused.
_PLUGIN_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RESERVED_ENV = re.compile(r"^(MOLTBOT_|PYTHON|LD_)|^(PATH|HOME|USER|HOSTNAME|TMPDIR|SSL_CERT_FILE|SSL_CERT_DIR)$")
_K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
MIN_MEMORY_BYTES = 256 * 1024**2
# The image drains for 8 s (to fit `docker stop`'s default 10 s); these stacks give the runtime's own default.
DEFAULT_SHUTDOWN_TIMEOUT = 30
# Seconds a Kubernetes pod stays in the Service's endpoints after deletion starts (preStop sleep), so that no
# new request arrives once the runtime has begun draining on SIGTERM.
PRE_STOP_SLEEP_SECONDS = 10


# Every key this program reads (README.md documents each one); any other `moltbot:*` key is a typo.
KNOWN_KEYS = frozenset({
    "platform", "image", "imagePull", "registryUsername", "registryPassword", "httpPort", "httpsPort",
    "bindAddress", "httpBindAddress", "publicHost", "dataDir", "cpus", "memory", "pidsLimit", "gpu", "apiKeys",
    "adminApiKeys", "tlsCert", "tlsKey", "env", "modelConfigsDir", "pluginsDir", "dockerHost", "monitoring", "grafanaAdminPassword",
    "monitoringBindAddress", "prometheusPort", "alertmanagerPort", "grafanaPort", "monitoringDir", "namespace",
    "replicas", "maxReplicas", "targetCpuUtilization", "serviceType", "modelsStorage", "modelsAccessMode",
    "storageClass", "terminationGracePeriodSeconds", "prometheusOperator", "operatorLabels", "dashboardsNamespace",
    "pluginEnv", "egress", *DEFAULT_PEERS, *DEFAULT_IMAGES,
    # grafana_external.py: the dashboards declared in an existing Grafana (pulumiverse-grafana).
    "externalGrafanaUrl", "externalGrafanaToken", "externalGrafanaFolder", "externalGrafanaPrometheusUrl",
})


class ConfigError(ValueError):
    """A `moltbot:*` config value cannot be used; the message names the key and what to set instead."""


@dataclass(frozen=True)
class Settings:
    platform: str
    image: str
    image_pull: str  # "missing" (use the host's image, pull when absent) or "always" (the registry's digest)
    registry: str  # the registry moltbot:image comes from (DOCKER_HUB_REGISTRY when it names none)
    registry_username: str | None
    registry_password: pulumi.Output | None  # secret
    http_port: int
    https_port: int
    bind_address: str
    http_bind_address: str  # where plain HTTP is published: bindAddress, or 127.0.0.1 with TLS unless set
    public_host: str
    machine: str  # the Docker host's name (dockerHost's host, else this machine's): its targets' `host` label
    data_dir: str | None
    cpus: float
    memory_bytes: int
    gpu: bool
    api_keys: pulumi.Output | None  # secret Output of list[str]
    admin_api_keys: pulumi.Output | None  # secret Output of list[str]; separate from api_keys
    pids_limit: int
    tls_cert: pulumi.Output | None  # PEM text
    tls_key: pulumi.Output | None  # PEM text, secret
    env: dict[str, str]
    plugin_env: pulumi.Output | None  # secret Output of dict[str, str]: the plugins' secrets, as variables
    plugin_env_names: tuple[str, ...]  # their names (not secret), sorted
    docker_host: str | None
    monitoring: bool
    monitoring_bind_address: str
    monitoring_dir: Path
    grafana_admin_password: pulumi.Output | None
    prometheus_port: int
    alertmanager_port: int
    grafana_port: int
    images: dict[str, str]
    namespace: str
    replicas: int
    max_replicas: int
    target_cpu_utilization: int
    models_storage: str
    models_access_mode: str
    storage_class: str | None
    prometheus_operator: bool
    operator_labels: dict[str, str]
    dashboards_namespace: str
    ingress_from: dict[str, dict[str, str]]  # {"namespaceLabels": {...}, "podLabels": {...}}
    prometheus_from: dict[str, dict[str, str]]
    dns_to: dict[str, dict[str, str]]
    egress: tuple[dict[str, Any], ...]  # moltbot:egress, checked: {"cidr", "except", "ports"} or labels + "ports"
    model_configs_dir: Path | None
    plugins_dir: Path | None
    service_type: str
    termination_grace_seconds: int
    shutdown_timeout: int  # seconds the runtime drains after SIGTERM (MOLTBOT_SHUTDOWN_TIMEOUT)

    def url(self, bind: str, port: int, scheme: str = "http") -> str:
        """What a user opens: the bind address, or the public host when published on every interface."""
        host = self.public_host if bind in ("0.0.0.0", "::") else bind
        return f"{scheme}://{host}:{port}"

    @property
    def api_url(self) -> str:
        """The API's URL on a Docker host: HTTPS when TLS is on, else plain HTTP."""
        if self.tls_cert is not None:
            return self.url(self.bind_address, self.https_port, "https")
        return self.url(self.http_bind_address, self.http_port)

    @property
    def image_pinned(self) -> bool:
        """moltbot:image names a digest (`repo[:tag]@sha256:...`): that exact image, whatever the tag says now."""
        return "@sha256:" in self.image

    @property
    def memory_mb(self) -> int:
        """Docker's `memory` limit is in MiB."""
        return self.memory_bytes // 1024**2

    @property
    def memory_quantity(self) -> str:
        """The same limit as a Kubernetes quantity."""
        return f"{self.memory_mb}Mi"


def parse_memory(key: str, text: str) -> int:
    """Bytes from a Docker-style size (`512m`, `4g`, `4GiB`; binary units like `docker run -m`)."""
    match = _MEMORY.match(str(text))
    if not match:
        raise ConfigError(f"{key}: {text!r} is not a memory size; use a number with b, k, m or g (e.g. 4g, 512m)")
    value = int(float(match.group(1)) * _MEMORY_FACTORS[match.group(2).lower()])
    if value < MIN_MEMORY_BYTES:
        raise ConfigError(f"{key}: {text!r} is below the 256m the runtime needs to load its models")
    return value


def _port(config: pulumi.Config, name: str, default: int) -> int:
    value = _int(config, name, default)
    if not 0 < value < 65536:
        raise ConfigError(f"moltbot:{name}: {value} is not a TCP port (1-65535)")
    return value


def _ip(config: pulumi.Config, name: str, default: str = "127.0.0.1") -> str:
    """A host address to publish ports on; loopback unless set."""
    raw = config.get(name) or default
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        raise ConfigError(f"moltbot:{name}: {raw!r} is not an IP address (e.g. 127.0.0.1 or 0.0.0.0)") from None


def _int(config: pulumi.Config, name: str, default: int) -> int:
    raw = config.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"moltbot:{name}: {raw!r} is not a whole number") from None


def _pids_limit(config: pulumi.Config) -> int:
    """The most processes and threads the runtime's user may run (Docker: the nproc ulimit)."""
    limit = _int(config, "pidsLimit", contract.DEFAULT_PIDS_LIMIT)
    if limit < 64:
        raise ConfigError(f"moltbot:pidsLimit: {limit} is too few for the runtime's threads; at least 64")
    return limit


def _bool(config: pulumi.Config, name: str, default: bool) -> bool:
    raw = config.get(name)
    if raw is None:
        return default
    lowered = raw.strip().lower()
    if lowered in ("true", "yes", "on", "1"):
        return True
    if lowered in ("false", "no", "off", "0"):
        return False
    raise ConfigError(f"moltbot:{name}: {raw!r} is not true or false")


def _api_keys(raw: str, key: str = "moltbot:apiKeys") -> list[str]:
    """A JSON list (`--path` or structured config) or one comma-separated string, like MOLTBOT_API_KEYS."""
    text = raw.strip()
    if text.startswith("["):
        try:
            keys = json.loads(text)
        except ValueError:
            raise ConfigError(f"{key}: starts with '[' but is not a JSON list of strings") from None
        if not all(isinstance(k, str) for k in keys):
            raise ConfigError(f"{key}: the list must hold strings only")
    else:
        keys = text.split(",")
    keys = [k.strip() for k in keys if k.strip()]
    for one in keys:
        if "," in one or any(ch.isspace() for ch in one):
            raise ConfigError(f"{key}: a key may not contain commas or white space")
    return keys


def _project_path(config: pulumi.Config, name: str, default: str | None) -> Path | None:
    raw = config.get(name) or default
    if raw is None:
        return None
    path = Path(raw)
    path = path if path.is_absolute() else (PROJECT_DIR / path).resolve()
    if not path.is_dir():
        raise ConfigError(f"moltbot:{name}: {path} is not a folder")
    return path


def _pem(config: pulumi.Config, name: str, label: str) -> str | None:
    """PEM text, given inline (`pulumi config set --secret moltbot:tlsKey < key.pem`) or as the path of a
    file on the machine running `pulumi up` (like the Ansible role's controller paths)."""
    raw = config.get(name)
    if not raw:
        return None
    if "-----BEGIN" not in raw:
        path = Path(raw) if Path(raw).is_absolute() else PROJECT_DIR / raw
        try:
            raw = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"moltbot:{name}: neither PEM text nor a readable PEM file ({path}: {exc})") from None
    if f"-----BEGIN {label}" not in raw and not (label == "PRIVATE KEY" and "PRIVATE KEY-----" in raw):
        raise ConfigError(f"moltbot:{name}: no '-----BEGIN {label}' block in it")
    return raw


def _namespace(config: pulumi.Config, name: str, default: str) -> str:
    namespace = config.get(name) or default
    if not _K8S_NAME.match(namespace) or len(namespace) > 63:
        raise ConfigError(f"moltbot:{name}: {namespace!r} is not a valid Kubernetes namespace name")
    return namespace


def _string_map(config: pulumi.Config, name: str) -> dict[str, str]:
    raw = config.get_object(name) or {}
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise ConfigError(f"moltbot:{name}: must be an object of string values")
    return raw


def _peer_labels(key: str, raw: Any) -> dict[str, dict[str, str]]:
    """A NetworkPolicy peer: `namespaceLabels` (required: a pod selector alone would only match this namespace)
    and `podLabels` (optional), each a map of label values."""
    if not isinstance(raw, dict) or set(raw) - {"namespaceLabels", "podLabels"}:
        raise ConfigError(f"{key}: must be an object with namespaceLabels and optionally podLabels")
    peer = {}
    for part in ("namespaceLabels", "podLabels"):
        labels = raw.get(part) or {}
        if not isinstance(labels, dict) or not all(isinstance(v, str) and isinstance(k, str)
                                                   for k, v in labels.items()):
            raise ConfigError(f"{key}: {part} must be an object of label values")
        peer[part] = labels
    if not peer["namespaceLabels"]:
        raise ConfigError(f"{key}: namespaceLabels is empty; an empty selector would admit every "
                          "namespace (use kubernetes.io/metadata.name: NAMESPACE)")
    return peer


def _peer(config: pulumi.Config, name: str) -> dict[str, dict[str, str]]:
    raw = config.get_object(name)
    return DEFAULT_PEERS[name] if raw is None else _peer_labels(f"moltbot:{name}", raw)


def registry_of(image: str) -> str:
    """The registry an image reference pulls from, as the Docker provider keys its credentials."""
    first, _, rest = image.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first
    return DOCKER_HUB_REGISTRY


def _env(config: pulumi.Config) -> dict[str, str]:
    raw = config.get_object("env") or {}
    if not isinstance(raw, dict):
        raise ConfigError("moltbot:env: must be an object of NAME: value pairs")
    env = {}
    for name, value in raw.items():
        if not _ENV_NAME.match(name):
            raise ConfigError(f"moltbot:env: {name!r} is not a MOLTBOT_* variable name (the runtime's settings; "
                              "the Ansible role's moltbot_env has the same rule)")
        if name in MANAGED_ENV:
            raise ConfigError(f"moltbot:env: {name} is set by the program; use {MANAGED_ENV[name]} instead")
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"moltbot:env: {name} must be a string, number or boolean")
        env[name] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def require_secret(key: str, remedy: str) -> None:
    """Refuses a value set without --secret: the stack file (and the state) would hold it in plain text."""
    if not pulumi.runtime.config.is_config_secret(f"moltbot:{key}"):
        raise ConfigError(f"moltbot:{key}: stored in plain text in the stack file; set it again with "
                          f"`pulumi config set --secret moltbot:{key}` ({remedy})")


def _plugin_env(config: pulumi.Config) -> tuple[pulumi.Output | None, tuple[str, ...]]:
    """moltbot:pluginEnv: the variables plugins' config.json files refer to (`{"env": "NAME"}`), such as a
    database URL with its password. A secret object (`pulumi config set --secret --path moltbot:pluginEnv.NAME`),
    read as plain text here only to check it, then kept as a secret Output."""
    raw = config.get_object("pluginEnv")
    if raw is None:
        return None, ()
    require_secret("pluginEnv", "with --path for one variable: moltbot:pluginEnv.NAME; and rotate what was exposed")
    if not isinstance(raw, dict):
        raise ConfigError("moltbot:pluginEnv: must be an object of NAME: value pairs")
    env = {}
    for name, value in raw.items():
        if not _PLUGIN_ENV_NAME.match(name) or _RESERVED_ENV.search(name):
            raise ConfigError(f"moltbot:pluginEnv: {name!r} is not a plugin variable name (letters, digits, '_'; "
                              "not MOLTBOT_* settings, which go in moltbot:env, nor PATH, HOME, PYTHON*, LD_*)")
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"moltbot:pluginEnv: {name} must be a string, number or boolean")
        text = str(value).lower() if isinstance(value, bool) else str(value)
        if "\n" in text or "\r" in text or "\0" in text:
            raise ConfigError(f"moltbot:pluginEnv: {name} holds a line break; one line per variable (as in the "
                              "Ansible role's env file)")
        env[name] = text
    if not env:
        return None, ()
    return pulumi.Output.secret(env), tuple(sorted(env))


def _ports(key: str, raw: Any) -> list[int]:
    """TCP ports, as numbers or digit strings (what `pulumi config set --path` may store)."""
    ports = [int(p) for p in raw if isinstance(p, int) or (isinstance(p, str) and p.isdigit())] \
        if isinstance(raw, list) else []
    if not ports or len(ports) != len(raw) or not all(0 < p < 65536 for p in ports):
        raise ConfigError(f"{key}: ports must be a non-empty list of TCP ports (e.g. [5432])")
    return ports


def _egress(config: pulumi.Config) -> tuple[dict[str, Any], ...]:
    """moltbot:egress: where the pods may connect besides the cluster DNS (the NetworkPolicy's egress): a list of
    `{"cidr": "10.0.5.0/24", "except": [...], "ports": [5432]}` or `{"namespaceLabels": {...}, "podLabels": {...},
    "ports": [443]}`, for the service models' upstreams and the plugins' databases. The metadata addresses are
    cut out of every CIDR that holds them."""
    raw = config.get_object("egress") or []
    if not isinstance(raw, list):
        raise ConfigError("moltbot:egress: must be a list of {cidr, ports} or {namespaceLabels, podLabels, ports}")
    rules = []
    for index, entry in enumerate(raw):
        key = f"moltbot:egress[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{key}: must be an object")
        ports = _ports(key, entry.get("ports"))
        if "cidr" in entry:
            if set(entry) - {"cidr", "except", "ports"}:
                raise ConfigError(f"{key}: a CIDR rule takes cidr, except and ports only")
            try:
                network = ipaddress.ip_network(str(entry["cidr"]), strict=False)
                excepted = [ipaddress.ip_network(str(e), strict=False) for e in entry.get("except") or []]
            except ValueError as exc:
                raise ConfigError(f"{key}: {exc}") from None
            metadata = [ipaddress.ip_network(m) for m in METADATA_NETWORKS]
            if any(network.version == m.version and network.subnet_of(m) for m in metadata):
                raise ConfigError(f"{key}: {network} is the cloud metadata address, which the pods never reach")
            cut = excepted + [m for m in metadata if m.version == network.version and m.subnet_of(network)]
            if not all(e.version == network.version and e.subnet_of(network) for e in cut):
                raise ConfigError(f"{key}: every `except` must lie inside {network}")
            rules.append({"cidr": str(network), "except": sorted({str(e) for e in cut}), "ports": ports})
        else:
            peer = _peer_labels(key, {k: v for k, v in entry.items() if k != "ports"})
            rules.append({**peer, "ports": ports})
    return tuple(rules)


def _reject_unknown_keys() -> None:
    """Pulumi ignores keys nobody reads, so a misspelt key would silently fall back to its default."""
    # The engine hands a program its config either way: set in-process, or as PULUMI_CONFIG.
    present = set(pulumi.runtime.config.CONFIG.get()) | set(pulumi.runtime.config.get_config_env())
    for full_key in sorted(present):
        namespace, _, key = full_key.partition(":")
        if namespace == "moltbot" and key not in KNOWN_KEYS:
            close = difflib.get_close_matches(key, KNOWN_KEYS, n=1)
            hint = f"; did you mean moltbot:{close[0]}?" if close else "; the settings are listed in README.md"
            raise ConfigError(f"{full_key} is not a setting of this program{hint}")


def load(config: pulumi.Config | None = None) -> Settings:
    """Reads the `moltbot` namespace of the current stack's config."""
    _reject_unknown_keys()
    config = config or pulumi.Config("moltbot")

    platform = config.get("platform") or "docker"
    if platform not in ("docker", "kubernetes"):
        raise ConfigError(f"moltbot:platform: {platform!r} is not docker or kubernetes")

    gpu = _bool(config, "gpu", False)
    image = config.get("image") or (GPU_IMAGE if gpu else CPU_IMAGE)
    if gpu and image.rsplit("/", 1)[-1].split("@")[0] == CPU_IMAGE:
        raise ConfigError(
            f"moltbot:gpu is true but moltbot:image is {image}, the CPU-only image; "
            f"set moltbot:image to {GPU_IMAGE} (built with `make image VARIANT=gpu`) or moltbot:gpu to false"
        )

    cpus_raw = config.get("cpus") or "2"
    try:
        cpus = float(cpus_raw)
    except ValueError:
        raise ConfigError(f"moltbot:cpus: {cpus_raw!r} is not a number of CPUs (e.g. 2 or 1.5)") from None
    if cpus <= 0:
        raise ConfigError(f"moltbot:cpus: {cpus_raw!r} must be more than 0")

    image_pull = config.get("imagePull") or "missing"
    if image_pull not in ("missing", "always"):
        raise ConfigError(f"moltbot:imagePull: {image_pull!r} is not missing or always")
    if image_pull == "always" and "@sha256:" in image:
        raise ConfigError(f"moltbot:imagePull: always has nothing to pull for {image}, pinned by digest; "
                          "drop the digest to follow the tag, or moltbot:imagePull to keep the pin")
    registry_username = config.get("registryUsername")
    registry_password = config.get_secret("registryPassword")
    if (registry_username is None) != (registry_password is None):
        raise ConfigError("moltbot:registryUsername and moltbot:registryPassword must be set together "
                          "(the password with `pulumi config set --secret`)")
    if registry_password is not None:
        require_secret("registryPassword", "and change the exposed password")

    http_port = _port(config, "httpPort", contract.HTTP_PORT)
    https_port = _port(config, "httpsPort", contract.HTTPS_PORT)
    if http_port == https_port:
        raise ConfigError(f"moltbot:httpPort and moltbot:httpsPort are both {http_port}")

    tls_cert, tls_key = _pem(config, "tlsCert", "CERTIFICATE"), _pem(config, "tlsKey", "PRIVATE KEY")
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("moltbot:tlsCert and moltbot:tlsKey must be set together")
    # A key given inline is the secret itself; a file path on the machine running `pulumi up` is not.
    if "-----BEGIN" in (config.get("tlsKey") or ""):
        require_secret("tlsKey", "< privkey.pem; and replace the exposed key and its certificate")

    namespace = _namespace(config, "namespace", "moltbot")
    service_type = config.get("serviceType") or "ClusterIP"
    if service_type not in ("ClusterIP", "NodePort", "LoadBalancer"):
        raise ConfigError(f"moltbot:serviceType: {service_type!r} is not ClusterIP, NodePort or LoadBalancer")

    # Read as plain text to check it now (before any resource is declared), then kept as a secret Output.
    keys = _api_keys(config.get("apiKeys") or "")
    if keys:
        require_secret("apiKeys", "and rotate the exposed keys")
    api_keys = pulumi.Output.secret(keys) if keys else None
    admin_keys = _api_keys(config.get("adminApiKeys") or "", "moltbot:adminApiKeys")
    if admin_keys:
        require_secret("adminApiKeys", "and rotate the exposed keys")
    if set(admin_keys) & set(keys):
        raise ConfigError("moltbot:adminApiKeys: a key is also in moltbot:apiKeys; admin keys must be separate")
    admin_api_keys = pulumi.Output.secret(admin_keys) if admin_keys else None
    bind_address = _ip(config, "bindAddress")
    # With TLS, plain HTTP stays on the host's loopback unless moltbot:httpBindAddress opens it.
    http_bind_address = _ip(config, "httpBindAddress", "127.0.0.1" if tls_cert is not None else bind_address)
    published = [http_bind_address] + ([bind_address] if tls_cert is not None else [])
    public = [address for address in published if not ipaddress.ip_address(address).is_loopback]
    if api_keys is None and platform == "kubernetes":
        raise ConfigError(
            "moltbot:apiKeys: required on Kubernetes, even behind a ClusterIP Service (every pod in the cluster "
            "can reach it); set it with `pulumi config set --secret moltbot:apiKeys KEY1,KEY2`"
        )
    if api_keys is None and public:
        raise ConfigError(
            f"moltbot:apiKeys: required when the API is published on {public[0]}; "
            "set it with `pulumi config set --secret moltbot:apiKeys KEY1,KEY2`"
        )

    monitoring = _bool(config, "monitoring", platform == "docker")
    grafana_password = config.get_secret("grafanaAdminPassword")
    if grafana_password is not None:
        require_secret("grafanaAdminPassword", "and change the exposed password in Grafana")
    if monitoring and platform == "docker" and grafana_password is None:
        raise ConfigError(
            "moltbot:grafanaAdminPassword: required with moltbot:monitoring; "
            "set it with `pulumi config set --secret moltbot:grafanaAdminPassword`"
        )

    replicas = _int(config, "replicas", 3)
    if replicas < 1:
        raise ConfigError(f"moltbot:replicas: {replicas} must be at least 1")
    max_replicas = _int(config, "maxReplicas", max(replicas, 10))
    if max_replicas < replicas:
        raise ConfigError(f"moltbot:maxReplicas: {max_replicas} is below moltbot:replicas ({replicas})")
    target_cpu = _int(config, "targetCpuUtilization", 70)
    if not 1 <= target_cpu <= 100:
        raise ConfigError(f"moltbot:targetCpuUtilization: {target_cpu} is not a percentage (1-100)")

    docker_host = config.get("dockerHost")
    if docker_host is not None and not re.match(r"^(ssh|tcp|unix)://", docker_host):
        raise ConfigError(f"moltbot:dockerHost: {docker_host!r} must start with ssh://, tcp:// or unix://")

    data_dir = config.get("dataDir")
    if data_dir is not None and not data_dir.startswith("/"):
        raise ConfigError(f"moltbot:dataDir: {data_dir!r} must be an absolute path on the Docker host")

    env = _env(config)
    plugin_env, plugin_env_names = _plugin_env(config)
    raw_shutdown = env.setdefault("MOLTBOT_SHUTDOWN_TIMEOUT", str(DEFAULT_SHUTDOWN_TIMEOUT))
    try:
        shutdown_timeout = math.ceil(float(raw_shutdown))
    except ValueError:
        raise ConfigError(
            f"moltbot:env: MOLTBOT_SHUTDOWN_TIMEOUT {raw_shutdown!r} is not a number of seconds") from None
    grace = _int(config, "terminationGracePeriodSeconds", PRE_STOP_SLEEP_SECONDS + shutdown_timeout + 20)
    if grace < PRE_STOP_SLEEP_SECONDS + shutdown_timeout + 5:
        raise ConfigError(
            f"moltbot:terminationGracePeriodSeconds: {grace} leaves no time to drain; it needs the preStop sleep "
            f"({PRE_STOP_SLEEP_SECONDS} s) + MOLTBOT_SHUTDOWN_TIMEOUT ({shutdown_timeout} s) + 5 s"
        )

    models_storage = config.get("modelsStorage") or "20Gi"
    if not re.match(r"^\d+(Mi|Gi|Ti)$", models_storage):
        raise ConfigError(f"moltbot:modelsStorage: {models_storage!r} is not a size like 20Gi")
    access_mode = config.get("modelsAccessMode") or "ReadWriteOnce"
    if access_mode not in ("ReadWriteMany", "ReadWriteOnce", "ReadOnlyMany", "ReadWriteOncePod"):
        raise ConfigError(f"moltbot:modelsAccessMode: {access_mode!r} is not a PersistentVolume access mode")
    if access_mode == "ReadWriteOncePod" and max_replicas > 1:
        raise ConfigError("moltbot:modelsAccessMode: ReadWriteOncePod allows one pod, but moltbot:replicas "
                          f"is {replicas} and moltbot:maxReplicas {max_replicas}")

    # With an ssh:// or tcp:// engine the URLs name that host; on the local engine, localhost.
    remote = re.match(r"^(?:ssh|tcp)://(?:[^@/]*@)?([^:/]+)", docker_host or "")
    public_host = config.get("publicHost") or (remote.group(1) if remote else "localhost")
    machine = remote.group(1) if remote else socket.gethostname()

    return Settings(
        platform=platform,
        image=image,
        image_pull=image_pull,
        registry=registry_of(image),
        registry_username=registry_username,
        registry_password=registry_password,
        http_port=http_port,
        https_port=https_port,
        bind_address=bind_address,
        http_bind_address=http_bind_address,
        public_host=public_host,
        machine=machine,
        data_dir=data_dir.rstrip("/") if data_dir else None,
        cpus=cpus,
        memory_bytes=parse_memory("moltbot:memory", config.get("memory") or contract.DEFAULT_MEMORY),
        pids_limit=_pids_limit(config),
        gpu=gpu,
        api_keys=api_keys,
        admin_api_keys=admin_api_keys,
        tls_cert=pulumi.Output.from_input(tls_cert) if tls_cert is not None else None,
        tls_key=pulumi.Output.secret(tls_key) if tls_key is not None else None,
        env=env,
        plugin_env=plugin_env,
        plugin_env_names=plugin_env_names,
        docker_host=docker_host,
        monitoring=monitoring,
        monitoring_bind_address=_ip(config, "monitoringBindAddress"),
        monitoring_dir=_project_path(config, "monitoringDir", "../../monitoring"),
        grafana_admin_password=grafana_password,
        prometheus_port=_port(config, "prometheusPort", 9090),
        alertmanager_port=_port(config, "alertmanagerPort", 9093),
        grafana_port=_port(config, "grafanaPort", 3000),
        images={key: config.get(key) or default for key, default in DEFAULT_IMAGES.items()},
        namespace=namespace,
        replicas=replicas,
        max_replicas=max_replicas,
        target_cpu_utilization=target_cpu,
        models_storage=models_storage,
        models_access_mode=access_mode,
        storage_class=config.get("storageClass"),
        prometheus_operator=_bool(config, "prometheusOperator", False),
        operator_labels=_string_map(config, "operatorLabels"),
        dashboards_namespace=_namespace(config, "dashboardsNamespace", namespace),
        ingress_from=_peer(config, "ingressFrom"),
        prometheus_from=_peer(config, "prometheusFrom"),
        dns_to=_peer(config, "dnsTo"),
        egress=_egress(config),
        model_configs_dir=_project_path(config, "modelConfigsDir", None),
        plugins_dir=_project_path(config, "pluginsDir", None),
        service_type=service_type,
        termination_grace_seconds=grace,
        shutdown_timeout=shutdown_timeout,
    )


def text_files(folder: Path | None, pattern: str, key: str, max_bytes: int | None = None) -> dict[str, str]:
    """Relative path -> text of each file under `folder` matching `pattern` (caches skipped)."""
    if folder is None:
        return {}
    files = {}
    for path in sorted(folder.rglob(pattern)):
        relative = path.relative_to(folder)
        if not path.is_file() or "__pycache__" in relative.parts or path.suffix == ".pyc":
            continue
        try:
            files[relative.as_posix()] = path.read_text()
        except UnicodeDecodeError:
            raise ConfigError(f"{key}: {path} is not a text file; only text files are carried") from None
    size = sum(len(text.encode()) for text in files.values())
    if max_bytes is not None and size > max_bytes:
        raise ConfigError(f"{key}: {folder} holds {size} bytes of text, more than a ConfigMap's {max_bytes}")
    return files


def container_env(settings: Settings) -> dict[str, Any]:
    """MOLTBOT_* variables common to both platforms (the keys file and TLS are added by each platform)."""
    env = {
        "MOLTBOT_HOST": "0.0.0.0",
        "MOLTBOT_PORT": str(contract.HTTP_PORT),
        "MOLTBOT_HTTPS_PORT": str(contract.HTTPS_PORT),
        "MOLTBOT_MODELS_DIR": contract.MODELS_DIR,
        "MOLTBOT_PLUGINS_DIR": contract.PLUGINS_DIR,
        "MOLTBOT_LOGS_DIR": contract.LOGS_DIR,
        "MOLTBOT_DEVICE": "cuda" if settings.gpu else "cpu",
    }
    env.update(settings.env)
    return env
