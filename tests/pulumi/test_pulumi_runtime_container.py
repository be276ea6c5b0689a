"""The runtime the dev stack declares really runs, hardened: image, init step, env, ports, volumes, healthcheck, limits.

The arguments are taken from what the program registered with the (mocked) Pulumi engine, whose RemoteImage
answers with the real image's ID, and given to the real Docker engine the way the provider uses them: the
init container is created, gets the uploads (one archive extracted at `/`, like the provider's), runs to
completion, then the runtime container is created and started. Two local changes: ports go to free ports on
127.0.0.1 and the named volumes become temporary host folders (root-owned, like the folders Docker makes for
a new host path), so the test touches nothing of a real deployment.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import time
import uuid
from pathlib import Path

import docker
import pytest

import contract
from pulumi_harness import REPO_ROOT, SECRETS, run_stack
from real_engine import free_port, http_body, http_get
from stack_config import API_KEYS_FILE

pytestmark = pytest.mark.docker

PLUGINS_DIR = REPO_ROOT / "plugins"
READY_LINE = f"AI Assistant service ready on port {contract.HTTP_PORT}"
KEYS = SECRETS["moltbot:apiKeys"].split(",")
# Every argument the program may give the two containers; a new one must be carried over below.
RUNTIME_ARGS = {"name", "hostname", "image", "envs", "ports", "volumes", "networksAdvanced", "healthcheck",
                "restart", "gpus", "cpus", "memory", "logDriver", "logOpts", "stopSignal", "stopTimeout",
                "destroyGraceSeconds", "labels", "wait", "waitTimeout", "user", "readOnly", "tmpfs",
                "capabilities", "securityOpts", "ulimits"}
INIT_ARGS = {"name", "image", "entrypoints", "volumes", "uploads", "mustRun", "attach", "restart", "networkMode",
             "capabilities", "securityOpts", "labels"}
DURATION = re.compile(r"^(\d+)(ms|s|m)$")


def nanoseconds(duration: str) -> int:
    value, unit = DURATION.match(duration).groups()
    return int(value) * {"ms": 10**6, "s": 10**9, "m": 60 * 10**9}[unit]


def upload_archive(uploads: list[dict]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for upload in uploads:
            data = upload["content"].encode()
            entry = tarfile.TarInfo(upload["file"].lstrip("/"))
            entry.size = len(data)
            entry.mode = int(upload.get("permissions", "0644"), 8)
            entry.uid = int(upload.get("owner", "0"))
            archive.addfile(entry, io.BytesIO(data))
    return buffer.getvalue()


def labels_of(declared: dict) -> dict[str, str]:
    return {label["label"]: label["value"] for label in declared["labels"]}


def proc_status(container, field: str) -> str:
    result = container.exec_run(["grep", f"^{field}:", "/proc/1/status"])
    assert result.exit_code == 0, result.output
    return result.output.decode().split(":", 1)[1].strip()


def test_declared_runtime_runs_hardened_on_the_real_engine(engine, runtime_image, engine_mocks, tmp_path):
    run = run_stack("dev", mocks=engine_mocks)
    init = run.one("docker:index/container:Container", "moltbot-init").inputs
    declared = run.one("docker:index/container:Container", "moltbot-container").inputs
    assert set(declared) <= RUNTIME_ARGS, f"not carried over to the real run: {set(declared) - RUNTIME_ARGS}"
    assert set(init) <= INIT_ARGS, f"not carried over to the real run: {set(init) - INIT_ARGS}"
    # Both run the image the RemoteImage resolved, by its ID.
    assert declared["image"] == init["image"] == engine.images.get(runtime_image).id

    suffix = uuid.uuid4().hex[:8]
    ports = {f"{int(p['internal'])}/tcp": ("127.0.0.1", free_port()) for p in declared["ports"]}
    host_dirs = {}
    for volume in declared["volumes"]:
        host_dir = tmp_path / volume["volumeName"]
        host_dir.mkdir()  # root-owned, 0755: the init step must hand it to the service user
        host_dirs[volume["volumeName"]] = host_dir

    def binds(volumes: list[dict]) -> dict[str, dict]:
        return {str(host_dirs[v["volumeName"]]): {"bind": v["containerPath"], "mode": "ro" if v["readOnly"] else "rw"}
                for v in volumes}

    check = declared["healthcheck"]
    network = engine.networks.create(f"{declared['networksAdvanced'][0]['name']}-test-{suffix}", driver="bridge")
    aliases = declared["networksAdvanced"][0]["aliases"]
    init_container = container = None
    try:
        # The init step: created, the uploads extracted at `/` (into its writable volumes), run to completion.
        init_container = engine.containers.create(
            init["image"],
            name=f"{init['name']}-pulumi-test-{suffix}",
            entrypoint=init["entrypoints"],
            volumes=binds(init["volumes"]),
            network_mode=init["networkMode"],
            cap_drop=init["capabilities"]["drops"],
            cap_add=init["capabilities"]["adds"],
            security_opt=init["securityOpts"],
            restart_policy={"Name": init["restart"]},
            labels=labels_of(init),
        )
        assert init_container.put_archive("/", upload_archive(init["uploads"]))
        init_container.start()
        result = init_container.wait(timeout=60)
        assert result["StatusCode"] == 0, init_container.logs().decode(errors="replace")
        for data_dir in ("moltbot-models", "moltbot-logs"):
            assert host_dirs[data_dir].stat().st_uid == contract.RUNTIME_UID, f"{data_dir} not handed over"
        keys_file = host_dirs["moltbot-secrets"] / Path(API_KEYS_FILE).name
        assert keys_file.read_text() == "".join(f"{key}\n" for key in KEYS)
        assert (keys_file.stat().st_uid, keys_file.stat().st_mode & 0o777) == (contract.RUNTIME_UID, 0o400)

        container = engine.containers.create(
            declared["image"],
            name=f"{declared['name']}-pulumi-test-{suffix}",
            hostname=declared["hostname"],
            environment=declared["envs"],
            ports=ports,
            volumes=binds(declared["volumes"]),
            user=declared["user"],
            read_only=declared["readOnly"],
            tmpfs=declared["tmpfs"],
            cap_drop=declared["capabilities"]["drops"],
            security_opt=declared["securityOpts"],
            network=network.name,
            networking_config={network.name: engine.api.create_endpoint_config(aliases=aliases)},
            healthcheck={
                "test": check["tests"],
                "interval": nanoseconds(check["interval"]),
                "timeout": nanoseconds(check["timeout"]),
                "retries": int(check["retries"]),
                "start_period": nanoseconds(check["startPeriod"]),
            },
            restart_policy={"Name": declared["restart"]},
            device_requests=[docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
            if declared.get("gpus") else None,
            nano_cpus=int(float(declared["cpus"]) * 10**9),
            mem_limit=f"{int(declared['memory'])}m",
            ulimits=[docker.types.Ulimit(name=u["name"], soft=int(u["soft"]), hard=int(u["hard"]))
                     for u in declared.get("ulimits", [])],
            log_config=docker.types.LogConfig(type=declared["logDriver"], config=declared["logOpts"]),
            stop_signal=declared["stopSignal"],
            labels=labels_of(declared),
        )
        # Why the uploads go through the init container: Docker copies nothing into a read-only root.
        with pytest.raises(docker.errors.APIError, match="read-only"):
            container.put_archive("/", upload_archive(init["uploads"][:1]))
        container.start()
        base = f"http://127.0.0.1:{ports[f'{contract.HTTP_PORT}/tcp'][1]}"

        deadline = time.monotonic() + 180
        while READY_LINE not in container.logs().decode(errors="replace"):
            container.reload()
            assert container.status in ("created", "running"), container.logs().decode(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "no ready line within 180 s:\n" + container.logs().decode()[-3000:]
            time.sleep(0.5)
        assert http_get(f"{base}/ready") == 200

        # The keys file (a Pulumi secret, never in the environment) is enforced: /v1 needs one of its keys.
        assert http_get(f"{base}/v1/models") == 401
        assert http_get(f"{base}/v1/models", key="not-a-key") == 401
        assert http_get(f"{base}/v1/models", key=KEYS[1]) == 200
        inspected = engine.api.inspect_container(container.id)
        assert not [item for item in inspected["Config"]["Env"] for key in KEYS if key in item]

        # Hardened, as declared and as the kernel sees it.
        host_config = inspected["HostConfig"]
        assert inspected["Config"]["User"] == f"{contract.RUNTIME_UID}:{contract.RUNTIME_GID}"
        assert host_config["ReadonlyRootfs"] is True and host_config["CapDrop"] == ["ALL"]
        assert host_config["SecurityOpt"] == ["no-new-privileges"] and host_config["Tmpfs"] == declared["tmpfs"]
        assert proc_status(container, "Uid").split()[:2] == [str(contract.RUNTIME_UID)] * 2
        assert proc_status(container, "CapEff") == "0" * 16 and proc_status(container, "CapBnd") == "0" * 16
        assert proc_status(container, "NoNewPrivs") == "1"
        assert proc_status(container, "Seccomp") == "2", "Docker's default seccomp profile"
        assert container.exec_run(["touch", "/app/new-file"]).exit_code != 0, "the root file system is read-only"
        assert container.exec_run(["touch", "/tmp/scratch"]).exit_code == 0, "/tmp is a writable tmpfs"
        mounts = {m["Destination"]: m for m in inspected["Mounts"]}
        assert mounts[str(Path(API_KEYS_FILE).parent)]["RW"] is False
        # The plugins are read-only for the runtime; its processes and threads are bounded (the nproc ulimit).
        assert mounts[contract.PLUGINS_DIR]["RW"] is False
        assert container.exec_run(["touch", f"{contract.PLUGINS_DIR}/new-file"]).exit_code != 0
        limits = container.exec_run(["cat", "/proc/1/limits"]).output.decode()
        processes = next(line for line in limits.splitlines() if line.startswith("Max processes")).split()
        assert processes[2:4] == [str(contract.DEFAULT_PIDS_LIMIT)] * 2

        # The uploads landed in the plugins volume (here a host folder), and the runtime found those plugins.
        for upload in init["uploads"]:
            volume = next(v for v in init["volumes"] if upload["file"].startswith(v["containerPath"] + "/"))
            relative = upload["file"].removeprefix(volume["containerPath"] + "/")
            assert (host_dirs[volume["volumeName"]] / relative).read_text() == upload["content"]
        plugin_names = {json.loads((PLUGINS_DIR / folder / "config.json").read_text())["name"]
                        for folder in {u["file"].removeprefix(contract.PLUGINS_DIR + "/").split("/")[0]
                                       for u in init["uploads"] if u["file"].endswith("/config.json")}}
        assert plugin_names, "the dev stack uploads the built-in plugins"
        listed = json.loads(http_body(f"{base}/v1/plugins", key=KEYS[0]))
        assert plugin_names <= {plugin["name"] for plugin in listed["data"]}

        # The declared healthcheck passes in this image as the service user (first probe after one interval).
        deadline = time.monotonic() + nanoseconds(check["interval"]) / 10**9 * 3 + 30
        while (health := engine.api.inspect_container(container.id)["State"]["Health"])["Status"] != "healthy":
            assert health["Status"] != "unhealthy" and time.monotonic() < deadline, \
                f"healthcheck {health['Status']}; last probes: {health['Log'][-2:]}"
            time.sleep(1)

        host_config = engine.api.inspect_container(container.id)["HostConfig"]
        assert host_config["RestartPolicy"]["Name"] == "unless-stopped"
        assert host_config["NanoCpus"] == 2 * 10**9 and host_config["Memory"] == 4096 * 1024**2
        log_file = host_dirs["moltbot-logs"] / "moltbot.log"
        assert log_file.stat().st_size > 0 and log_file.stat().st_uid == contract.RUNTIME_UID, \
            "the runtime logs into the logs volume as the service user"

        # SIGTERM (the declared stop signal) drains and exits 0 within the declared stop timeout.
        container.stop(timeout=int(declared["stopTimeout"]))
        assert engine.api.inspect_container(container.id)["State"]["ExitCode"] == 0
    finally:
        for created in (container, init_container):
            if created is not None:
                created.remove(force=True)
        network.remove()
