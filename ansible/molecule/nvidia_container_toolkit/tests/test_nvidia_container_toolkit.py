"""A GPU host (fixtures) provisioned from Docker's and NVIDIA's repositories (signed stand-ins on the test host).

Checked: the upstream install path (deb822 sources with Signed-By, keys whose checksum was pinned, packages from
127.0.0.1 at pinned versions), the nvidia runtime registered with Docker, NVIDIA's /dev/char step, the driver
check (old and missing driver: converge.yml asserts the messages), the runtime started with the GPU and refused
by the CUDA health gate because it serves on the CPU, the DCGM exporter, and GPU detection under
`--tags moltbot`. Not checked (no GPU here): a real driver, nvidia-smi, CUDA inside the container.
"""

import json

import pytest

REPO = "http://127.0.0.1:8790"


def sources(host, name: str) -> dict:
    text = host.file(f"/etc/apt/sources.list.d/{name}.sources").content_string
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


@pytest.mark.parametrize("name,keyring,uri", [
    ("docker", "/etc/apt/keyrings/docker.asc", f"{REPO}/linux/"),
    ("nvidia-container-toolkit", "/etc/apt/keyrings/nvidia-container-toolkit.asc", f"{REPO}/libnvidia-container/"),
])
def test_repository_is_a_signed_deb822_source(host, name, keyring, uri):
    source = sources(host, name)
    assert source["Signed-By"] == keyring
    assert source["URIs"].startswith(uri)
    assert host.file(keyring).exists
    # The stand-in key is what the role's pinned checksum accepted.
    pinned = host.file("/srv/fake-upstream/key.sha256").content_string.strip()
    assert host.check_output(f"sha256sum {keyring}").split()[0] == pinned


def test_python3_debian_was_installed_for_deb822(host):
    assert host.package("python3-debian").is_installed


@pytest.mark.parametrize("package", ["docker-ce", "docker-ce-cli", "containerd.io", "docker-compose-plugin",
                                     "nvidia-container-toolkit"])
def test_package_comes_from_the_repository(host, package):
    policy = host.check_output(f"apt-cache policy {package}")
    installed = policy.split("Installed: ")[1].split()[0]
    assert installed != "(none)"
    assert REPO in policy


def test_toolkit_version_is_pinned(host):
    assert host.package("nvidia-container-toolkit").version == "1.17.8-1"


def test_docker_runs_with_the_nvidia_runtime(host):
    assert host.service("docker").is_running
    info = json.loads(host.check_output("docker info --format '{{json .}}'"))
    assert "nvidia" in info["Runtimes"]
    config = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert config["runtimes"]["nvidia"]["path"] == "/usr/bin/nvidia-container-runtime"
    assert config["log-driver"] == "json-file"


def test_dev_char_symlinks_step_is_applied(host):
    rule = host.file("/lib/udev/rules.d/71-nvidia-dev-char.rules").content_string
    assert "nvidia-ctk system create-dev-char-symlinks --create-all" in rule
    assert "system create-dev-char-symlinks --create-all" in host.file("/var/log/nvidia-ctk-stand-in.log").content_string


def test_runtime_container_gets_the_gpus_and_cuda(host):
    container = json.loads(host.check_output("docker inspect moltbot"))[0]
    requests = container["HostConfig"]["DeviceRequests"]
    assert requests and requests[0]["Driver"] == "nvidia" and requests[0]["Count"] == -1
    assert "MOLTBOT_DEVICE=cuda" in container["Config"]["Env"]


def test_cuda_health_gate_refuses_a_runtime_on_the_cpu(host):
    message = host.file("/var/tmp/molecule-gpu-gate.txt").content_string
    assert "This is a GPU host but these models run without CUDA" in message
    assert "on CPUExecutionProvider" in message


def test_dcgm_exporter_runs_with_the_gpus(host):
    container = json.loads(host.check_output("docker inspect dcgm-exporter"))[0]
    assert container["State"]["Running"]
    assert container["HostConfig"]["DeviceRequests"][0]["Driver"] == "nvidia"
    assert "SYS_ADMIN" in container["HostConfig"]["CapAdd"]
    metrics = host.check_output("for i in $(seq 30); do curl -fs http://127.0.0.1:9400/metrics && exit 0; sleep 1; done; exit 1")
    assert "DCGM_FI_DEV_GPU_UTIL" in metrics


def test_tags_moltbot_alone_keeps_the_gpu(ansible_playbook):
    # Only the moltbot role's tasks run: it must detect the GPU itself, so the container (GPU request,
    # MOLTBOT_DEVICE=cuda) is left as it is; without detection it would be recreated for the CPU.
    result = ansible_playbook("tags-moltbot.yml", "--tags", "moltbot", "--check")
    assert result.returncode == 0, result.stdout[-3000:]
    run = result.stdout.split("moltbot : Run the runtime container]", 1)[1].split("TASK [", 1)[0]
    assert "ok: [" in run and "changed: [" not in run, run
    assert "skipping" not in result.stdout.split("Look for NVIDIA display or 3D controllers on the PCI bus]", 1)[1].split("TASK [", 1)[0]
