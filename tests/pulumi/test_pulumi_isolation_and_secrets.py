"""Issue #22 in the Pulumi program: plugin secrets (moltbot:pluginEnv) as Pulumi secrets all the way, secrets
refused in plain text, the keyless opt-in only where no key is set, Alertmanager and Grafana on a network the
runtime is not on, Grafana's password as a file, and the Kubernetes NetworkPolicy's egress (mock engine)."""

from __future__ import annotations

import json

import pytest

from pulumi_harness import SECRETS, StackRun, k8s_name, run_program, run_stack, stack_config
from stack_config import METADATA_NETWORKS, ConfigError

CONTAINER = "docker:index/container:Container"
SECRET = "kubernetes:core/v1:Secret"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
NETWORK_POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
DSN = "postgresql://reader:plugin-db-Secret-7@db.internal/shop"
PLUGIN_ENV = json.dumps({"SQL_ASSISTANT_DATABASE": DSN, "SEARCH_TOKEN": "search-Token-9"})
CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"
GRAFANA_PASSWORD_FILE = "/run/secrets/grafana/admin-password"


def env_of(container) -> dict[str, str]:
    return dict(item.split("=", 1) for item in container.inputs["envs"])


def holding(run: StackRun, text: str) -> list:
    """The declared resources whose inputs contain `text` anywhere."""
    return [r for r in run.resources if text in json.dumps(r.inputs)]


def networks_of(run: StackRun, name: str) -> set[str]:
    return {n["name"] for n in run.one(CONTAINER, name).inputs.get("networksAdvanced", [])}


# -- plugin secrets -------------------------------------------------------------------------------------------

def test_plugin_env_reaches_the_docker_runtime_as_a_secret_and_nowhere_else():
    run = run_stack("dev", overrides={"moltbot:pluginEnv": PLUGIN_ENV})
    runtime = run.one(CONTAINER, "moltbot-container")
    env = env_of(runtime)
    assert env["SQL_ASSISTANT_DATABASE"] == DSN and env["SEARCH_TOKEN"] == "search-Token-9"
    assert runtime.has_secret, "the variables must be a secret Output (encrypted in the state)"
    assert holding(run, "plugin-db-Secret-7") == [runtime]
    # Without plugin secrets the variables stay plain, so previews show their changes.
    assert not run_stack("dev").one(CONTAINER, "moltbot-container").has_secret


def test_plugin_env_on_kubernetes_is_a_secret_the_pods_take_their_variables_from():
    run = run_stack("k8s", overrides={"moltbot:pluginEnv": PLUGIN_ENV})
    [secret] = [s for s in run.of_type(SECRET) if s.name == "moltbot-plugin-env"]
    assert secret.has_secret and secret.inputs["stringData"] == json.loads(PLUGIN_ENV)
    assert "name" not in secret.inputs["metadata"], "a generated name: new values roll the pods"
    [container] = run.one(DEPLOYMENT, "moltbot-deployment").inputs["spec"]["template"]["spec"]["containers"]
    assert container["envFrom"] == [{"secretRef": {"name": k8s_name(secret)}}]
    # Not in the plugins ConfigMap, the pod spec or anything else.
    assert holding(run, "plugin-db-Secret-7") == [secret]
    assert not [s for s in run_stack("k8s").of_type(SECRET) if s.name == "moltbot-plugin-env"]


@pytest.mark.parametrize("value, message", [
    ({"MOLTBOT_LOG_LEVEL": "debug"}, r"'MOLTBOT_LOG_LEVEL' is not a plugin variable name"),
    ({"PATH": "/tmp"}, r"'PATH' is not a plugin variable name"),
    ({"PYTHONPATH": "/tmp"}, r"'PYTHONPATH' is not a plugin variable name"),
    ({"LD_PRELOAD": "/tmp/x.so"}, r"'LD_PRELOAD' is not a plugin variable name"),
    ({"bad-name": "x"}, r"'bad-name' is not a plugin variable name"),
    ({"DSN": {"nested": "x"}}, r"DSN must be a string, number or boolean"),
    ({"DSN": "line one\nline two"}, r"DSN holds a line break"),
    (["DSN=x"], r"must be an object of NAME: value pairs"),
])
def test_bad_plugin_env_names_the_rule(value, message):
    with pytest.raises(ConfigError, match=f"moltbot:pluginEnv: {message}"):
        run_stack("dev", overrides={"moltbot:pluginEnv": json.dumps(value)})


# -- secrets refused in plain text --------------------------------------------------------------------------

