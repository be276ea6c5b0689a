"""The Docker stacks (Pulumi.dev.yaml, Pulumi.prod.yaml) as the program declares them, under Pulumi's mock engine."""

from __future__ import annotations

import json
import socket

import pytest
import yaml

import contract
from pulumi_harness import MOCK_GATEWAY, MOCK_REGISTRY_DIGEST, PROGRAM_DIR, SECRETS, StackRun, fake_image_state, \
    run_stack
from stack_config import API_KEYS_FILE

SECRETS_DIR = API_KEYS_FILE.rsplit("/", 1)[0]

CONTAINER = "docker:index/container:Container"
VOLUME = "docker:index/volume:Volume"
NETWORK = "docker:index/network:Network"
IMAGE = "docker:index/remoteImage:RemoteImage"
MONITORING_DIR = PROGRAM_DIR.parent.parent / "monitoring"
RUNTIME_USER = f"{contract.RUNTIME_UID}:{contract.RUNTIME_GID}"
KEYS = SECRETS["moltbot:apiKeys"].split(",")


def env_of(container) -> dict[str, str]:
    return dict(item.split("=", 1) for item in container.inputs["envs"])


def uploads_of(container) -> dict[str, str]:
    return {u["file"]: u["content"] for u in container.inputs.get("uploads", [])}


def test_dev_declares_exactly_the_single_host_resources(dev_stack: StackRun):
    assert dev_stack.summary() == sorted([
        ("moltbot:docker:Storage", "storage"),
        (NETWORK, "storage-network"),
        (NETWORK, "storage-monitoring-network"),
        *[(VOLUME, f"storage-{name}") for name in
          ("models", "plugins", "logs", "secrets", "prometheus", "alertmanager", "grafana")],
        ("moltbot:docker:Runtime", "moltbot"),
        (IMAGE, "moltbot-image"),
        (CONTAINER, "moltbot-init"),
        (CONTAINER, "moltbot-container"),
        ("moltbot:docker:Monitoring", "monitoring"),
        *[(CONTAINER, f"monitoring-{name}") for name in
          ("prometheus", "alertmanager", "grafana", "node-exporter")],
    ])


def test_children_hang_under_their_components(dev_stack: StackRun):
    owners = {
        "storage-network": ("moltbot:docker:Storage", "storage"),
        "storage-models": ("moltbot:docker:Storage", "storage"),
        "moltbot-container": ("moltbot:docker:Runtime", "moltbot"),
        "moltbot-init": ("moltbot:docker:Runtime", "moltbot"),
        "moltbot-image": ("moltbot:docker:Runtime", "moltbot"),
        "monitoring-grafana": ("moltbot:docker:Monitoring", "monitoring"),
        "monitoring-node-exporter": ("moltbot:docker:Monitoring", "monitoring"),
    }
    for child, (owner_type, owner_name) in owners.items():
        declared = next(r for r in dev_stack.resources if r.name == child)
        assert declared.parent == dev_stack.urn_of(owner_type, owner_name), child


