"""The Kubernetes stack (Pulumi.k8s.yaml) as the program declares it, under Pulumi's mock engine."""

from __future__ import annotations

import base64
import json

import yaml

import contract
from pulumi_harness import PROGRAM_DIR, SECRETS, StackRun, autoname, run_stack
from stack_config import API_KEYS_FILE

SECRETS_DIR = API_KEYS_FILE.rsplit("/", 1)[0]

MONITORING_DIR = PROGRAM_DIR.parent.parent / "monitoring"
PLUGINS_DIR = PROGRAM_DIR.parent.parent / "plugins"
LABELS = {"app.kubernetes.io/name": "moltbot", "app.kubernetes.io/instance": "moltbot"}
NETWORK_POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"


def pod_spec(run: StackRun) -> dict:
    return run.one("kubernetes:apps/v1:Deployment", "moltbot-deployment").inputs["spec"]["template"]["spec"]


def test_k8s_declares_exactly_the_scale_out_resources(k8s_stack: StackRun):
    assert k8s_stack.summary() == sorted([
        ("moltbot:kubernetes:Runtime", "moltbot"),
        ("kubernetes:core/v1:Namespace", "moltbot-namespace"),
        ("kubernetes:core/v1:ConfigMap", "moltbot-model-configs"),
        ("kubernetes:core/v1:ConfigMap", "moltbot-plugins"),
        ("kubernetes:core/v1:PersistentVolumeClaim", "moltbot-models"),
        ("kubernetes:core/v1:Secret", "moltbot-api-keys"),
        ("kubernetes:apps/v1:Deployment", "moltbot-deployment"),
        ("kubernetes:core/v1:Service", "moltbot-service"),
        ("kubernetes:autoscaling/v2:HorizontalPodAutoscaler", "moltbot-hpa"),
        ("kubernetes:policy/v1:PodDisruptionBudget", "moltbot-pdb"),
        (NETWORK_POLICY, "moltbot-network-policy"),
        ("moltbot:kubernetes:Monitoring", "moltbot"),
        ("kubernetes:monitoring.coreos.com/v1:ServiceMonitor", "moltbot-servicemonitor"),
        ("kubernetes:monitoring.coreos.com/v1:PrometheusRule", "moltbot-rules"),
        ("moltbot:kubernetes:Dashboards", "moltbot"),
        ("kubernetes:core/v1:ConfigMap", "moltbot-dashboard-runtime"),
    ])
    runtime_urn = k8s_stack.urn_of("moltbot:kubernetes:Runtime", "moltbot")
    monitoring_urn = k8s_stack.urn_of("moltbot:kubernetes:Monitoring", "moltbot")
    dashboards_urn = k8s_stack.urn_of("moltbot:kubernetes:Dashboards", "moltbot")
    for declared in k8s_stack.resources:
        if declared.type.startswith("kubernetes:monitoring.coreos.com"):
            assert declared.parent == monitoring_urn, declared.name
        elif declared.name.startswith("moltbot-dashboard-"):
            assert declared.parent == dashboards_urn, declared.name
        elif declared.type.startswith("kubernetes:"):
            assert declared.parent == runtime_urn, declared.name
            if declared.type != "kubernetes:core/v1:Namespace":
                assert declared.inputs["metadata"]["namespace"] == "moltbot", declared.name