@pytest.mark.parametrize("key, value", [
    ("moltbot:apiKeys", "plain-key-1"),
    ("moltbot:adminApiKeys", "plain-admin-1"),
    ("moltbot:tlsKey", KEY),
    ("moltbot:grafanaAdminPassword", "plain-password"),
    ("moltbot:registryPassword", "plain-password"),
    ("moltbot:pluginEnv", PLUGIN_ENV),
])
def test_a_secret_set_without_secret_is_refused(key: str, value: str):
    config = {**stack_config("dev"), **SECRETS, key: value}
    if key == "moltbot:tlsKey":
        config["moltbot:tlsCert"] = CERT
    if key == "moltbot:registryPassword":
        config["moltbot:registryUsername"] = "ci"
    secret = [k for k in config if k in SECRETS and k != key]
    with pytest.raises(ConfigError, match=f"{key}: stored in plain text in the stack file; set it again with "
                                          f"`pulumi config set --secret {key}`"):
        run_program(config, secret_keys=secret, stack="dev")
    # The same value set with --secret passes.
    run_program(config, secret_keys=[*secret, key], stack="dev")


def test_a_tls_key_given_as_a_file_path_may_be_plain_text(tmp_path):
    (tmp_path / "cert.pem").write_text(CERT)
    (tmp_path / "key.pem").write_text(KEY)
    config = {**stack_config("dev"), **SECRETS, "moltbot:tlsCert": str(tmp_path / "cert.pem"),
              "moltbot:tlsKey": str(tmp_path / "key.pem")}
    run = run_program(config, secret_keys=list(SECRETS), stack="dev")
    init = run.one(CONTAINER, "moltbot-init")
    assert init.has_secret and any(u["content"] == KEY for u in init.inputs["uploads"])


# -- the keyless opt-in (item 5) ------------------------------------------------------------------------------

def test_only_a_keyless_docker_stack_passes_the_unauthenticated_opt_in():
    keyless = env_of(run_stack("dev", drop=("moltbot:apiKeys",)).one(CONTAINER, "moltbot-container"))
    assert keyless["MOLTBOT_ALLOW_UNAUTHENTICATED"] == "true"
    assert "MOLTBOT_API_KEYS_FILE" not in keyless
    for run in (run_stack("dev"), run_stack("prod"),
                run_stack("dev", overrides={"moltbot:adminApiKeys": "admin-only-1"}, drop=("moltbot:apiKeys",))):
        assert "MOLTBOT_ALLOW_UNAUTHENTICATED" not in env_of(run.one(CONTAINER, "moltbot-container"))
    [container] = run_stack("k8s").one(DEPLOYMENT, "moltbot-deployment").inputs["spec"]["template"]["spec"][
        "containers"]
    assert "MOLTBOT_ALLOW_UNAUTHENTICATED" not in {e["name"] for e in container["env"]}
    # Keyless on a public address stays refused, and moltbot:env cannot switch the opt-in on.
    with pytest.raises(ConfigError, match="moltbot:apiKeys: required when the API is published on 0.0.0.0"):
        run_stack("dev", overrides={"moltbot:bindAddress": "0.0.0.0"}, drop=("moltbot:apiKeys",))
    with pytest.raises(ConfigError, match="moltbot:env: MOLTBOT_ALLOW_UNAUTHENTICATED is set by the program"):
        run_stack("prod", overrides={"moltbot:env": json.dumps({"MOLTBOT_ALLOW_UNAUTHENTICATED": "true"})})


# -- networks (item 13) and Grafana's password (item 17) -----------------------------------------------------

def test_the_runtime_shares_a_network_with_prometheus_only(dev_stack: StackRun, prod_stack: StackRun):
    for run in (dev_stack, prod_stack):
        assert networks_of(run, "moltbot-container") == {"moltbot-net"}
        assert networks_of(run, "monitoring-prometheus") == {"moltbot-net", "moltbot-monitoring-net"}
        for other in ("monitoring-alertmanager", "monitoring-grafana"):
            assert networks_of(run, other) == {"moltbot-monitoring-net"}, other
    assert networks_of(prod_stack, "monitoring-dcgm-exporter") == {"moltbot-monitoring-net"}
    # Prometheus still finds every target by its alias on a network it shares with it.
    aliases = {a for n in dev_stack.one(CONTAINER, "monitoring-alertmanager").inputs["networksAdvanced"]
               for a in n["aliases"]}
    assert aliases == {"alertmanager"}
    # Without monitoring there is no second network.
    alone = run_stack("dev", overrides={"moltbot:monitoring": "false"})
    assert [n.inputs["name"] for n in alone.of_type("docker:index/network:Network")] == ["moltbot-net"]