def test_dev_runtime_container(dev_stack: StackRun):
    runtime = dev_stack.one(CONTAINER, "moltbot-container").inputs
    # The ID of the image the RemoteImage resolved, as the provider reads a container back.
    assert runtime["image"] == fake_image_state("moltbot:latest")["imageId"]
    assert runtime["name"] == "moltbot"
    # 8443 is published only with TLS (test_tls_...).
    assert [(p["internal"], p["external"], p["ip"]) for p in runtime["ports"]] == [
        (contract.HTTP_PORT, 8080, "127.0.0.1")]
    assert [(v["containerPath"], v["volumeName"], v["readOnly"]) for v in runtime["volumes"]] == [
        (contract.MODELS_DIR, "moltbot-models", False), (contract.PLUGINS_DIR, "moltbot-plugins", True),
        (contract.LOGS_DIR, "moltbot-logs", False), (SECRETS_DIR, "moltbot-secrets", True)]
    assert "uploads" not in runtime, "Docker refuses uploads into a read-only root; the init container has them"
    assert runtime["restart"] == "unless-stopped"
    assert "gpus" not in runtime
    assert runtime["cpus"] == "2" and runtime["memory"] == 4096
    assert runtime["logDriver"] == "json-file"
    assert runtime["logOpts"] == {"max-size": "10m", "max-file": "3"}
    assert runtime["healthcheck"]["tests"][:2] == ["CMD", "python"]
    # Healthy once every model loaded: `pulumi up` (wait) fails for a container that never gets there (#25).
    assert "http://127.0.0.1:8080/ready" in runtime["healthcheck"]["tests"][-1]
    assert runtime["wait"] is True
    assert runtime["networksAdvanced"] == [{"name": "moltbot-net", "aliases": ["moltbot"]}]
    assert env_of(dev_stack.one(CONTAINER, "moltbot-container")) == {
        "MOLTBOT_HOST": "0.0.0.0",
        "MOLTBOT_PORT": str(contract.HTTP_PORT),
        "MOLTBOT_HTTPS_PORT": str(contract.HTTPS_PORT),
        "MOLTBOT_MODELS_DIR": contract.MODELS_DIR,
        "MOLTBOT_PLUGINS_DIR": contract.PLUGINS_DIR,
        "MOLTBOT_LOGS_DIR": contract.LOGS_DIR,
        "MOLTBOT_DEVICE": "cpu",
        "MOLTBOT_LOG_LEVEL": "DEBUG",
        "MOLTBOT_SHUTDOWN_TIMEOUT": "30",
        # The keys are a file, not variables that `docker inspect` shows.
        "MOLTBOT_API_KEYS_FILE": API_KEYS_FILE,
    }
    # Docker sends SIGTERM, then waits the drain time plus a margin before it kills.
    assert runtime["stopSignal"] == "SIGTERM" and runtime["stopTimeout"] == 45
    assert runtime["destroyGraceSeconds"] == 45


def test_runtime_container_is_hardened(dev_stack: StackRun, prod_stack: StackRun):
    for run in (dev_stack, prod_stack):
        runtime = run.one(CONTAINER, "moltbot-container").inputs
        assert runtime["user"] == RUNTIME_USER
        assert runtime["readOnly"] is True
        assert runtime["tmpfs"] == {"/tmp": "rw,nosuid,nodev,size=512m"}
        assert runtime["capabilities"] == {"drops": ["ALL"]}
        assert runtime["securityOpts"] == ["no-new-privileges"]
        assert "privileged" not in runtime and "pidMode" not in runtime and "networkMode" not in runtime


def test_init_container_fills_the_volumes_and_hands_them_to_the_service_user(dev_stack: StackRun):
    init = dev_stack.one(CONTAINER, "moltbot-init")
    inputs = init.inputs
    runtime = dev_stack.one(CONTAINER, "moltbot-container").inputs
    assert inputs["image"] == runtime["image"]
    # The same volumes as the runtime, all writable here (Docker copies uploads only into writable volumes).
    assert [(v["containerPath"], v["volumeName"]) for v in inputs["volumes"]] == \
        [(v["containerPath"], v["volumeName"]) for v in runtime["volumes"]]
    assert not any(v["readOnly"] for v in inputs["volumes"])
    # Runs once to completion, and may stay exited; no network, only the capabilities chown and chmod need.
    assert inputs["mustRun"] is False and inputs["attach"] is True and inputs["restart"] == "no"
    assert inputs["networkMode"] == "none"
    assert inputs["capabilities"] == {"drops": ["ALL"], "adds": ["CHOWN", "FOWNER"]}
    assert inputs["securityOpts"] == ["no-new-privileges"]
    script = inputs["entrypoints"][2]
    assert inputs["entrypoints"][:2] == ["/bin/sh", "-ec"]
    assert f"chown {RUNTIME_USER} {contract.MODELS_DIR} {contract.LOGS_DIR}" in script
    assert f"chown {RUNTIME_USER} {API_KEYS_FILE} && chmod 0400 {API_KEYS_FILE}" in script
    # The keys file: one key per line, private to the service user, a Pulumi secret.
    keys_upload = next(u for u in inputs["uploads"] if u["file"] == API_KEYS_FILE)
    assert keys_upload["content"] == "".join(f"{key}\n" for key in KEYS)
    assert keys_upload["permissions"] == "0400" and keys_upload["owner"] == str(contract.RUNTIME_UID)
    assert init.has_secret
    # A new init container (new uploads) means a new runtime container: its ID is a label of the runtime.
    labels = {label["label"]: label["value"] for label in runtime["labels"]}
    assert labels["com.moltbot.init"] == "moltbot-init-id"


