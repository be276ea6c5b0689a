"""The pod the Kubernetes stack declares meets the Pod Security Standards' "restricted" profile, rule by rule.

No API server runs here to enforce the namespace's `pod-security.kubernetes.io/enforce: restricted` label, so
each control of the profile (the baseline controls plus the restricted ones, as the Kubernetes documentation
lists them) is a check of its own over the declared pod template: all its containers, init and ephemeral
containers included. Each check is also shown to catch the violation it is about, on a copy of the declared
pod changed to break that one rule.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import pytest

from pulumi_harness import StackRun, run_stack

CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN EC PRIVATE KEY-----\nMHc\n-----END EC PRIVATE KEY-----\n"

BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                         "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
SELINUX_TYPES = {"container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                           "projected", "secret"}

Template = dict  # a pod template: {"metadata": {...}, "spec": {...}}


def containers(template: Template) -> Iterator[dict]:
    spec = template["spec"]
    for kind in ("containers", "initContainers", "ephemeralContainers"):
        yield from spec.get(kind) or []


def contexts(template: Template) -> Iterator[tuple[str, dict]]:
    """The pod's security context and each container's, by name."""
    yield "pod", template["spec"].get("securityContext") or {}
    for container in containers(template):
        yield container["name"], container.get("securityContext") or {}


# --- Baseline ----------------------------------------------------------------------------------------------

def host_process(template: Template) -> list[str]:
    return [f"{who}: windowsOptions.hostProcess" for who, context in contexts(template)
            if (context.get("windowsOptions") or {}).get("hostProcess")]


def host_namespaces(template: Template) -> list[str]:
    return [field for field in ("hostNetwork", "hostPID", "hostIPC") if template["spec"].get(field)]


def privileged_containers(template: Template) -> list[str]:
    return [f"{c['name']}: privileged" for c in containers(template)
            if (c.get("securityContext") or {}).get("privileged")]


def capabilities_baseline(template: Template) -> list[str]:
    return [f"{c['name']}: adds {cap}" for c in containers(template)
            for cap in ((c.get("securityContext") or {}).get("capabilities") or {}).get("add") or []
            if cap not in BASELINE_CAPABILITIES]


def host_path_volumes(template: Template) -> list[str]:
    return [v["name"] for v in template["spec"].get("volumes") or [] if "hostPath" in v]


def host_ports(template: Template) -> list[str]:
    return [f"{c['name']}: hostPort {p['hostPort']}" for c in containers(template)
            for p in c.get("ports") or [] if p.get("hostPort")]


def apparmor(template: Template) -> list[str]:
    bad = [f"annotation {key}={value}" for key, value in (template["metadata"].get("annotations") or {}).items()
           if key.startswith("container.apparmor.security.beta.kubernetes.io/")
           and value != "runtime/default" and not value.startswith("localhost/")]
    return bad + [f"{who}: appArmorProfile {context['appArmorProfile']}" for who, context in contexts(template)
                  if "appArmorProfile" in context
                  and context["appArmorProfile"].get("type") not in ("RuntimeDefault", "Localhost")]


def selinux(template: Template) -> list[str]:
    bad = []
    for who, context in contexts(template):
        options = context.get("seLinuxOptions") or {}
        if options.get("type", "") not in SELINUX_TYPES | {""} or options.get("user") or options.get("role"):
            bad.append(f"{who}: seLinuxOptions {options}")
    return bad


def proc_mount(template: Template) -> list[str]:
    return [f"{c['name']}: procMount {c['securityContext']['procMount']}" for c in containers(template)
            if (c.get("securityContext") or {}).get("procMount", "Default") != "Default"]


def seccomp_baseline(template: Template) -> list[str]:
    return [f"{who}: seccompProfile Unconfined" for who, context in contexts(template)
            if (context.get("seccompProfile") or {}).get("type") == "Unconfined"]


def sysctls(template: Template) -> list[str]:
    return [s["name"] for s in (template["spec"].get("securityContext") or {}).get("sysctls") or []
            if s["name"] not in SAFE_SYSCTLS]


# --- Restricted --------------------------------------------------------------------------------------------

def volume_types(template: Template) -> list[str]:
    return [f"{v['name']}: {sorted(set(v) - {'name'})}" for v in template["spec"].get("volumes") or []
            if not set(v) - {"name"} <= RESTRICTED_VOLUME_TYPES or len(set(v) - {"name"}) != 1]


def privilege_escalation(template: Template) -> list[str]:
    # Must be set to false explicitly: unset means allowed.
    return [c["name"] for c in containers(template)
            if (c.get("securityContext") or {}).get("allowPrivilegeEscalation") is not False]


def running_as_non_root(template: Template) -> list[str]:
    pod = (template["spec"].get("securityContext") or {}).get("runAsNonRoot")
    bad = [c["name"] for c in containers(template)
           if (c.get("securityContext") or {}).get("runAsNonRoot") is False
           or (pod is not True and (c.get("securityContext") or {}).get("runAsNonRoot") is not True)]
    return (["pod: runAsNonRoot false"] if pod is False else []) + bad


def running_as_non_root_user(template: Template) -> list[str]:
    return [f"{who}: runAsUser 0" for who, context in contexts(template) if context.get("runAsUser") == 0]


def seccomp_restricted(template: Template) -> list[str]:
    allowed = ("RuntimeDefault", "Localhost")
    pod = ((template["spec"].get("securityContext") or {}).get("seccompProfile") or {}).get("type")
    bad = []
    for c in containers(template):
        own = ((c.get("securityContext") or {}).get("seccompProfile") or {}).get("type")
        if (own or pod) not in allowed:
            bad.append(f"{c['name']}: seccompProfile {own or pod}")
    return bad


def capabilities_restricted(template: Template) -> list[str]:
    bad = []
    for c in containers(template):
        capabilities = (c.get("securityContext") or {}).get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            bad.append(f"{c['name']}: does not drop ALL")
        bad += [f"{c['name']}: adds {cap}" for cap in capabilities.get("add") or [] if cap != "NET_BIND_SERVICE"]
    return bad


# Each rule, and a change to the declared pod that breaks it (to show the check can fail).
def _first(template: Template) -> dict:
    return template["spec"]["containers"][0].setdefault("securityContext", {})


RULES: dict[str, tuple[Callable[[Template], list[str]], Callable[[Template], None]]] = {
    "HostProcess": (host_process, lambda t: _first(t).update(windowsOptions={"hostProcess": True})),
    "Host Namespaces": (host_namespaces, lambda t: t["spec"].update(hostPID=True)),
    "Privileged Containers": (privileged_containers, lambda t: _first(t).update(privileged=True)),
    "Capabilities (baseline)": (capabilities_baseline,
                                lambda t: _first(t)["capabilities"].update(add=["SYS_ADMIN"])),
    "HostPath Volumes": (host_path_volumes,
                         lambda t: t["spec"]["volumes"].append({"name": "host", "hostPath": {"path": "/"}})),
    "Host Ports": (host_ports, lambda t: t["spec"]["containers"][0]["ports"][0].update(hostPort=8080)),
    "AppArmor": (apparmor, lambda t: _first(t).update(appArmorProfile={"type": "Unconfined"})),
    "SELinux": (selinux, lambda t: _first(t).update(seLinuxOptions={"type": "spc_t"})),
    "/proc Mount Type": (proc_mount, lambda t: _first(t).update(procMount="Unmasked")),
    "Seccomp (baseline)": (seccomp_baseline, lambda t: _first(t).update(seccompProfile={"type": "Unconfined"})),
    "Sysctls": (sysctls, lambda t: t["spec"]["securityContext"].update(
        sysctls=[{"name": "kernel.msgmax", "value": "65536"}])),
    "Volume Types": (volume_types,
                     lambda t: t["spec"]["volumes"].append({"name": "repo", "gitRepo": {"repository": "x"}})),
    "Privilege Escalation": (privilege_escalation, lambda t: _first(t).pop("allowPrivilegeEscalation")),
    "Running as Non-root": (running_as_non_root,
                            lambda t: t["spec"]["securityContext"].update(runAsNonRoot=False)),
    "Running as Non-root user": (running_as_non_root_user, lambda t: _first(t).update(runAsUser=0)),
    "Seccomp (restricted)": (seccomp_restricted, lambda t: t["spec"]["securityContext"].pop("seccompProfile")),
    "Capabilities (restricted)": (capabilities_restricted, lambda t: _first(t)["capabilities"].update(drop=[])),
}


def template_of(run: StackRun) -> Template:
    return run.one("kubernetes:apps/v1:Deployment", "moltbot-deployment").inputs["spec"]["template"]


@pytest.fixture(scope="module")
def variants(k8s_stack: StackRun, tmp_path_factory) -> dict[str, Template]:
    """The committed k8s stack, and one with every optional part of the pod: TLS, GPU, a registry login,
    model configs, a ReadWriteMany claim."""
    model_configs = tmp_path_factory.mktemp("model-configs")
    (model_configs / "chat.json").write_text('{"name": "chat"}')
    return {
        "k8s": template_of(k8s_stack),
        "k8s with everything": template_of(run_stack("k8s", overrides={
            "moltbot:tlsCert": CERT, "moltbot:tlsKey": KEY, "moltbot:gpu": "true",
            "moltbot:image": "registry.example.com/moltbot:gpu", "moltbot:registryUsername": "deploy",
            "moltbot:registryPassword": "registry-test-password", "moltbot:modelsAccessMode": "ReadWriteMany",
            "moltbot:modelConfigsDir": str(model_configs),
        })),
    }


@pytest.mark.parametrize("variant", ["k8s", "k8s with everything"])
@pytest.mark.parametrize("rule", list(RULES))
def test_declared_pod_meets_the_restricted_profile(variants, variant, rule):
    check, _ = RULES[rule]
    assert check(variants[variant]) == [], f"{rule} is violated"


@pytest.mark.parametrize("rule", list(RULES))
def test_each_check_catches_a_pod_that_breaks_its_rule(variants, rule):
    check, break_rule = RULES[rule]
    broken = copy.deepcopy(variants["k8s"])
    break_rule(broken)
    assert check(broken), f"the {rule} check missed a pod that breaks it"
