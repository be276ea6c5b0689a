"""Bad `moltbot:*` config stops the program with an error that names the key and the fix."""

from __future__ import annotations

import json
import re

import pytest

from pulumi_harness import PROGRAM_DIR, run_stack
from stack_config import API_KEYS_FILE, KNOWN_KEYS, ConfigError, parse_memory

CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"


@pytest.mark.parametrize("stack, overrides, drop, message", [
    ("dev", {"moltbot:gpu": "true"}, (),
     r"moltbot:gpu is true but moltbot:image is moltbot:latest, the CPU-only image; set moltbot:image to moltbot:gpu"),
    ("k8s", {"moltbot:gpu": "true", "moltbot:image": "registry.local/team/moltbot:latest"}, (),
     r"moltbot:image is registry.local/team/moltbot:latest, the CPU-only image"),
    ("dev", {"moltbot:memory": "lots"}, (), r"moltbot:memory: 'lots' is not a memory size"),
    ("dev", {"moltbot:memory": "64m"}, (), r"moltbot:memory: '64m' is below the 256m"),
    ("dev", {"moltbot:cpus": "two"}, (), r"moltbot:cpus: 'two' is not a number of CPUs"),
    ("dev", {"moltbot:cpus": "0"}, (), r"moltbot:cpus: '0' must be more than 0"),
    ("k8s", {"moltbot:replicas": "0"}, (), r"moltbot:replicas: 0 must be at least 1"),
    ("k8s", {"moltbot:replicas": "three"}, (), r"moltbot:replicas: 'three' is not a whole number"),
    ("k8s", {"moltbot:maxReplicas": "2"}, (), r"moltbot:maxReplicas: 2 is below moltbot:replicas \(3\)"),
    ("k8s", {"moltbot:modelsAccessMode": "ReadWriteOncePod"}, (), r"ReadWriteOncePod allows one pod"),
    # One replica, but the autoscaler could still add more.
    ("k8s", {"moltbot:modelsAccessMode": "ReadWriteOncePod", "moltbot:replicas": "1"}, (),
     r"ReadWriteOncePod allows one pod, but moltbot:replicas is 1 and moltbot:maxReplicas 10"),
    ("k8s", {"moltbot:namespace": "Moltbot_Prod"}, (), r"moltbot:namespace: 'Moltbot_Prod' is not a valid"),
    ("k8s", {}, ("moltbot:apiKeys",),
     r"moltbot:apiKeys: required on Kubernetes, even behind a ClusterIP Service \(every pod in the cluster"),
    ("dev", {"moltbot:httpBindAddress": "0.0.0.0"}, ("moltbot:apiKeys",),
     r"moltbot:apiKeys: required when the API is published on 0.0.0.0"),
    ("dev", {"moltbot:httpBindAddress": "localhost"}, (), r"moltbot:httpBindAddress: 'localhost' is not an IP"),
    ("dev", {"moltbot:imagePull": "sometimes"}, (), r"moltbot:imagePull: 'sometimes' is not missing or always"),
    ("dev", {"moltbot:imagePull": "always", "moltbot:image": "registry.local/moltbot@sha256:" + "a" * 64}, (),
     r"moltbot:imagePull: always has nothing to pull for registry.local/moltbot@sha256:a+, pinned by digest"),
    ("dev", {"moltbot:registryUsername": "deploy"}, (),
     r"moltbot:registryUsername and moltbot:registryPassword must be set together"),
    ("k8s", {"moltbot:ingressFrom": '{"podLabels": {"app": "traefik"}}'}, (),
     r"moltbot:ingressFrom: namespaceLabels is empty; an empty selector would admit every namespace"),
    ("k8s", {"moltbot:prometheusFrom": '{"namespace": "monitoring"}'}, (),
     r"moltbot:prometheusFrom: must be an object with namespaceLabels and optionally podLabels"),
    ("k8s", {"moltbot:prometheusFrom": '{"namespaceLabels": {"team": 7}}'}, (),
     r"moltbot:prometheusFrom: namespaceLabels must be an object of label values"),
    ("k8s", {"moltbot:dashboardsNamespace": "Grafana"}, (),
     r"moltbot:dashboardsNamespace: 'Grafana' is not a valid Kubernetes namespace name"),
    ("dev", {"moltbot:bindAddress": "localhost"}, (), r"moltbot:bindAddress: 'localhost' is not an IP address"),
    ("prod", {"moltbot:monitoringBindAddress": "10.0.0"}, (), r"moltbot:monitoringBindAddress: '10.0.0' is not an IP"),
    ("k8s", {"moltbot:terminationGracePeriodSeconds": "30"}, (),
     r"moltbot:terminationGracePeriodSeconds: 30 leaves no time to drain; it needs the preStop sleep \(10 s\) "
     r"\+ MOLTBOT_SHUTDOWN_TIMEOUT \(30 s\) \+ 5 s"),
    ("dev", {"moltbot:env": '{"MOLTBOT_SHUTDOWN_TIMEOUT": "soon"}'}, (),
     r"MOLTBOT_SHUTDOWN_TIMEOUT 'soon' is not a number of seconds"),
    ("dev", {"moltbot:bindAdress": "0.0.0.0"}, (),
     r"moltbot:bindAdress is not a setting of this program; did you mean moltbot:bindAddress\?"),
    ("dev", {"moltbot:colour": "blue"}, (), r"moltbot:colour is not a setting of this program; the settings are"),
    ("dev", {"moltbot:platform": "nomad"}, (), r"moltbot:platform: 'nomad' is not docker or kubernetes"),
    ("dev", {"moltbot:httpPort": "70000"}, (), r"moltbot:httpPort: 70000 is not a TCP port"),
    ("dev", {"moltbot:httpsPort": "8080"}, (), r"moltbot:httpPort and moltbot:httpsPort are both 8080"),
    ("dev", {"moltbot:gpu": "maybe"}, (), r"moltbot:gpu: 'maybe' is not true or false"),
    ("prod", {}, ("moltbot:apiKeys",), r"moltbot:apiKeys: required when the API is published on 0.0.0.0; "
                                         r"set it with `pulumi config set --secret moltbot:apiKeys"),
    ("dev", {}, ("moltbot:grafanaAdminPassword",), r"moltbot:grafanaAdminPassword: required with moltbot:monitoring"),
    ("dev", {"moltbot:tlsCert": "-----BEGIN CERTIFICATE-----\n"}, (),
     r"moltbot:tlsCert and moltbot:tlsKey must be set together"),
    ("dev", {"moltbot:tlsCert": "/nonexistent/cert.pem", "moltbot:tlsKey": "k"}, (),
     r"moltbot:tlsCert: neither PEM text nor a readable PEM file \(/nonexistent/cert.pem"),
    ("dev", {"moltbot:tlsCert": "-----BEGIN PRIVATE KEY-----\n", "moltbot:tlsKey": "-----BEGIN PRIVATE KEY-----\n"},
     (), r"moltbot:tlsCert: no '-----BEGIN CERTIFICATE' block in it"),
    ("dev", {"moltbot:env": '{"MOLTBOT_PORT": "9000"}'}, (),
     r"moltbot:env: MOLTBOT_PORT is set by the program; use moltbot:httpPort instead"),
    ("dev", {"moltbot:env": '{"BAD NAME": "x"}'}, (), r"moltbot:env: 'BAD NAME' is not a MOLTBOT_\* variable name"),
    ("dev", {"moltbot:env": '{"OMP_NUM_THREADS": "2"}'}, (), r"moltbot:env: 'OMP_NUM_THREADS' is not a MOLTBOT_"),
    ("dev", {"moltbot:env": '{"MOLTBOT_X": {"nested": 1}}'}, (), r"moltbot:env: MOLTBOT_X must be a string"),
    ("dev", {"moltbot:dataDir": "data/moltbot"}, (), r"moltbot:dataDir: 'data/moltbot' must be an absolute path"),
    ("dev", {"moltbot:dockerHost": "gpu-1:2375"}, (), r"moltbot:dockerHost: 'gpu-1:2375' must start with ssh://"),
    ("dev", {"moltbot:monitoringDir": "/nonexistent/monitoring"}, (), r"moltbot:monitoringDir: .* is not a folder"),
    ("k8s", {"moltbot:modelsStorage": "20GB"}, (), r"moltbot:modelsStorage: '20GB' is not a size like 20Gi"),
], ids=lambda value: None)
def test_invalid_config_is_refused_with_a_clear_error(stack, overrides, drop, message):
    with pytest.raises(ConfigError, match=message):
        run_stack(stack, overrides=overrides, drop=drop)