def test_runtime_image_is_a_remote_image_and_containers_use_its_id(dev_stack: StackRun):
    image = dev_stack.one(IMAGE, "moltbot-image").inputs
    assert image == {"name": "moltbot:latest", "keepLocally": True}
    assert dev_stack.outputs["imageId"] == fake_image_state("moltbot:latest")["imageId"]


def test_an_image_pinned_by_digest_is_pulled_by_it():
    pinned = "registry.example.com/moltbot:1.4@sha256:" + "e" * 64
    run = run_stack("dev", overrides={"moltbot:image": pinned})
    assert run.one(IMAGE, "moltbot-image").inputs["name"] == pinned
    assert run.one(CONTAINER, "moltbot-container").inputs["image"] == fake_image_state(pinned)["imageId"]


def test_image_pull_always_follows_the_registry_digest_of_the_tag():
    # The registry's current digest for the tag becomes the image name: when the tag moves, the RemoteImage
    # is replaced (pulled), its ID changes, and so the containers are replaced.
    run = run_stack("dev", overrides={"moltbot:image": "registry.example.com:5000/team/moltbot:stable",
                                      "moltbot:imagePull": "always"})
    name = f"registry.example.com:5000/team/moltbot@{MOCK_REGISTRY_DIGEST}"
    assert run.one(IMAGE, "moltbot-image").inputs["name"] == name
    assert run.one(CONTAINER, "moltbot-container").inputs["image"] == fake_image_state(name)["imageId"]


@pytest.mark.parametrize("image, registry", [
    ("registry.example.com/team/moltbot:1.4", "registry.example.com"),
    ("localhost:5000/moltbot:latest", "localhost:5000"),
    ("team/moltbot:1.4", "registry-1.docker.io"),
])
def test_registry_login_goes_to_the_provider_as_a_secret(image, registry):
    run = run_stack("dev", overrides={"moltbot:image": image, "moltbot:registryUsername": "deploy",
                                      "moltbot:registryPassword": "registry-test-password"})
    provider = run.one("pulumi:providers:docker", "docker-host")
    assert provider.has_secret
    auth = provider.inputs["registryAuth"]
    auth = json.loads(auth) if isinstance(auth, str) else auth
    assert auth == [{"address": registry, "username": "deploy", "password": "registry-test-password"}]
    assert "host" not in provider.inputs, "no moltbot:dockerHost: the local engine"
    # Every Docker resource, the image pull included, goes through that provider.
    assert {r.provider for r in run.resources if r.type.startswith("docker:index/")} == \
        {f"{provider.urn}::docker-host-id"}

def test_a_longer_drain_gets_a_longer_stop_timeout():
    run = run_stack("dev", overrides={"moltbot:env": '{"MOLTBOT_SHUTDOWN_TIMEOUT": "120"}'})
    runtime = run.one(CONTAINER, "moltbot-container")
    assert runtime.inputs["stopTimeout"] == 135
    assert "MOLTBOT_SHUTDOWN_TIMEOUT=120" in runtime.inputs["envs"]


def test_secrets_stay_secret(dev_stack: StackRun):
    assert dev_stack.one(CONTAINER, "moltbot-init").has_secret, "the API keys file must be a secret"
    runtime = dev_stack.one(CONTAINER, "moltbot-container")
    assert not runtime.has_secret, "no secret in the runtime's settings"
    assert not [item for item in runtime.inputs["envs"] for key in KEYS if key in item]
    assert dev_stack.one(CONTAINER, "monitoring-grafana").has_secret, "the Grafana password must be a secret"
    assert not dev_stack.one(CONTAINER, "monitoring-prometheus").has_secret


def test_without_api_keys_on_loopback_there_is_no_keys_file_and_no_secret():
    run = run_stack("dev", drop=("moltbot:apiKeys",))
    runtime = run.one(CONTAINER, "moltbot-container")
    assert not [name for name in env_of(runtime) if name.startswith("MOLTBOT_API_KEYS")]
    assert SECRETS_DIR not in [v["containerPath"] for v in runtime.inputs["volumes"]]
    assert not run.one(CONTAINER, "moltbot-init").has_secret


