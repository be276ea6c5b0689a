"""MoltbotKubernetes: the runtime as a scaled-out Deployment with its storage, config, Service, autoscaling and
NetworkPolicy, in a namespace that enforces Pod Security "restricted"."""

from __future__ import annotations

import base64
import hashlib
import json

import pulumi
import pulumi_kubernetes as k8s
from pulumi_kubernetes.core.v1 import (
    AffinityArgs, CapabilitiesArgs, ConfigMapVolumeSourceArgs, ContainerArgs, ContainerPortArgs,
    EmptyDirVolumeSourceArgs, EnvFromSourceArgs, EnvVarArgs, ExecActionArgs, HTTPGetActionArgs, KeyToPathArgs,
    LifecycleArgs, LifecycleHandlerArgs, LocalObjectReferenceArgs, PersistentVolumeClaimSpecArgs,
    PersistentVolumeClaimVolumeSourceArgs, PodAffinityArgs, PodAffinityTermArgs, PodSecurityContextArgs,
    PodSpecArgs, PodTemplateSpecArgs, ProbeArgs, ResourceRequirementsArgs, SeccompProfileArgs,
    SecretEnvSourceArgs, SecretVolumeSourceArgs, SecurityContextArgs, ServicePortArgs, ServiceSpecArgs, VolumeArgs,
    VolumeMountArgs, VolumeResourceRequirementsArgs,
)
from pulumi_kubernetes.meta.v1 import LabelSelectorArgs, ObjectMetaArgs
from pulumi_kubernetes.networking.v1 import (
    IPBlockArgs, NetworkPolicyEgressRuleArgs, NetworkPolicyIngressRuleArgs, NetworkPolicyPeerArgs,
    NetworkPolicyPortArgs, NetworkPolicySpecArgs,
)

import contract
from stack_config import (
    ADMIN_API_KEYS_FILE, API_KEYS_FILE, DOCKER_HUB_CONFIG_KEY, DOCKER_HUB_REGISTRY, PRE_STOP_SLEEP_SECONDS,
    TMP_SIZE_MIB, Settings, container_env, text_files,
)

CONFIGMAP_LIMIT_BYTES = 1024 * 1024
# The ReplicaSets `kubectl rollout undo` can go back to, and how long a rollout may go without a new ready pod
# (the models load before /ready) before the Deployment reports it failed and `pulumi up` with it.
REVISION_HISTORY_LIMIT = 5
PROGRESS_DEADLINE_SECONDS = 600
APP_LABELS = {"app.kubernetes.io/name": "moltbot"}
# The namespace admits only pods that meet the Pod Security Standards' "restricted" profile.
POD_SECURITY_LABELS = {"pod-security.kubernetes.io/enforce": "restricted",
                       "pod-security.kubernetes.io/warn": "restricted"}


def configmap_key(relative: str) -> str:
    """ConfigMap keys cannot hold '/': plugin files are flattened and mapped back to paths by `items`."""
    return relative.replace("/", "__")


def content_name(prefix: str, data: dict[str, str]) -> str:
    """A ConfigMap name from its content: new content is a new ConfigMap in a new pod template, so the
    Deployment rolls, and the old one stays for the old ReplicaSet (`kubectl rollout undo` mounts it again)."""
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    return f"{prefix}-{digest[:10]}"


