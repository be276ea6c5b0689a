"""The Docker stacks (Pulumi.dev.yaml, Pulumi.prod.yaml) as the program declares them, under Pulumi's mock engine."""

from __future__ import annotations

import yaml

from pulumi_harness import PROGRAM_DIR, SECRETS, StackRun, run_stack

CONTAINER = "docker:index/container:Container"
VOLUME = "docker:index/volume:Volume"
NETWORK = "docker:index/network:Network"
MONITORING_DIR = PROGRAM_DIR.parent.parent / "monitoring"


def env_of(container) -> dict[str, str]:
    return dict(item.split("=", 1) for item in container.inputs["envs"])


def uploads_of(container) -> dict[str, str]:
    return {u["file"]: u["content"] for u in container.inputs.get("uploads", [])}


def test_dev_declares_exactly_the_single_host_resources(dev_stack: StackRun):
    assert dev_stack.summary() == sorted([
        ("moltbot:docker:Storage", "storage"),
        (NETWORK, "storage-network"),
        *[(VOLUME, f"storage-{name}") for name in
          ("models", "plugins", "logs", "prometheus", "alertmanager", "grafana")],
        ("moltbot:docker:Runtime", "moltbot"),
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
        "monitoring-grafana": ("moltbot:docker:Monitoring", "monitoring"),
        "monitoring-node-exporter": ("moltbot:docker:Monitoring", "monitoring"),
    }
    for child, (owner_type, owner_name) in owners.items():
        declared = next(r for r in dev_stack.resources if r.name == child)
        assert declared.parent == dev_stack.urn_of(owner_type, owner_name), child


def test_dev_runtime_container(dev_stack: StackRun):
    runtime = dev_stack.one(CONTAINER, "moltbot-container").inputs
    assert runtime["image"] == "moltbot:latest"
    assert runtime["name"] == "moltbot"
    # 8443 is published only with TLS (test_tls_...).
    assert [(p["internal"], p["external"], p["ip"]) for p in runtime["ports"]] == [(8080, 8080, "127.0.0.1")]
    assert [(v["containerPath"], v["volumeName"]) for v in runtime["volumes"]] == [
        ("/app/models", "moltbot-models"), ("/app/plugins", "moltbot-plugins"), ("/app/logs", "moltbot-logs")]
    assert runtime["restart"] == "unless-stopped"
    assert "gpus" not in runtime
    assert runtime["cpus"] == "2" and runtime["memory"] == 4096
    assert runtime["logDriver"] == "json-file"
    assert runtime["logOpts"] == {"max-size": "10m", "max-file": "3"}
    assert runtime["healthcheck"]["tests"][:2] == ["CMD", "python"]
    assert "http://127.0.0.1:8080/health" in runtime["healthcheck"]["tests"][-1]
    assert runtime["wait"] is True
    assert runtime["networksAdvanced"] == [{"name": "moltbot-net", "aliases": ["moltbot"]}]
    assert env_of(dev_stack.one(CONTAINER, "moltbot-container")) == {
        "MOLTBOT_HOST": "0.0.0.0",
        "MOLTBOT_PORT": "8080",
        "MOLTBOT_HTTPS_PORT": "8443",
        "MOLTBOT_MODELS_DIR": "/app/models",
        "MOLTBOT_PLUGINS_DIR": "/app/plugins",
        "MOLTBOT_LOGS_DIR": "/app/logs",
        "MOLTBOT_DEVICE": "cpu",
        "MOLTBOT_LOG_LEVEL": "DEBUG",
        "MOLTBOT_SHUTDOWN_TIMEOUT": "30",
        "MOLTBOT_API_KEYS": SECRETS["moltbot:apiKeys"],
    }
    # Docker sends SIGTERM, then waits the drain time plus a margin before it kills.
    assert runtime["stopSignal"] == "SIGTERM" and runtime["stopTimeout"] == 45
    assert runtime["destroyGraceSeconds"] == 45


def test_a_longer_drain_gets_a_longer_stop_timeout():
    run = run_stack("dev", overrides={"moltbot:env": '{"MOLTBOT_SHUTDOWN_TIMEOUT": "120"}'})
    runtime = run.one(CONTAINER, "moltbot-container")
    assert runtime.inputs["stopTimeout"] == 135
    assert "MOLTBOT_SHUTDOWN_TIMEOUT=120" in runtime.inputs["envs"]


def test_secrets_stay_secret(dev_stack: StackRun):
    assert dev_stack.one(CONTAINER, "moltbot-container").has_secret, "API keys in the env must be a secret"
    assert dev_stack.one(CONTAINER, "monitoring-grafana").has_secret, "the Grafana password must be a secret"
    assert not dev_stack.one(CONTAINER, "monitoring-prometheus").has_secret


def test_without_api_keys_on_loopback_the_env_has_none_and_no_secret():
    run = run_stack("dev", drop=("moltbot:apiKeys",))
    runtime = run.one(CONTAINER, "moltbot-container")
    assert "MOLTBOT_API_KEYS" not in env_of(runtime)
    assert not runtime.has_secret


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
    targets = {f.rsplit("/", 1)[1]: yaml.safe_load(c)[0]["targets"] for f, c in uploads.items() if "/targets/" in f}
    assert targets == {"moltbot.yml": ["moltbot:8080"], "node.yml": ["node-exporter:9100"],
                       "alertmanager.yml": ["alertmanager:9093"]}

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
    assert grafana_env["GF_SECURITY_ADMIN_PASSWORD"] == SECRETS["moltbot:grafanaAdminPassword"]
    assert grafana_env["PROMETHEUS_URL"] == "http://prometheus:9090"
    assert grafana_env["GF_USERS_ALLOW_SIGN_UP"] == "false"

    node = dev_stack.one(CONTAINER, "monitoring-node-exporter").inputs
    assert node["pidMode"] == "host" and node["command"] == ["--path.rootfs=/host"]
    assert node["mounts"][0]["source"] == "/" and node["mounts"][0]["readOnly"] is True
    assert "ports" not in node, "node exporter is reached on the stack network only"


def test_dev_outputs_are_the_urls(dev_stack: StackRun):
    assert dev_stack.outputs == {
        "url": "http://127.0.0.1:8080",
        "container": "moltbot",
        "network": "moltbot-net",
        "prometheusUrl": "http://127.0.0.1:9090",
        "alertmanagerUrl": "http://127.0.0.1:9093",
        "grafanaUrl": "http://127.0.0.1:3000",
    }


def test_prod_gpu_host_paths_and_public_ports(prod_stack: StackRun):
    runtime = prod_stack.one(CONTAINER, "moltbot-container")
    inputs = runtime.inputs
    assert inputs["image"] == "moltbot:gpu" and inputs["gpus"] == "all"
    assert env_of(runtime)["MOLTBOT_DEVICE"] == "cuda"
    assert {p["ip"] for p in inputs["ports"]} == {"0.0.0.0"}
    assert [(v["hostPath"], v["containerPath"]) for v in inputs["volumes"]] == [
        ("/data/moltbot/models", "/app/models"), ("/data/moltbot/plugins", "/app/plugins"),
        ("/data/moltbot/logs", "/app/logs")]
    assert inputs["cpus"] == "8" and inputs["memory"] == 32 * 1024
    # Runtime data sets live on the host; only monitoring data gets named volumes.
    assert {r.name for r in prod_stack.of_type(VOLUME)} == {
        "storage-prometheus", "storage-alertmanager", "storage-grafana"}
    dcgm = prod_stack.one(CONTAINER, "monitoring-dcgm-exporter").inputs
    assert dcgm["gpus"] == "all" and dcgm["image"].startswith("nvcr.io/nvidia/k8s/dcgm-exporter:")
    prometheus_uploads = uploads_of(prod_stack.one(CONTAINER, "monitoring-prometheus"))
    assert yaml.safe_load(prometheus_uploads["/etc/prometheus/targets/dcgm.yml"])[0]["targets"] == \
        ["dcgm-exporter:9400"]
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
    # Every Docker resource, declared inside a component, goes through that provider.
    docker_resources = [r for r in run.resources if r.type.startswith("docker:index/")]
    assert len(docker_resources) == 10
    assert {r.provider for r in docker_resources} == {f"{provider.urn}::docker-host-id"}


def test_local_engine_uses_the_default_provider(dev_stack: StackRun):
    assert not dev_stack.of_type("pulumi:providers:docker")
    assert all("docker-host" not in r.provider for r in dev_stack.resources)


CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"


def test_tls_material_is_uploaded_the_key_kept_secret_and_8443_published():
    run = run_stack("dev", overrides={"moltbot:tlsCert": CERT, "moltbot:tlsKey": KEY},
                    drop=("moltbot:apiKeys", "moltbot:pluginsDir"))
    runtime = run.one(CONTAINER, "moltbot-container")
    assert runtime.has_secret
    assert uploads_of(runtime) == {"/app/tls/tls.crt": CERT, "/app/tls/tls.key": KEY}
    key_upload = next(u for u in runtime.inputs["uploads"] if u["file"] == "/app/tls/tls.key")
    assert key_upload["permissions"] == "0400" and key_upload["owner"] == "10001"
    env = env_of(runtime)
    assert env["MOLTBOT_TLS_CERT"] == "/app/tls/tls.crt" and env["MOLTBOT_TLS_KEY"] == "/app/tls/tls.key"
    assert [(p["internal"], p["external"]) for p in runtime.inputs["ports"]] == [(8080, 8080), (8443, 8443)]


def test_tls_files_are_read_from_paths_like_the_ansible_role(tmp_path):
    (tmp_path / "fullchain.pem").write_text(CERT)
    (tmp_path / "privkey.pem").write_text(KEY)
    run = run_stack("dev", overrides={"moltbot:tlsCert": str(tmp_path / "fullchain.pem"),
                                      "moltbot:tlsKey": str(tmp_path / "privkey.pem")})
    uploads = uploads_of(run.one(CONTAINER, "moltbot-container"))
    assert uploads["/app/tls/tls.crt"] == CERT and uploads["/app/tls/tls.key"] == KEY


def test_plugins_and_model_configs_are_copied_into_the_volumes(dev_stack: StackRun, tmp_path):
    plugins_dir = PROGRAM_DIR.parent.parent / "plugins"
    expected = {f"/app/plugins/{p.relative_to(plugins_dir).as_posix()}": p.read_text()
                for p in plugins_dir.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    assert expected and uploads_of(dev_stack.one(CONTAINER, "moltbot-container")) == expected

    (tmp_path / "assistant.json").write_text('{"name": "assistant"}')
    run = run_stack("dev", overrides={"moltbot:modelConfigsDir": str(tmp_path)}, drop=("moltbot:pluginsDir",))
    assert uploads_of(run.one(CONTAINER, "moltbot-container")) == {
        "/app/models/assistant.json": '{"name": "assistant"}'}


def test_monitoring_off_leaves_only_the_runtime():
    run = run_stack("dev", overrides={"moltbot:monitoring": "false"}, drop=("moltbot:grafanaAdminPassword",))
    assert [r.name for r in run.of_type(CONTAINER)] == ["moltbot-container"]
    assert {r.name for r in run.of_type(VOLUME)} == {"storage-models", "storage-plugins", "storage-logs"}
    assert set(run.outputs) == {"url", "container", "network"}