def test_api_keys_with_white_space_are_refused():
    with pytest.raises(ConfigError, match=r"moltbot:apiKeys: a key may not contain commas or white space"):
        run_stack("dev", overrides={"moltbot:apiKeys": '["good", "has space"]'})


def test_an_empty_api_key_list_is_refused_on_a_public_bind():
    with pytest.raises(ConfigError, match=r"moltbot:apiKeys: required when the API is published on 0.0.0.0"):
        run_stack("prod", overrides={"moltbot:apiKeys": " , "})


def test_api_keys_as_a_json_list_reach_the_keys_file():
    run = run_stack("dev", overrides={"moltbot:apiKeys": '["alpha", "beta"]'})
    uploads = run.one("docker:index/container:Container", "moltbot-init").inputs["uploads"]
    assert {u["file"]: u["content"] for u in uploads}[API_KEYS_FILE] == "alpha\nbeta\n"


def test_with_tls_a_public_bind_needs_keys_but_loopback_http_alone_does_not():
    tls = {"moltbot:tlsCert": CERT, "moltbot:tlsKey": KEY}
    with pytest.raises(ConfigError, match=r"moltbot:apiKeys: required when the API is published on 0.0.0.0"):
        run_stack("dev", overrides={**tls, "moltbot:bindAddress": "0.0.0.0"}, drop=("moltbot:apiKeys",))
    # HTTPS on loopback, plain HTTP on loopback (the default with TLS): no keys needed.
    run_stack("dev", overrides=tls, drop=("moltbot:apiKeys",))