def test_deployment(k8s_stack: StackRun):
    deployment = k8s_stack.one("kubernetes:apps/v1:Deployment", "moltbot-deployment").inputs
    assert deployment["metadata"]["name"] == "moltbot"
    # The HPA owns the replica count (minReplicas 3): a declared one would reset it on every `pulumi up`.
    assert "replicas" not in deployment["spec"]
    # Old ReplicaSets for `kubectl rollout undo`; a rollout with no new ready pod (/ready) for 10 min fails.
    assert deployment["spec"]["revisionHistoryLimit"] == 5
    assert deployment["spec"]["progressDeadlineSeconds"] == 600
    assert deployment["spec"]["selector"]["matchLabels"] == LABELS
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    spec = pod_spec(k8s_stack)
    assert spec["terminationGracePeriodSeconds"] == 60
    (container,) = spec["containers"]
    assert container["image"] == "moltbot:latest" and container["imagePullPolicy"] == "IfNotPresent"
    assert container["ports"] == [{"name": "http", "containerPort": contract.HTTP_PORT},
                                  {"name": "https", "containerPort": contract.HTTPS_PORT}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["resources"] == {"requests": {"cpu": "2", "memory": "4096Mi"},
                                      "limits": {"cpu": "2", "memory": "4096Mi"}}
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "10"]
    env = {e["name"]: e for e in container["env"]}
    assert env["MOLTBOT_DEVICE"]["value"] == "cpu"
    assert env["MOLTBOT_MODELS_DIR"]["value"] == contract.MODELS_DIR
    # 60 s grace = 10 s preStop sleep + 30 s drain + margin.
    assert env["MOLTBOT_SHUTDOWN_TIMEOUT"]["value"] == "30"
    # The keys are a file from the Secret, never an environment variable.
    assert env["MOLTBOT_API_KEYS_FILE"] == {"name": "MOLTBOT_API_KEYS_FILE", "value": API_KEYS_FILE}
    assert "MOLTBOT_API_KEYS" not in env
    mounts = {m["mountPath"]: (m["name"], m.get("readOnly", False)) for m in container["volumeMounts"]}
    assert mounts == {contract.MODELS_DIR: ("models", False), contract.PLUGINS_DIR: ("plugins", True),
                      contract.LOGS_DIR: ("logs", False), "/tmp": ("tmp", False),
                      SECRETS_DIR: ("api-keys", True)}
    assert spec["securityContext"] == {"runAsUser": contract.RUNTIME_UID, "runAsGroup": contract.RUNTIME_GID,
                                       "fsGroup": contract.RUNTIME_GID, "runAsNonRoot": True,
                                       "seccompProfile": {"type": "RuntimeDefault"}}
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "privileged": False, "capabilities": {"drop": ["ALL"]}}
    assert spec["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"] == {"claimName": "moltbot-models"}
    assert volumes["plugins"]["configMap"]["name"].startswith("moltbot-plugins-")  # named by content
    assert volumes["tmp"]["emptyDir"] == {"sizeLimit": "512Mi"}
    assert volumes["api-keys"]["secret"] == {"secretName": autoname("moltbot-api-keys"), "defaultMode": 0o440,
                                             "items": [{"key": "api-keys", "path": "api-keys"}]}
    assert "imagePullSecrets" not in spec


def test_api_keys_secret_is_a_pulumi_secret_holding_the_keys_file(k8s_stack: StackRun):
    secret = k8s_stack.one("kubernetes:core/v1:Secret", "moltbot-api-keys")
    assert secret.has_secret
    # The file the runtime reads (MOLTBOT_API_KEYS_FILE): one key per line.
    assert secret.inputs["stringData"] == {"api-keys": "".join(
        f"{key}\n" for key in SECRETS["moltbot:apiKeys"].split(","))}
    assert not k8s_stack.one("kubernetes:apps/v1:Deployment", "moltbot-deployment").has_secret


def test_keys_and_certificate_secrets_have_generated_names_so_a_change_rolls_the_pods():
    # The runtime reads them at start. Without a fixed name, Pulumi replaces a changed Secret under a new name
    # (its default for Secret data), the pod template refers to the new name, and the Deployment rolls out.
    cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    key = "-----BEGIN EC PRIVATE KEY-----\nMHc\n-----END EC PRIVATE KEY-----\n"
    run = run_stack("k8s", overrides={"moltbot:tlsCert": cert, "moltbot:tlsKey": key})
    volumes = {v["name"]: v for v in pod_spec(run)["volumes"]}
    for secret, volume in (("moltbot-api-keys", "api-keys"), ("moltbot-tls", "tls")):
        declared = run.one("kubernetes:core/v1:Secret", secret)
        assert "name" not in declared.inputs["metadata"], secret
        assert volumes[volume]["secret"]["secretName"] == autoname(secret)