def test_dev_monitoring_services(dev_stack: StackRun):
    prometheus = dev_stack.one(CONTAINER, "monitoring-prometheus").inputs
    assert prometheus["image"] == "prom/prometheus:v2.55.1"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    assert prometheus["ports"] == [{"internal": 9090, "external": 9090, "ip": "127.0.0.1"}]
    assert prometheus["volumes"][0]["volumeName"] == "moltbot-prometheus"
    uploads = uploads_of(dev_stack.one(CONTAINER, "monitoring-prometheus"))
    assert uploads["/etc/prometheus/prometheus.yml"] == (MONITORING_DIR / "prometheus/prometheus.yml").read_text()
    for rule_file in (MONITORING_DIR / "prometheus/rules").glob("*.yml"):
        assert uploads[f"/etc/prometheus/rules/{rule_file.name}"] == rule_file.read_text()
    assert not [f for f in uploads if "/tests/" in f or f.endswith(".example")]
    # file_sd targets for prometheus.yml's jobs: the containers by their aliases on the stack network.
    groups = {f.rsplit("/", 1)[1]: yaml.safe_load(c) for f, c in uploads.items() if "/targets/" in f}
    assert {name: [group["targets"] for group in file] for name, file in groups.items()} == {
        "moltbot.yml": [[f"moltbot:{contract.HTTP_PORT}"]], "node.yml": [["node-exporter:9100"]],
        "alertmanager.yml": [["alertmanager:9093"]]}
    # One machine: the same `host` label in every job's file (the rules join jobs on it), here the machine
    # running the local engine.
    assert {name: file[0]["labels"] for name, file in groups.items()} == {
        name: {"host": socket.gethostname(), "stack": "dev"} for name in groups}

    alertmanager = dev_stack.one(CONTAINER, "monitoring-alertmanager")
    assert uploads_of(alertmanager)["/etc/alertmanager/alertmanager.yml"] == \
        (MONITORING_DIR / "alertmanager/alertmanager.yml").read_text()

    grafana = dev_stack.one(CONTAINER, "monitoring-grafana")
    grafana_uploads = uploads_of(grafana)
    assert grafana_uploads["/etc/grafana/provisioning/datasources/prometheus.yml"] == \
        (MONITORING_DIR / "grafana/provisioning/datasources/prometheus.yml").read_text()
    dashboards = {f.rsplit("/", 1)[1] for f in grafana_uploads if f.startswith("/var/lib/grafana/dashboards/moltbot/")}
    assert dashboards == {p.name for p in (MONITORING_DIR / "grafana/dashboards").glob("*.json")} - {"moltbot-gpu.json"}
    grafana_env = env_of(grafana)
    # The admin password is a file (test_pulumi_isolation_and_secrets.py), not a variable.
    assert "GF_SECURITY_ADMIN_PASSWORD" not in grafana_env
    assert grafana_env["PROMETHEUS_URL"] == "http://prometheus:9090"
    assert grafana_env["GF_USERS_ALLOW_SIGN_UP"] == "false"

    node = dev_stack.one(CONTAINER, "monitoring-node-exporter").inputs
    # The host's network (its interfaces' metrics), listening only on the stack network's bridge address.
    assert node["networkMode"] == "host" and "networksAdvanced" not in node and "hostname" not in node
    assert node["pidMode"] == "host"
    assert node["command"] == ["--path.rootfs=/host", f"--web.listen-address={MOCK_GATEWAY}:9100"]
    assert node["mounts"][0]["source"] == "/" and node["mounts"][0]["readOnly"] is True
    assert "ports" not in node
    # Prometheus reaches it by the name of its file_sd target.
    assert prometheus["hosts"] == [{"host": "node-exporter", "ip": MOCK_GATEWAY}]


def test_dev_outputs_are_the_urls(dev_stack: StackRun):
    assert dev_stack.outputs == {
        "url": "http://127.0.0.1:8080",
        "container": "moltbot",
        "imageId": fake_image_state("moltbot:latest")["imageId"],
        "network": "moltbot-net",
        "monitoringNetwork": "moltbot-monitoring-net",
        "prometheusUrl": "http://127.0.0.1:9090",
        "alertmanagerUrl": "http://127.0.0.1:9093",
        "grafanaUrl": "http://127.0.0.1:3000",
    }