def test_missing_monitoring_files_are_named(tmp_path):
    (tmp_path / "prometheus").mkdir()
    (tmp_path / "prometheus" / "prometheus.yml").write_text("global: {}\n")
    with pytest.raises(ConfigError, match=r"the Alertmanager configuration .*alertmanager.yml is missing"):
        run_stack("dev", overrides={"moltbot:monitoringDir": str(tmp_path)})


@pytest.mark.parametrize("text, expected", [
    ("4g", 4 * 1024**3), ("512m", 512 * 1024**2), ("4GiB", 4 * 1024**3), ("1.5g", int(1.5 * 1024**3)),
    ("268435456", 256 * 1024**2), (" 2 G ", 2 * 1024**3),
])
def test_memory_sizes_use_docker_binary_units(text, expected):
    assert parse_memory("moltbot:memory", text) == expected


def test_misspelt_keys_are_found_in_the_config_the_cli_passes(monkeypatch):
    # The Pulumi CLI hands the program its config as PULUMI_CONFIG.
    monkeypatch.setenv("PULUMI_CONFIG", json.dumps({"moltbot:imgae": "moltbot:latest", "aws:region": "x"}))
    with pytest.raises(ConfigError, match=r"moltbot:imgae is not a setting of this program; did you mean "
                                          r"moltbot:image\?"):
        run_stack("dev")


def test_readme_documents_exactly_the_keys_the_program_reads():
    readme = (PROGRAM_DIR / "README.md").read_text()
    documented = set()
    for line in readme.splitlines():
        if line.startswith("| `moltbot:"):
            first_cell = line.split("|")[1]
            documented |= set(re.findall(r"`(?:moltbot:)?([A-Za-z]+)`", first_cell))
    assert documented == KNOWN_KEYS