def test_namespace_enforces_pod_security_restricted(k8s_stack: StackRun):
    labels = k8s_stack.one("kubernetes:core/v1:Namespace", "moltbot-namespace").inputs["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert labels["pod-security.kubernetes.io/warn"] == "restricted"


def test_models_claim_service_autoscaler_and_budget(k8s_stack: StackRun):
    claim = k8s_stack.one("kubernetes:core/v1:PersistentVolumeClaim", "moltbot-models").inputs["spec"]
    assert claim["accessModes"] == ["ReadWriteOnce"], "any cluster's storage; ReadWriteMany only by choice"
    assert claim["resources"]["requests"] == {"storage": "20Gi"}
    service = k8s_stack.one("kubernetes:core/v1:Service", "moltbot-service").inputs
    assert service["metadata"]["name"] == "moltbot", "the Prometheus job label is the Service name"
    assert service["spec"]["type"] == "ClusterIP" and service["spec"]["selector"] == LABELS
    assert [(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [("http", 8080, "http")]
    hpa = k8s_stack.one("kubernetes:autoscaling/v2:HorizontalPodAutoscaler", "moltbot-hpa").inputs["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "moltbot"}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 10)
    assert hpa["metrics"][0]["resource"] == {"name": "cpu", "target": {"type": "Utilization",
                                                                        "averageUtilization": 70}}
    pdb = k8s_stack.one("kubernetes:policy/v1:PodDisruptionBudget", "moltbot-pdb").inputs["spec"]
    assert pdb == {"maxUnavailable": 1, "selector": {"matchLabels": LABELS}}


def test_a_read_write_once_claim_keeps_the_replicas_on_its_node(k8s_stack: StackRun):
    # A ReadWriteOnce volume attaches to one node: every replica (and the rollout's surge pod) goes there.
    affinity = pod_spec(k8s_stack)["affinity"]
    assert affinity == {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": LABELS}, "topologyKey": "kubernetes.io/hostname"}]}}
    # With a ReadWriteMany claim, chosen explicitly, the replicas may spread across nodes.
    run = run_stack("k8s", overrides={"moltbot:modelsAccessMode": "ReadWriteMany"})
    assert run.one("kubernetes:core/v1:PersistentVolumeClaim", "moltbot-models").inputs["spec"]["accessModes"] \
        == ["ReadWriteMany"]
    assert "affinity" not in pod_spec(run)


def test_plugins_configmap_carries_the_repository_plugins(k8s_stack: StackRun):
    plugin_files = sorted(p.relative_to(PLUGINS_DIR).as_posix() for p in PLUGINS_DIR.rglob("*")
                          if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")
    assert plugin_files, "plugins/ holds the built-in plugins"
    data = k8s_stack.one("kubernetes:core/v1:ConfigMap", "moltbot-plugins").inputs["data"]
    items = pod_spec(k8s_stack)["volumes"][2]["configMap"]["items"]
    assert sorted(item["path"] for item in items) == plugin_files
    for item in items:
        assert data[item["key"]] == (PLUGINS_DIR / item["path"]).read_text()


def test_model_configs_become_files_in_the_models_folder(tmp_path):
    (tmp_path / "chat.json").write_text('{"name": "chat", "task": "chat"}')
    (tmp_path / "embed.json").write_text('{"name": "embed", "task": "embeddings"}')
    run = run_stack("k8s", overrides={"moltbot:modelConfigsDir": str(tmp_path)})
    data = run.one("kubernetes:core/v1:ConfigMap", "moltbot-model-configs").inputs["data"]
    assert data == {"chat.json": '{"name": "chat", "task": "chat"}',
                    "embed.json": '{"name": "embed", "task": "embeddings"}'}
    mounts = pod_spec(run)["containers"][0]["volumeMounts"]
    assert {(m["mountPath"], m["subPath"]) for m in mounts if m["name"] == "model-configs"} == {
        ("/app/models/chat.json", "chat.json"), ("/app/models/embed.json", "embed.json")}


def test_model_configs_configmap_is_named_by_its_content_so_rollout_undo_restores_the_old_one(tmp_path):
    # A new name for new content: the pod template changes (the Deployment rolls) and the old ConfigMap, kept
    # (retain_on_delete), is still the one the previous ReplicaSet mounts.
    (tmp_path / "chat.json").write_text('{"name": "chat", "task": "chat"}')

    def configmap_name(run: StackRun) -> str:
        name = run.one("kubernetes:core/v1:ConfigMap", "moltbot-model-configs").inputs["metadata"]["name"]
        volume = next(v for v in pod_spec(run)["volumes"] if v["name"] == "model-configs")
        assert volume["configMap"]["name"] == name
        return name

    first = configmap_name(run_stack("k8s", overrides={"moltbot:modelConfigsDir": str(tmp_path)}))
    again = configmap_name(run_stack("k8s", overrides={"moltbot:modelConfigsDir": str(tmp_path)}))
    (tmp_path / "chat.json").write_text('{"name": "chat", "task": "chat", "max_batch_size": 4}')
    changed = configmap_name(run_stack("k8s", overrides={"moltbot:modelConfigsDir": str(tmp_path)}))
    assert first.startswith("moltbot-model-configs-") and first == again and changed != first


def test_operator_resources_from_the_monitoring_rules(k8s_stack: StackRun):
    monitor = k8s_stack.one("kubernetes:monitoring.coreos.com/v1:ServiceMonitor", "moltbot-servicemonitor").inputs
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"] == {"matchLabels": LABELS}
    assert monitor["spec"]["endpoints"][0]["port"] == "http"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    rule = k8s_stack.one("kubernetes:monitoring.coreos.com/v1:PrometheusRule", "moltbot-rules").inputs
    expected = yaml.safe_load((MONITORING_DIR / "prometheus/rules/moltbot.yml").read_text())["groups"]
    assert rule["spec"]["groups"] == expected


def test_gpu_cluster_requests_a_gpu_and_adds_the_gpu_rules():
    run = run_stack("k8s", overrides={"moltbot:gpu": "true", "moltbot:image": "registry.local/moltbot:gpu"})
    container = pod_spec(run)["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert {e["name"]: e.get("value") for e in container["env"]}["MOLTBOT_DEVICE"] == "cuda"
    groups = run.one("kubernetes:monitoring.coreos.com/v1:PrometheusRule", "moltbot-rules").inputs["spec"]["groups"]
    gpu_groups = yaml.safe_load((MONITORING_DIR / "prometheus/rules/gpu.yml").read_text())["groups"]
    assert groups[-len(gpu_groups):] == gpu_groups


def test_without_the_operator_no_custom_resources():
    run = run_stack("k8s", overrides={"moltbot:prometheusOperator": "false"})
    assert not [r for r in run.resources if "monitoring.coreos.com" in r.type]


def test_dashboards_are_configmaps_for_the_grafana_sidecar(k8s_stack: StackRun):
    dashboard = k8s_stack.one("kubernetes:core/v1:ConfigMap", "moltbot-dashboard-runtime").inputs
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["namespace"] == "moltbot"
    source = MONITORING_DIR / "grafana/dashboards/moltbot-runtime.json"
    assert dashboard["data"] == {"moltbot-runtime.json": source.read_text()}
    assert json.loads(dashboard["data"]["moltbot-runtime.json"])["uid"]
    # The GPU dashboard on GPU clusters, in Grafana's namespace when asked; never the host dashboard (node
    # metrics belong to the cluster's own monitoring).
    run = run_stack("k8s", overrides={"moltbot:gpu": "true", "moltbot:image": "registry.local/moltbot:gpu",
                                      "moltbot:dashboardsNamespace": "grafana"})
    dashboards = {c.name: c.inputs for c in run.of_type("kubernetes:core/v1:ConfigMap")
                  if c.name.startswith("moltbot-dashboard-")}
    assert set(dashboards) == {"moltbot-dashboard-runtime", "moltbot-dashboard-gpu"}
    assert {d["metadata"]["namespace"] for d in dashboards.values()} == {"grafana"}


def test_image_pull_always_and_registry_login():
    run = run_stack("k8s", overrides={"moltbot:image": "registry.example.com/team/moltbot:stable",
                                      "moltbot:imagePull": "always", "moltbot:registryUsername": "deploy",
                                      "moltbot:registryPassword": "registry-test-password"})
    spec = pod_spec(run)
    assert spec["containers"][0]["imagePullPolicy"] == "Always"
    assert spec["imagePullSecrets"] == [{"name": "moltbot-registry"}]
    secret = run.one("kubernetes:core/v1:Secret", "moltbot-registry")
    assert secret.has_secret and secret.inputs["type"] == "kubernetes.io/dockerconfigjson"
    config = json.loads(secret.inputs["stringData"][".dockerconfigjson"])
    entry = config["auths"]["registry.example.com"]
    assert (entry["username"], entry["password"]) == ("deploy", "registry-test-password")
    assert base64.b64decode(entry["auth"]).decode() == "deploy:registry-test-password"


def test_k8s_outputs(k8s_stack: StackRun):
    assert k8s_stack.outputs == {"url": "http://moltbot.moltbot.svc.cluster.local:8080", "namespace": "moltbot"}


def test_tls_becomes_a_tls_secret_mounted_into_the_pods():
    cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    key = "-----BEGIN EC PRIVATE KEY-----\nMHc\n-----END EC PRIVATE KEY-----\n"
    run = run_stack("k8s", overrides={"moltbot:tlsCert": cert, "moltbot:tlsKey": key})
    secret = run.one("kubernetes:core/v1:Secret", "moltbot-tls")
    assert secret.has_secret and secret.inputs["type"] == "kubernetes.io/tls"
    assert secret.inputs["stringData"] == {"tls.crt": cert, "tls.key": key}
    container = pod_spec(run)["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert (env["MOLTBOT_TLS_CERT"], env["MOLTBOT_TLS_KEY"]) == (contract.TLS_CERT, contract.TLS_KEY)
    assert {"name": "tls", "mountPath": contract.TLS_DIR, "readOnly": True} in container["volumeMounts"]
    ports = run.one("kubernetes:core/v1:Service", "moltbot-service").inputs["spec"]["ports"]
    assert [p["name"] for p in ports] == ["http", "https"]


def peers_and_ports(policy: dict) -> list[tuple[dict, dict | None, list[tuple[str, int]]]]:
    return [(rule["from"][0]["namespaceSelector"]["matchLabels"],
             rule["from"][0].get("podSelector", {}).get("matchLabels"),
             [(port["protocol"], port["port"]) for port in rule["ports"]])
            for rule in policy["spec"]["ingress"]]


def test_network_policy_admits_only_the_ingress_controller_and_prometheus(k8s_stack: StackRun):
    policy = k8s_stack.one(NETWORK_POLICY, "moltbot-network-policy").inputs
    assert policy["spec"]["podSelector"] == {"matchLabels": LABELS}, "the pods of the Deployment"
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]  # egress: test_pulumi_isolation_and_secrets.py
    assert all(len(rule["from"]) == 1 for rule in policy["spec"]["ingress"])
    # Each peer is a namespace AND pod selector (one element), so other pods of those namespaces stay out.
    assert peers_and_ports(policy) == [
        ({"kubernetes.io/metadata.name": "ingress-nginx"}, {"app.kubernetes.io/name": "ingress-nginx"},
         [("TCP", contract.HTTP_PORT)]),
        ({"kubernetes.io/metadata.name": "monitoring"}, {"app.kubernetes.io/name": "prometheus"},
         [("TCP", contract.HTTP_PORT)]),
    ]
    # The Deployment's pods carry the labels the policy selects.
    template = k8s_stack.one("kubernetes:apps/v1:Deployment", "moltbot-deployment").inputs["spec"]["template"]
    assert LABELS.items() <= template["metadata"]["labels"].items()


def test_network_policy_selectors_are_configurable_and_https_is_admitted_with_tls():
    cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    key = "-----BEGIN EC PRIVATE KEY-----\nMHc\n-----END EC PRIVATE KEY-----\n"
    run = run_stack("k8s", overrides={
        "moltbot:tlsCert": cert, "moltbot:tlsKey": key,
        "moltbot:ingressFrom": json.dumps({"namespaceLabels": {"kubernetes.io/metadata.name": "traefik"},
                                           "podLabels": {"app.kubernetes.io/name": "traefik"}}),
        "moltbot:prometheusFrom": json.dumps({"namespaceLabels": {"team": "observability"}}),
    })
    policy = run.one(NETWORK_POLICY, "moltbot-network-policy").inputs
    assert peers_and_ports(policy) == [
        ({"kubernetes.io/metadata.name": "traefik"}, {"app.kubernetes.io/name": "traefik"},
         [("TCP", contract.HTTP_PORT), ("TCP", contract.HTTPS_PORT)]),
        # Without podLabels: any pod of the selected namespaces, and only on the HTTP port (/metrics).
        ({"team": "observability"}, None, [("TCP", contract.HTTP_PORT)]),
    ]