def test_grafana_reads_its_admin_password_from_a_private_file(dev_stack: StackRun):
    grafana = dev_stack.one(CONTAINER, "monitoring-grafana")
    env = env_of(grafana)
    assert env["GF_SECURITY_ADMIN_PASSWORD__FILE"] == GRAFANA_PASSWORD_FILE
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env
    assert SECRETS["moltbot:grafanaAdminPassword"] not in json.dumps(grafana.inputs["envs"])
    [upload] = [u for u in grafana.inputs["uploads"] if u["file"] == GRAFANA_PASSWORD_FILE]
    assert upload["content"] == SECRETS["moltbot:grafanaAdminPassword"]
    assert (upload["owner"], upload["permissions"]) == ("472", "0400")
    assert grafana.has_secret
    assert holding(dev_stack, SECRETS["moltbot:grafanaAdminPassword"]) == [grafana]


# -- Kubernetes egress (item 16) ------------------------------------------------------------------------------

def egress_of(run: StackRun) -> list[dict]:
    return run.one(NETWORK_POLICY, "moltbot-network-policy").inputs["spec"]["egress"]


def test_default_egress_is_the_cluster_dns_only(k8s_stack: StackRun):
    policy = k8s_stack.one(NETWORK_POLICY, "moltbot-network-policy").inputs["spec"]
    assert "Egress" in policy["policyTypes"], "without it the egress rules would not apply"
    assert egress_of(k8s_stack) == [{
        "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    }]


def test_egress_to_the_configured_upstreams_and_database_never_to_the_metadata_address():
    run = run_stack("k8s", overrides={"moltbot:egress": json.dumps([
        {"cidr": "10.0.5.0/24", "ports": [5432]},
        {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"], "ports": ["443"]},
        {"cidr": "::/0", "ports": [443]},
        {"cidr": "169.254.0.0/16", "ports": [80]},
        {"namespaceLabels": {"kubernetes.io/metadata.name": "databases"}, "podLabels": {"app": "postgres"},
         "ports": [5432]},
    ]), "moltbot:dnsTo": json.dumps({"namespaceLabels": {"kubernetes.io/metadata.name": "dns"}})})
    dns, database, internet, internet6, link_local, in_cluster = egress_of(run)
    assert dns["to"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "dns"}}}]
    assert database == {"to": [{"ipBlock": {"cidr": "10.0.5.0/24"}}], "ports": [{"protocol": "TCP", "port": 5432}]}
    assert internet["to"] == [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "169.254.169.254/32"]}}]
    assert internet["ports"] == [{"protocol": "TCP", "port": 443}]
    assert internet6["to"] == [{"ipBlock": {"cidr": "::/0", "except": ["fd00:ec2::254/128"]}}]
    assert link_local["to"][0]["ipBlock"]["except"] == ["169.254.169.254/32"]
    assert in_cluster["to"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "databases"}},
                                 "podSelector": {"matchLabels": {"app": "postgres"}}}]
    assert set(METADATA_NETWORKS) == {"169.254.169.254/32", "fd00:ec2::254/128"}


@pytest.mark.parametrize("egress, message", [
    ([{"cidr": "169.254.169.254/32", "ports": [80]}], r"egress\[0\]: 169.254.169.254/32 is the cloud metadata"),
    ([{"cidr": "fd00:ec2::254/128", "ports": [80]}], r"egress\[0\]: fd00:ec2::254/128 is the cloud metadata"),
    ([{"cidr": "10.0.0.0/8"}], r"egress\[0\]: ports must be a non-empty list of TCP ports"),
    ([{"cidr": "10.0.0.0/8", "ports": [0]}], r"egress\[0\]: ports must be"),
    ([{"cidr": "10.0.0.0/8", "except": ["192.168.0.0/16"], "ports": [1]}], r"every `except` must lie inside"),
    ([{"cidr": "not-a-cidr", "ports": [1]}], r"egress\[0\]: 'not-a-cidr' does not appear to be"),
    ([{"cidr": "10.0.0.0/8", "ports": [1], "host": "db"}], r"takes cidr, except and ports only"),
    ([{"podLabels": {"app": "db"}, "ports": [1]}], r"egress\[0\]: namespaceLabels is empty"),
    ({"cidr": "10.0.0.0/8"}, r"moltbot:egress: must be a list"),
])
def test_bad_egress_names_the_entry(egress, message):
    with pytest.raises(ConfigError, match=message):
        run_stack("k8s", overrides={"moltbot:egress": json.dumps(egress)})
