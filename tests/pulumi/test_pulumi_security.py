"""Issue #16 in the Pulumi program: admin keys, limits of the runtime container, the plugins mounted read-only,
Prometheus without its lifecycle API, and the monitoring images pinned once (deploy/contract.json)."""

from __future__ import annotations

import json

import pytest

import contract
from pulumi_harness import PROGRAM_DIR, StackRun, run_stack
from stack_config import ADMIN_API_KEYS_FILE, DEFAULT_IMAGES, ConfigError

CONTAINER = "docker:index/container:Container"
SECRET = "kubernetes:core/v1:Secret"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
ADMIN_KEYS = "admin-key-one,admin-key-two"
REPO = PROGRAM_DIR.parent.parent


def env_of(container) -> dict[str, str]:
    return dict(item.split("=", 1) for item in container.inputs["envs"])


def test_prometheus_runs_without_its_unauthenticated_lifecycle_api(dev_stack: StackRun, prod_stack: StackRun):
    for run in (dev_stack, prod_stack):
        command = run.one(CONTAINER, "monitoring-prometheus").inputs["command"]
        assert not [flag for flag in command if "lifecycle" in flag]


def test_monitoring_images_come_from_the_contract_and_grafana_is_past_cve_2026_21720(dev_stack: StackRun):
    images = {name: dev_stack.one(CONTAINER, f"monitoring-{name}").inputs["image"]
              for name in ("prometheus", "alertmanager", "grafana")}
    assert images == {name: contract.IMAGES[name] for name in images}
    # CVE-2026-21720 (unauthenticated DoS through /avatar): fixed from 11.6.9+security-01 on the 11.6 line.
    major, minor, patch = (int(part) for part in images["grafana"].split(":")[1].split("-")[0].split("."))
    assert (major, minor) != (11, 6) or patch >= 10
    assert (major, minor, patch) >= (11, 6, 10)
    assert DEFAULT_IMAGES["dcgmExporterImage"] == contract.IMAGES["dcgm_exporter"]
    # Pinned once: no deploy file names these images again (the contract's generated copies aside).
    generated = {REPO / "infra/pulumi/contract.json", REPO / "deploy/contract.json"}
    for image in contract.IMAGES.values():
        for folder in ("infra/pulumi", "ansible/roles"):
            for path in (REPO / folder).rglob("*"):
                if path.is_file() and path not in generated and path.suffix in (".py", ".yml", ".yaml"):
                    text = path.read_text()
                    if "Generated from deploy/contract.json" not in text:
                        assert image not in text, f"{image} pinned again in {path}"


def test_the_runtime_container_has_memory_and_process_limits_by_default(dev_stack: StackRun):
    runtime = dev_stack.one(CONTAINER, "moltbot-container").inputs
    assert runtime["memory"] == 4096
    assert runtime["ulimits"] == [{"name": "nproc", "soft": contract.DEFAULT_PIDS_LIMIT,
                                   "hard": contract.DEFAULT_PIDS_LIMIT}]
    custom = run_stack("dev", overrides={"moltbot:pidsLimit": "300", "moltbot:memory": "2g"})
    inputs = custom.one(CONTAINER, "moltbot-container").inputs
    assert inputs["ulimits"][0]["hard"] == 300 and inputs["memory"] == 2048
    with pytest.raises(ConfigError, match="moltbot:pidsLimit: 10 is too few"):
        run_stack("dev", overrides={"moltbot:pidsLimit": "10"})


def test_the_plugins_are_read_only_for_the_runtime_and_written_by_the_init_step(dev_stack: StackRun):
    runtime = dev_stack.one(CONTAINER, "moltbot-container").inputs
    plugins = [v for v in runtime["volumes"] if v["containerPath"] == contract.PLUGINS_DIR]
    assert plugins and plugins[0].get("readOnly") is True
    models = [v for v in runtime["volumes"] if v["containerPath"] == contract.MODELS_DIR]
    assert not models[0].get("readOnly")
    init = dev_stack.one(CONTAINER, "moltbot-init").inputs
    assert not [v for v in init["volumes"] if v["containerPath"] == contract.PLUGINS_DIR and v.get("readOnly")]


def test_admin_keys_reach_the_runtime_as_their_own_secret_file():
    run = run_stack("dev", overrides={"moltbot:adminApiKeys": ADMIN_KEYS})
    runtime = run.one(CONTAINER, "moltbot-container")
    assert env_of(runtime)["MOLTBOT_ADMIN_API_KEYS_FILE"] == ADMIN_API_KEYS_FILE
    assert not [item for item in runtime.inputs["envs"] for key in ADMIN_KEYS.split(",") if key in item]
    init = run.one(CONTAINER, "moltbot-init")
    uploads = {u["file"]: u for u in init.inputs["uploads"]}
    assert uploads[ADMIN_API_KEYS_FILE]["content"] == "admin-key-one\nadmin-key-two\n"
    assert uploads[ADMIN_API_KEYS_FILE]["permissions"] == "0400"
    assert init.has_secret
    without = run_stack("dev").one(CONTAINER, "moltbot-container")
    assert "MOLTBOT_ADMIN_API_KEYS_FILE" not in env_of(without)


def test_admin_keys_must_differ_from_the_api_keys():
    with pytest.raises(ConfigError, match="moltbot:adminApiKeys: a key is also in moltbot:apiKeys"):
        run_stack("dev", overrides={"moltbot:adminApiKeys": "test-key-one"})
    with pytest.raises(ConfigError, match="moltbot:env: MOLTBOT_ADMIN_API_KEYS is set by the program"):
        run_stack("dev", overrides={"moltbot:env": json.dumps({"MOLTBOT_ADMIN_API_KEYS": "x"})})


def test_kubernetes_admin_keys_are_a_second_file_of_the_keys_secret():
    run = run_stack("k8s", overrides={"moltbot:adminApiKeys": ADMIN_KEYS})
    [secret] = [s for s in run.of_type(SECRET) if s.name.endswith("-api-keys")]
    admin_file = ADMIN_API_KEYS_FILE.rsplit("/", 1)[1]
    assert secret.inputs["stringData"][admin_file] == "admin-key-one\nadmin-key-two\n" and secret.has_secret
    [deployment] = run.of_type(DEPLOYMENT)
    pod = deployment.inputs["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MOLTBOT_ADMIN_API_KEYS_FILE"] == ADMIN_API_KEYS_FILE
    [volume] = [v for v in pod["volumes"] if v["name"] == "api-keys"]
    assert {item["path"] for item in volume["secret"]["items"]} == {admin_file, "api-keys"}