def test_prod_gpu_host_paths_and_public_ports(prod_stack: StackRun):
    runtime = prod_stack.one(CONTAINER, "moltbot-container")
    inputs = runtime.inputs
    assert prod_stack.one(IMAGE, "moltbot-image").inputs["name"] == "moltbot:gpu" and inputs["gpus"] == "all"
    assert env_of(runtime)["MOLTBOT_DEVICE"] == "cuda"
    assert {p["ip"] for p in inputs["ports"]} == {"0.0.0.0"}
    assert [(v["hostPath"], v["containerPath"]) for v in inputs["volumes"]] == [
        ("/data/moltbot/models", contract.MODELS_DIR), ("/data/moltbot/plugins", contract.PLUGINS_DIR),
        ("/data/moltbot/logs", contract.LOGS_DIR), ("/data/moltbot/secrets", SECRETS_DIR)]
    assert inputs["cpus"] == "8" and inputs["memory"] == 32 * 1024
    # Runtime data sets live on the host; only monitoring data gets named volumes.
    assert {r.name for r in prod_stack.of_type(VOLUME)} == {
        "storage-prometheus", "storage-alertmanager", "storage-grafana"}
    dcgm = prod_stack.one(CONTAINER, "monitoring-dcgm-exporter").inputs
    assert dcgm["gpus"] == "all" and dcgm["image"].startswith("nvcr.io/nvidia/k8s/dcgm-exporter:")
    prometheus_uploads = uploads_of(prod_stack.one(CONTAINER, "monitoring-prometheus"))
    assert yaml.safe_load(prometheus_uploads["/etc/prometheus/targets/dcgm.yml"])[0]["targets"] == \
        ["dcgm-exporter:9400"]
    # The runtime's group marks a GPU host.
    assert yaml.safe_load(prometheus_uploads["/etc/prometheus/targets/moltbot.yml"])[0]["labels"]["gpu"] == "true"
    grafana_uploads = uploads_of(prod_stack.one(CONTAINER, "monitoring-grafana"))
    assert "/var/lib/grafana/dashboards/moltbot/moltbot-gpu.json" in grafana_uploads
    # Monitoring UIs stay on loopback even though the API is public.
    assert prod_stack.one(CONTAINER, "monitoring-grafana").inputs["ports"][0]["ip"] == "127.0.0.1"


def test_dcgm_exporter_only_on_gpu_stacks(dev_stack: StackRun, prod_stack: StackRun):
    assert not [r for r in dev_stack.resources if "dcgm" in r.name]
    assert len([r for r in prod_stack.resources if "dcgm" in r.name]) == 1


def test_remote_engine_gets_its_own_provider_and_names_the_urls():
    run = run_stack("prod", overrides={"moltbot:dockerHost": "ssh://deploy@gpu-1.internal:2222"})
    provider = run.one("pulumi:providers:docker", "docker-host")
    assert provider.inputs["host"] == "ssh://deploy@gpu-1.internal:2222"
    assert run.outputs["url"] == "http://gpu-1.internal:8080"
    # The remote host's name is the `host` label of the stack's scrape targets.
    targets = {f: yaml.safe_load(c) for f, c in uploads_of(run.one(CONTAINER, "monitoring-prometheus")).items()
               if "/targets/" in f}
    assert {file[0]["labels"]["host"] for file in targets.values()} == {"gpu-1.internal"}
    # Every Docker resource, declared inside a component, goes through that provider.
    docker_resources = [r for r in run.resources if r.type.startswith("docker:index/")]
    assert len(docker_resources) == 13  # two networks, three volumes, the image, seven containers
    assert {r.provider for r in docker_resources} == {f"{provider.urn}::docker-host-id"}


def test_local_engine_uses_the_default_provider(dev_stack: StackRun):
    assert not dev_stack.of_type("pulumi:providers:docker")
    assert all("docker-host" not in r.provider for r in dev_stack.resources)


CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"


