"""The pod the Kubernetes stack declares really runs, with its security context, probes, env and preStop.

There is no cluster here, so the pod's container is started on the real Docker engine the way a kubelet
would: the declared user and fsGroup, read-only root file system, no capabilities, no privilege escalation,
the container runtime's default seccomp profile (RuntimeDefault), the env as declared, emptyDirs as tmpfs,
the models claim as a temporary folder owned by the fsGroup, the plugins ConfigMap and the API keys Secret
as files (the Secret's owned by root and the fsGroup, with its defaultMode), the CPU and memory limits.
Then the probes are called as the kubelet calls them, requests without a key are refused, the preStop
command runs in the container, and SIGTERM must end it within what is left of the grace period.
"""

from __future__ import annotations

import os
import time
import uuid

import pytest

import contract
from pulumi_harness import SECRETS, k8s_name, run_stack
from real_engine import free_port, http_get
from stack_config import API_KEYS_FILE

pytestmark = pytest.mark.docker

READY_LINE = f"AI Assistant service ready on port {contract.HTTP_PORT}"
KEYS = SECRETS["moltbot:apiKeys"].split(",")


def quantity_to_bytes(quantity: str) -> int:
    assert quantity.endswith("Mi"), quantity
    return int(quantity[:-2]) * 1024**2


def test_declared_pod_runs_as_declared(engine, runtime_image, tmp_path):
    run = run_stack("k8s")
    pod = run.one("kubernetes:apps/v1:Deployment", "moltbot-deployment").inputs["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == runtime_image
    secrets = {k8s_name(s): s.inputs["stringData"] for s in run.of_type("kubernetes:core/v1:Secret")}
    configmaps = {c.inputs["metadata"]["name"]: c.inputs["data"] for c in run.of_type("kubernetes:core/v1:ConfigMap")}

    # Plain values only: the keys come as a file, no variable is resolved from a Secret.
    env = {variable["name"]: variable["value"] for variable in container["env"]}
    assert env["MOLTBOT_API_KEYS_FILE"] == API_KEYS_FILE
    assert not [value for value in env.values() for key in KEYS if key in value]

    security = pod["securityContext"]
    fs_group = int(security["fsGroup"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    binds, tmpfs = {}, {}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "emptyDir" in volume:
            tmpfs[mount["mountPath"]] = f"size={volume['emptyDir']['sizeLimit'].replace('i', '').lower()}"
        elif "persistentVolumeClaim" in volume:
            claim_dir = tmp_path / "claim"
            claim_dir.mkdir()
            # What fsGroup does to a claim: group-owned by it, group-writable, setgid.
            os.chown(claim_dir, 0, fs_group)
            claim_dir.chmod(0o2775)
            binds[str(claim_dir)] = {"bind": mount["mountPath"], "mode": "rw"}
        elif "configMap" in volume:
            data = configmaps[volume["configMap"]["name"]]
            folder = tmp_path / mount["name"]
            for item in volume["configMap"]["items"]:
                target = folder / item["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(data[item["key"]])
            folder.mkdir(exist_ok=True)
            binds[str(folder)] = {"bind": mount["mountPath"], "mode": "ro" if mount.get("readOnly") else "rw"}
        elif "secret" in volume:
            # What the kubelet makes of a Secret volume with fsGroup: files owned by root and the fsGroup,
            # with the volume's defaultMode.
            data = secrets[volume["secret"]["secretName"]]
            folder = tmp_path / mount["name"]
            folder.mkdir()
            for item in volume["secret"]["items"]:
                target = folder / item["path"]
                target.write_text(data[item["key"]])
                os.chown(target, 0, fs_group)
                target.chmod(int(volume["secret"]["defaultMode"]))
            binds[str(folder)] = {"bind": mount["mountPath"], "mode": "ro" if mount.get("readOnly") else "rw"}
        else:
            raise AssertionError(f"volume {mount['name']} of a kind this test does not carry over: {volume}")

    # RuntimeDefault is what Docker applies unless told otherwise: no seccomp option to pass.
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    limits = container["resources"]["limits"]
    ports = {f"{int(p['containerPort'])}/tcp": ("127.0.0.1", free_port()) for p in container["ports"]}
    http_port = ports[f"{int(next(p for p in container['ports'] if p['name'] == 'http')['containerPort'])}/tcp"][1]
    context = container["securityContext"]
    started = engine.containers.run(
        container["image"],
        name=f"moltbot-pulumi-pod-test-{uuid.uuid4().hex[:8]}",
        detach=True,
        environment=env,
        user=f"{int(security['runAsUser'])}:{int(security['runAsGroup'])}",
        group_add=[str(fs_group)],
        read_only=context["readOnlyRootFilesystem"],
        cap_drop=context["capabilities"]["drop"],
        security_opt=[] if context["allowPrivilegeEscalation"] else ["no-new-privileges"],
        tmpfs=tmpfs,
        volumes=binds,
        ports=ports,
        nano_cpus=int(float(limits["cpu"]) * 10**9),
        mem_limit=quantity_to_bytes(limits["memory"]),
        stop_signal="SIGTERM",
    )
    try:
        base = f"http://127.0.0.1:{http_port}"
        startup = container["startupProbe"]
        deadline = time.monotonic() + startup["periodSeconds"] * startup["failureThreshold"]
        while READY_LINE not in started.logs().decode(errors="replace"):
            started.reload()
            assert started.status in ("created", "running"), started.logs().decode(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "no ready line:\n" + started.logs().decode(errors="replace")[-3000:]
            time.sleep(0.5)
        # The probes, as the kubelet calls them (path on the named port).
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["port"] == "http"
            assert http_get(base + container[probe]["httpGet"]["path"]) == 200, probe
        # The keys file from the Secret is enforced.
        assert http_get(f"{base}/v1/models") == 401
        assert http_get(f"{base}/v1/models", key="not-a-key") == 401
        assert http_get(f"{base}/v1/models", key=KEYS[0]) == 200
        assert started.attrs["Config"]["User"] == f"{contract.RUNTIME_UID}:{contract.RUNTIME_GID}"
        status = started.exec_run(["cat", "/proc/1/status"]).output.decode()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        assert fields["CapEff"].strip() == "0" * 16 and fields["NoNewPrivs"].strip() == "1"
        assert fields["Seccomp"].strip() == "2", "the runtime's default seccomp filter"
        assert started.exec_run(["touch", "/app/new-file"]).exit_code != 0, "the root file system is read-only"

        # Pod deletion: preStop runs in the container, then SIGTERM; the rest of the grace period is the limit.
        pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
        began = time.monotonic()
        result = started.exec_run(pre_stop)
        assert result.exit_code == 0, result.output
        remaining = pod["terminationGracePeriodSeconds"] - (time.monotonic() - began)
        started.stop(timeout=int(remaining))
        state = engine.api.inspect_container(started.id)["State"]
        assert state["ExitCode"] == 0, started.logs().decode(errors="replace")[-3000:]
    finally:
        started.remove(force=True)