class MoltbotKubernetes(pulumi.ComponentResource):
    def __init__(self, name: str, settings: Settings, opts: pulumi.ResourceOptions | None = None):
        super().__init__("moltbot:kubernetes:Runtime", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        labels = {**APP_LABELS, "app.kubernetes.io/instance": name}

        def meta(object_name: str | None, **extra) -> ObjectMetaArgs:
            return ObjectMetaArgs(name=object_name, namespace=settings.namespace, labels=labels, **extra)

        # The runtime reads its keys and certificate at start. Their Secrets get generated names (Pulumi's
        # autonaming): changed data replaces the Secret under a new name, so the pod template changes and
        # the Deployment rolls; a revoked key stops working once the rollout is done.
        rolled = None

        self.namespace = k8s.core.v1.Namespace(
            f"{name}-namespace",
            metadata=ObjectMetaArgs(name=settings.namespace, labels={**APP_LABELS, **POD_SECURITY_LABELS}),
            opts=child)
        in_namespace = pulumi.ResourceOptions(parent=self, depends_on=[self.namespace])

        model_configs = text_files(settings.model_configs_dir, "*.json", "moltbot:modelConfigsDir",
                                   max_bytes=CONFIGMAP_LIMIT_BYTES)
        plugin_files = text_files(settings.plugins_dir, "*", "moltbot:pluginsDir", max_bytes=CONFIGMAP_LIMIT_BYTES)
        # Named by content and kept when replaced (retain_on_delete): the old ReplicaSets, which
        # revisionHistoryLimit keeps, still name theirs. Removing old ones is left to the operator.
        kept = pulumi.ResourceOptions.merge(in_namespace, pulumi.ResourceOptions(retain_on_delete=True))
        model_configs_data = {configmap_key(k): v for k, v in model_configs.items()}
        plugins_data = {configmap_key(k): v for k, v in plugin_files.items()}
        self.model_configs = k8s.core.v1.ConfigMap(
            f"{name}-model-configs", metadata=meta(content_name(f"{name}-model-configs", model_configs_data)),
            data=model_configs_data, opts=kept)
        self.plugins = k8s.core.v1.ConfigMap(
            f"{name}-plugins", metadata=meta(content_name(f"{name}-plugins", plugins_data)),
            data=plugins_data, opts=kept)

        self.models_pvc = k8s.core.v1.PersistentVolumeClaim(
            f"{name}-models", metadata=meta(f"{name}-models"),
            spec=PersistentVolumeClaimSpecArgs(
                # Every replica mounts the same models: ReadWriteOnce (any cluster's storage) keeps the replicas
                # on the claim's node (affinity below); ReadWriteMany lets them spread across nodes.
                access_modes=[settings.models_access_mode],
                storage_class_name=settings.storage_class,
                resources=VolumeResourceRequirementsArgs(requests={"storage": settings.models_storage}),
            ),
            opts=in_namespace)

        # The keys are required here (stack_config): every pod in the cluster can reach a ClusterIP Service.
        # They reach the runtime as a mounted file, one key per line, never as an environment variable.
        secrets_dir, keys_file = API_KEYS_FILE.rsplit("/", 1)
        admin_keys_file = ADMIN_API_KEYS_FILE.rsplit("/", 1)[1]
        key_files = {keys_file: settings.api_keys.apply(lambda keys: "".join(f"{k}\n" for k in keys))}
        if settings.admin_api_keys is not None:  # separate admin keys: plugin reload, knowledge base ingest
            key_files[admin_keys_file] = settings.admin_api_keys.apply(lambda keys: "".join(f"{k}\n" for k in keys))
        self.api_keys_secret = k8s.core.v1.Secret(
            f"{name}-api-keys", metadata=meta(rolled), type="Opaque", string_data=key_files, opts=in_namespace)
        env = [EnvVarArgs(name=k, value=v) for k, v in container_env(settings).items()]
        env.append(EnvVarArgs(name="MOLTBOT_API_KEYS_FILE", value=API_KEYS_FILE))
        if settings.admin_api_keys is not None:
            env.append(EnvVarArgs(name="MOLTBOT_ADMIN_API_KEYS_FILE", value=ADMIN_API_KEYS_FILE))
        # The plugins' secrets (moltbot:pluginEnv) as a Secret the container takes its variables from (envFrom):
        # never in the plugins ConfigMap nor the pod spec. A generated name, so new values roll the pods.
        self.plugin_env_secret = None
        if settings.plugin_env is not None:
            self.plugin_env_secret = k8s.core.v1.Secret(
                f"{name}-plugin-env", metadata=meta(rolled), type="Opaque", string_data=settings.plugin_env,
                opts=in_namespace)

        self.pull_secret = None
        if settings.registry_username:
            registry = DOCKER_HUB_CONFIG_KEY if settings.registry == DOCKER_HUB_REGISTRY else settings.registry
            self.pull_secret = k8s.core.v1.Secret(
                f"{name}-registry", metadata=meta(f"{name}-registry"), type="kubernetes.io/dockerconfigjson",
                string_data={".dockerconfigjson": settings.registry_password.apply(lambda password: json.dumps(
                    {"auths": {registry: {
                        "username": settings.registry_username, "password": password,
                        "auth": base64.b64encode(f"{settings.registry_username}:{password}".encode()).decode(),
                    }}}))},
                opts=in_namespace)

        volumes = [
            VolumeArgs(name="models", persistent_volume_claim=PersistentVolumeClaimVolumeSourceArgs(
                claim_name=self.models_pvc.metadata.name)),
            VolumeArgs(name="model-configs", config_map=ConfigMapVolumeSourceArgs(
                name=self.model_configs.metadata.name)),
            VolumeArgs(name="plugins", config_map=ConfigMapVolumeSourceArgs(
                name=self.plugins.metadata.name,
                items=[KeyToPathArgs(key=configmap_key(k), path=k) for k in plugin_files])),
            # Logs go to stdout too (collected by the cluster); the file copy is per pod.
            VolumeArgs(name="logs", empty_dir=EmptyDirVolumeSourceArgs(size_limit="1Gi")),
            # The root file system is read-only; the runtime's scratch space.
            VolumeArgs(name="tmp", empty_dir=EmptyDirVolumeSourceArgs(size_limit=f"{TMP_SIZE_MIB}Mi")),
            # Readable by the fsGroup (the service user's group) only.
            VolumeArgs(name="api-keys", secret=SecretVolumeSourceArgs(
                secret_name=self.api_keys_secret.metadata.name, default_mode=0o440,
                items=[KeyToPathArgs(key=file, path=file) for file in key_files])),
        ]
        mounts = [
            VolumeMountArgs(name="models", mount_path=contract.MODELS_DIR),
            VolumeMountArgs(name="plugins", mount_path=contract.PLUGINS_DIR, read_only=True),
            VolumeMountArgs(name="logs", mount_path=contract.LOGS_DIR),
            VolumeMountArgs(name="tmp", mount_path="/tmp"),
            VolumeMountArgs(name="api-keys", mount_path=secrets_dir, read_only=True),
        ] + [
            VolumeMountArgs(name="model-configs", mount_path=f"{contract.MODELS_DIR}/{config_name}",
                            sub_path=configmap_key(config_name), read_only=True)
            for config_name in model_configs
        ]
        self.tls_secret = None
        if settings.tls_cert is not None:
            # A kubernetes.io/tls Secret's keys are tls.crt and tls.key, the file names of the contract.
            self.tls_secret = k8s.core.v1.Secret(
                f"{name}-tls", metadata=meta(rolled), type="kubernetes.io/tls",
                string_data={"tls.crt": settings.tls_cert, "tls.key": settings.tls_key}, opts=in_namespace)
            volumes.append(VolumeArgs(name="tls", secret=SecretVolumeSourceArgs(
                secret_name=self.tls_secret.metadata.name, default_mode=0o440, items=[
                    KeyToPathArgs(key="tls.crt", path=contract.TLS_CERT.rsplit("/", 1)[1]),
                    KeyToPathArgs(key="tls.key", path=contract.TLS_KEY.rsplit("/", 1)[1])])))
            mounts.append(VolumeMountArgs(name="tls", mount_path=contract.TLS_DIR, read_only=True))
            env += [EnvVarArgs(name="MOLTBOT_TLS_CERT", value=contract.TLS_CERT),
                    EnvVarArgs(name="MOLTBOT_TLS_KEY", value=contract.TLS_KEY)]

        resources = {"cpu": f"{settings.cpus:g}", "memory": settings.memory_quantity}
        if settings.gpu:
            resources["nvidia.com/gpu"] = "1"
        container = ContainerArgs(
            name="moltbot",
            image=settings.image,
            # A digest never changes; a tag is pulled again for each new pod with moltbot:imagePull=always.
            image_pull_policy="Always" if settings.image_pull == "always" else "IfNotPresent",
            env=env,
            env_from=[EnvFromSourceArgs(secret_ref=SecretEnvSourceArgs(name=self.plugin_env_secret.metadata.name))]
            if self.plugin_env_secret else None,
            ports=[ContainerPortArgs(name="http", container_port=contract.HTTP_PORT),
                   ContainerPortArgs(name="https", container_port=contract.HTTPS_PORT)],
            volume_mounts=mounts,
            resources=ResourceRequirementsArgs(requests=resources, limits=resources),
            # /health answers as soon as the server runs; model loading may take minutes on first start.
            startup_probe=ProbeArgs(http_get=HTTPGetActionArgs(path="/health", port="http"),
                                    period_seconds=5, failure_threshold=60),
            liveness_probe=ProbeArgs(http_get=HTTPGetActionArgs(path="/health", port="http"),
                                     period_seconds=10, timeout_seconds=5, failure_threshold=3),
            readiness_probe=ProbeArgs(http_get=HTTPGetActionArgs(path="/ready", port="http"),
                                      period_seconds=5, timeout_seconds=3, failure_threshold=2),
            security_context=SecurityContextArgs(
                allow_privilege_escalation=False, read_only_root_filesystem=True, privileged=False,
                capabilities=CapabilitiesArgs(drop=["ALL"])),
            lifecycle=LifecycleArgs(pre_stop=LifecycleHandlerArgs(
                exec_=ExecActionArgs(command=["sleep", str(PRE_STOP_SLEEP_SECONDS)]))),
        )
        self.deployment = k8s.apps.v1.Deployment(
            f"{name}-deployment", metadata=meta(name),
            # No replicas: the HorizontalPodAutoscaler below owns the count (a declared one would reset it on
            # every `pulumi up`).
            spec=k8s.apps.v1.DeploymentSpecArgs(
                revision_history_limit=REVISION_HISTORY_LIMIT,
                progress_deadline_seconds=PROGRESS_DEADLINE_SECONDS,
                selector=LabelSelectorArgs(match_labels=labels),
                strategy=k8s.apps.v1.DeploymentStrategyArgs(
                    type="RollingUpdate",
                    rolling_update=k8s.apps.v1.RollingUpdateDeploymentArgs(max_unavailable=0, max_surge=1)),
                template=PodTemplateSpecArgs(
                    metadata=ObjectMetaArgs(labels=labels),
                    spec=PodSpecArgs(
                        containers=[container],
                        # The image's service user; fsGroup makes the claim and the Secrets readable to it
                        # (the image's entrypoint only fixes ownership when started as root). The container
                        # runtime's default seccomp profile, as Pod Security "restricted" requires.
                        security_context=PodSecurityContextArgs(
                            run_as_user=contract.RUNTIME_UID, run_as_group=contract.RUNTIME_GID,
                            fs_group=contract.RUNTIME_GID, run_as_non_root=True,
                            seccomp_profile=SeccompProfileArgs(type="RuntimeDefault")),
                        # The runtime never calls the Kubernetes API.
                        automount_service_account_token=False,
                        image_pull_secrets=[LocalObjectReferenceArgs(name=self.pull_secret.metadata.name)]
                        if self.pull_secret else None,
                        affinity=AffinityArgs(pod_affinity=PodAffinityArgs(
                            required_during_scheduling_ignored_during_execution=[PodAffinityTermArgs(
                                label_selector=LabelSelectorArgs(match_labels=labels),
                                topology_key="kubernetes.io/hostname")]))
                        if settings.models_access_mode == "ReadWriteOnce" else None,
                        volumes=volumes,
                        # preStop sleep, then SIGTERM: the runtime drains (shutdown_timeout) and exits 0.
                        termination_grace_period_seconds=settings.termination_grace_seconds,
                    ),
                ),
            ),
            opts=in_namespace)

        self.service = k8s.core.v1.Service(
            f"{name}-service", metadata=meta(name),
            spec=ServiceSpecArgs(
                type=settings.service_type,
                selector=labels,
                ports=[ServicePortArgs(name="http", port=settings.http_port, target_port="http")]
                + ([ServicePortArgs(name="https", port=settings.https_port, target_port="https")]
                   if settings.tls_cert is not None else []),
            ),
            opts=in_namespace)

        self.autoscaler = k8s.autoscaling.v2.HorizontalPodAutoscaler(
            f"{name}-hpa", metadata=meta(name),
            spec=k8s.autoscaling.v2.HorizontalPodAutoscalerSpecArgs(
                scale_target_ref=k8s.autoscaling.v2.CrossVersionObjectReferenceArgs(
                    api_version="apps/v1", kind="Deployment", name=self.deployment.metadata.name),
                min_replicas=settings.replicas,
                max_replicas=settings.max_replicas,
                metrics=[k8s.autoscaling.v2.MetricSpecArgs(
                    type="Resource",
                    resource=k8s.autoscaling.v2.ResourceMetricSourceArgs(
                        name="cpu",
                        target=k8s.autoscaling.v2.MetricTargetArgs(
                            type="Utilization", average_utilization=settings.target_cpu_utilization)),
                )],
            ),
            opts=in_namespace)

        self.disruption_budget = k8s.policy.v1.PodDisruptionBudget(
            f"{name}-pdb", metadata=meta(name),
            spec=k8s.policy.v1.PodDisruptionBudgetSpecArgs(
                max_unavailable=1, selector=LabelSelectorArgs(match_labels=labels)),
            opts=in_namespace)

        # Who may connect to the pods: the ingress controller (HTTP, and HTTPS with TLS) and Prometheus
        # (/metrics on HTTP). Everything else in the cluster is refused where the network plugin enforces policies.
        def peer(selectors: dict[str, dict[str, str]]) -> NetworkPolicyPeerArgs:
            return NetworkPolicyPeerArgs(
                namespace_selector=LabelSelectorArgs(match_labels=selectors["namespaceLabels"]),
                pod_selector=LabelSelectorArgs(match_labels=selectors["podLabels"])
                if selectors["podLabels"] else None)

        def ports(*numbers: int, protocol: str = "TCP") -> list[NetworkPolicyPortArgs]:
            return [NetworkPolicyPortArgs(protocol=protocol, port=number) for number in numbers]

        # Where the pods may connect: the cluster DNS, and what moltbot:egress lists (service model upstreams,
        # plugin databases). Nothing else, the Kubernetes API and the cloud metadata address included (every
        # CIDR has the metadata address cut out: stack_config), so a plugin or a prompt-driven tool cannot fetch
        # the node's cloud credentials.
        def egress_rule(rule: dict) -> NetworkPolicyEgressRuleArgs:
            target = NetworkPolicyPeerArgs(ip_block=IPBlockArgs(cidr=rule["cidr"], except_=rule["except"] or None)) \
                if "cidr" in rule else peer(rule)
            return NetworkPolicyEgressRuleArgs(to=[target], ports=ports(*rule["ports"]))

        serving = (contract.HTTP_PORT, contract.HTTPS_PORT) if settings.tls_cert is not None else (contract.HTTP_PORT,)
        self.network_policy = k8s.networking.v1.NetworkPolicy(
            f"{name}-network-policy", metadata=meta(name),
            spec=NetworkPolicySpecArgs(
                pod_selector=LabelSelectorArgs(match_labels=labels),
                policy_types=["Ingress", "Egress"],
                ingress=[
                    NetworkPolicyIngressRuleArgs(from_=[peer(settings.ingress_from)], ports=ports(*serving)),
                    NetworkPolicyIngressRuleArgs(from_=[peer(settings.prometheus_from)],
                                                 ports=ports(contract.HTTP_PORT)),
                ],
                egress=[NetworkPolicyEgressRuleArgs(to=[peer(settings.dns_to)],
                                                    ports=ports(53, protocol="UDP") + ports(53))]
                + [egress_rule(rule) for rule in settings.egress],
            ),
            opts=in_namespace)

        self.labels = labels
        self.url = self.service.metadata.name.apply(
            lambda service: f"http://{service}.{settings.namespace}.svc.cluster.local:{settings.http_port}")
        self.register_outputs({"url": self.url, "deployment": self.deployment.metadata.name})