def test_tls_material_is_uploaded_the_key_kept_secret_and_8443_published():
    run = run_stack("dev", overrides={"moltbot:tlsCert": CERT, "moltbot:tlsKey": KEY, "moltbot:bindAddress": "0.0.0.0"},
                    drop=("moltbot:pluginsDir",))
    init = run.one(CONTAINER, "moltbot-init")
    assert init.has_secret
    assert uploads_of(init) == {contract.TLS_CERT: CERT, contract.TLS_KEY: KEY,
                                API_KEYS_FILE: "".join(f"{key}\n" for key in KEYS)}
    key_upload = next(u for u in init.inputs["uploads"] if u["file"] == contract.TLS_KEY)
    assert key_upload["permissions"] == "0400" and key_upload["owner"] == str(contract.RUNTIME_UID)
    assert f"chown {RUNTIME_USER} {contract.TLS_KEY} {API_KEYS_FILE}" in init.inputs["entrypoints"][2]
    runtime = run.one(CONTAINER, "moltbot-container")
    env = env_of(runtime)
    assert env["MOLTBOT_TLS_CERT"] == contract.TLS_CERT and env["MOLTBOT_TLS_KEY"] == contract.TLS_KEY
    assert (contract.TLS_DIR, "moltbot-tls", True) in \
        [(v["containerPath"], v["volumeName"], v["readOnly"]) for v in runtime.inputs["volumes"]]
    # With TLS, plain HTTP stays on the host's loopback; HTTPS is on the bind address.
    assert [(p["internal"], p["external"], p["ip"]) for p in runtime.inputs["ports"]] == [
        (contract.HTTP_PORT, 8080, "127.0.0.1"), (contract.HTTPS_PORT, 8443, "0.0.0.0")]
    assert run.outputs["url"] == "https://localhost:8443"


def test_with_tls_plain_http_is_opened_only_when_asked():
    run = run_stack("prod", overrides={"moltbot:tlsCert": CERT, "moltbot:tlsKey": KEY,
                                       "moltbot:httpBindAddress": "0.0.0.0"})
    ports = run.one(CONTAINER, "moltbot-container").inputs["ports"]
    assert [(p["internal"], p["ip"]) for p in ports] == [(contract.HTTP_PORT, "0.0.0.0"),
                                                         (contract.HTTPS_PORT, "0.0.0.0")]


def test_tls_files_are_read_from_paths_like_the_ansible_role(tmp_path):
    (tmp_path / "fullchain.pem").write_text(CERT)
    (tmp_path / "privkey.pem").write_text(KEY)
    run = run_stack("dev", overrides={"moltbot:tlsCert": str(tmp_path / "fullchain.pem"),
                                      "moltbot:tlsKey": str(tmp_path / "privkey.pem")})
    uploads = uploads_of(run.one(CONTAINER, "moltbot-init"))
    assert uploads[contract.TLS_CERT] == CERT and uploads[contract.TLS_KEY] == KEY


def test_plugins_and_model_configs_are_copied_into_the_volumes(dev_stack: StackRun, tmp_path):
    plugins_dir = PROGRAM_DIR.parent.parent / "plugins"
    expected = {f"{contract.PLUGINS_DIR}/{p.relative_to(plugins_dir).as_posix()}": p.read_text()
                for p in plugins_dir.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    uploads = uploads_of(dev_stack.one(CONTAINER, "moltbot-init"))
    assert expected and {f: c for f, c in uploads.items() if f != API_KEYS_FILE} == expected

    (tmp_path / "assistant.json").write_text('{"name": "assistant"}')
    run = run_stack("dev", overrides={"moltbot:modelConfigsDir": str(tmp_path)},
                    drop=("moltbot:pluginsDir", "moltbot:apiKeys"))
    assert uploads_of(run.one(CONTAINER, "moltbot-init")) == {
        f"{contract.MODELS_DIR}/assistant.json": '{"name": "assistant"}'}


def test_monitoring_off_leaves_only_the_runtime():
    run = run_stack("dev", overrides={"moltbot:monitoring": "false"}, drop=("moltbot:grafanaAdminPassword",))
    assert [r.name for r in run.of_type(CONTAINER)] == ["moltbot-init", "moltbot-container"]
    assert {r.name for r in run.of_type(VOLUME)} == {"storage-models", "storage-plugins", "storage-logs",
                                                     "storage-secrets"}
    assert set(run.outputs) == {"url", "container", "imageId", "network"}
