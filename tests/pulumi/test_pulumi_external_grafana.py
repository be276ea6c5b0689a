"""The dashboards declared in an existing Grafana (grafana_external.py, pulumiverse-grafana) on Pulumi's mock
engine: the provider with the URL and the secret token, the folder, the Prometheus data source only when asked,
and one Dashboard per shipped dashboard carrying the committed JSON. The provider plugin and a real `pulumi up`
cannot run here (no Pulumi CLI, no plugin downloads); tests/monitoring/test_grafana_render.py posts the same JSON
to a real Grafana where one runs."""

from __future__ import annotations

import json

import pytest

from pulumi_harness import PROGRAM_DIR, SECRETS, StackRun, run_program, stack_config
from stack_config import KNOWN_KEYS, ConfigError

DASHBOARDS = PROGRAM_DIR.parents[1] / "monitoring" / "grafana" / "dashboards"
PROVIDER = "pulumi:providers:grafana"
FOLDER = "grafana:oss/folder:Folder"
DASHBOARD = "grafana:oss/dashboard:Dashboard"
DATASOURCE = "grafana:oss/dataSource:DataSource"
COMPONENT = "moltbot:grafana:ExistingGrafana"
TOKEN = "glsa_test_service_account_token"
EXTERNAL = {"moltbot:externalGrafanaUrl": "https://grafana.example.com/", "moltbot:externalGrafanaToken": TOKEN}


def run(stack: str, overrides: dict[str, str], secret: tuple[str, ...] = ("moltbot:externalGrafanaToken",),
        drop: tuple[str, ...] = ()) -> StackRun:
    config = {**stack_config(stack), **SECRETS, **overrides}
    for key in drop:
        config.pop(key, None)
    secrets = [k for k in config if k in SECRETS or k in secret]
    return run_program(config, secret_keys=secrets, stack=stack)


@pytest.fixture(scope="module")
def dev_external() -> StackRun:
    return run("dev", EXTERNAL)


@pytest.fixture(scope="module")
def dev_with_datasource() -> StackRun:
    return run("dev", {**EXTERNAL, "moltbot:externalGrafanaPrometheusUrl": "http://prometheus.internal:9090",
                       "moltbot:externalGrafanaFolder": "AI assistant"})


def test_the_keys_are_known() -> None:
    assert {"externalGrafanaUrl", "externalGrafanaToken", "externalGrafanaFolder",
            "externalGrafanaPrometheusUrl"} <= KNOWN_KEYS


def test_without_the_keys_nothing_is_declared_in_a_grafana() -> None:
    plain = run("dev", {})
    assert not [r for r in plain.resources if r.type.startswith("grafana:") or r.type == PROVIDER]
    assert "externalGrafanaDashboards" not in plain.outputs


def test_provider_folder_and_dashboards_from_the_committed_json(dev_external: StackRun) -> None:
    provider = dev_external.one(PROVIDER, "moltbot-grafana-provider")
    assert provider.inputs["url"] == "https://grafana.example.com"
    assert provider.inputs["auth"] == TOKEN and provider.has_secret  # the token stays a secret in the state
    component = dev_external.one(COMPONENT, "moltbot-grafana")
    assert provider.parent == component.urn
    folder = dev_external.one(FOLDER, "moltbot-grafana-folder")
    assert folder.inputs["title"] == "Moltbot" and folder.inputs["uid"] == "moltbot"
    assert folder.provider.startswith(provider.urn)
    assert not dev_external.of_type(DATASOURCE)  # not asked for
    dashboards = {d.name: d for d in dev_external.of_type(DASHBOARD)}
    # The dev stack is a CPU Docker host: the runtime and host dashboards, not the GPU one.
    assert set(dashboards) == {"moltbot-grafana-dashboard-runtime", "moltbot-grafana-dashboard-host"}
    for stem in ("runtime", "host"):
        declared = dashboards[f"moltbot-grafana-dashboard-{stem}"]
        committed = json.loads((DASHBOARDS / f"moltbot-{stem}.json").read_text())
        assert json.loads(declared.inputs["configJson"]) == committed  # the same JSON, unchanged
        assert declared.inputs["folder"] == "moltbot" and declared.inputs["overwrite"] is True
        assert declared.provider.startswith(provider.urn) and declared.parent == component.urn
    assert len(dev_external.outputs["externalGrafanaDashboards"]) == 2


def test_the_prometheus_data_source_when_asked_preselected_in_the_dashboards(dev_with_datasource: StackRun) -> None:
    source = dev_with_datasource.one(DATASOURCE, "moltbot-grafana-prometheus")
    assert source.inputs["type"] == "prometheus" and source.inputs["uid"] == "moltbot-prometheus"
    assert source.inputs["url"] == "http://prometheus.internal:9090" and source.inputs["accessMode"] == "proxy"
    assert json.loads(source.inputs["jsonDataEncoded"]) == {"timeInterval": "15s", "httpMethod": "POST"}
    assert dev_with_datasource.one(FOLDER, "moltbot-grafana-folder").inputs["title"] == "AI assistant"
    for declared in dev_with_datasource.of_type(DASHBOARD):
        document = json.loads(declared.inputs["configJson"])
        picker = next(v for v in document["templating"]["list"] if v["name"] == "datasource")
        assert picker["current"]["value"] == "moltbot-prometheus"
        committed = json.loads((DASHBOARDS / f"moltbot-{declared.name.rsplit('-', 1)[1]}.json").read_text())
        for variable in (*document["templating"]["list"], *committed["templating"]["list"]):
            variable.pop("current", None)
        assert document == committed  # otherwise the same JSON


def test_kubernetes_and_gpu_stacks_ship_their_dashboards() -> None:
    k8s = run("k8s", EXTERNAL)
    assert {d.name for d in k8s.of_type(DASHBOARD)} == {"moltbot-grafana-dashboard-runtime"}
    gpu = run("k8s", {**EXTERNAL, "moltbot:gpu": "true", "moltbot:image": "registry.local/team/moltbot:gpu"})
    assert {d.name for d in gpu.of_type(DASHBOARD)} == {"moltbot-grafana-dashboard-runtime",
                                                       "moltbot-grafana-dashboard-gpu"}


@pytest.mark.parametrize("overrides, secret, message", [
    ({"moltbot:externalGrafanaUrl": "https://grafana.example.com"}, (),
     r"moltbot:externalGrafanaToken: required with moltbot:externalGrafanaUrl"),
    (EXTERNAL, (), r"moltbot:externalGrafanaToken: stored in plain text in the stack file"),
    ({"moltbot:externalGrafanaToken": TOKEN}, ("moltbot:externalGrafanaToken",),
     r"moltbot:externalGrafanaToken is set but moltbot:externalGrafanaUrl is not"),
    ({**EXTERNAL, "moltbot:externalGrafanaUrl": "grafana.example.com"}, ("moltbot:externalGrafanaToken",),
     r"moltbot:externalGrafanaUrl: 'grafana.example.com' is not an http\(s\) URL"),
    ({**EXTERNAL, "moltbot:externalGrafanaUrl": "https://admin:pw@grafana.example.com"},
     ("moltbot:externalGrafanaToken",), r"put no credentials in the URL"),
    ({**EXTERNAL, "moltbot:externalGrafanaPrometheusUrl": "prometheus:9090"}, ("moltbot:externalGrafanaToken",),
     r"moltbot:externalGrafanaPrometheusUrl: 'prometheus:9090' is not an http\(s\) URL"),
])
def test_bad_external_grafana_config_names_the_key(overrides: dict[str, str], secret: tuple[str, ...],
                                                   message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        run("dev", overrides, secret=secret)
