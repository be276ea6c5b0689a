"""The runtime container runs as the reference article's `docker run`, with limits, keys, TLS and plugins."""

import json
import os
import re

import pytest

KEY = "molecule-key-1"
ADMIN_KEY = "molecule-admin-key"


def http(host, url: str, *curl_args: str) -> int:
    return int(host.check_output(f"curl -ks -o /dev/null -w '%{{http_code}}' --max-time 10 {' '.join(curl_args)} {url}"))


@pytest.fixture(scope="module")
def container(host) -> dict:
    return json.loads(host.check_output("docker inspect moltbot"))[0]


def test_container_runs_with_restart_unless_stopped(container):
    assert container["State"]["Running"]
    assert container["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"


def test_image_was_loaded_from_the_archive(host, container):
    assert host.file("/var/cache/moltbot/image.tar").exists
    assert container["Config"]["Image"] == "moltbot:latest"


def test_volumes_are_the_three_data_directories(container):
    mounts = {m["Destination"]: m["Source"] for m in container["Mounts"]}
    assert mounts["/app/models"] == "/data/moltbot/models"
    assert mounts["/app/plugins"] == "/data/moltbot/plugins"
    assert mounts["/app/logs"] == "/data/moltbot/logs"
    writable = {m["Destination"]: m["RW"] for m in container["Mounts"]}
    # The plugins are code: read-only for the runtime (issue #16), as on Kubernetes.
    assert (writable["/app/models"], writable["/app/plugins"], writable["/app/logs"]) == (True, False, True)


def test_with_tls_plain_http_is_published_on_loopback_only(container):
    ports = container["HostConfig"]["PortBindings"]
    assert (ports["8080/tcp"][0]["HostIp"], ports["8080/tcp"][0]["HostPort"]) == ("127.0.0.1", "8080")
    assert (ports["8443/tcp"][0]["HostIp"], ports["8443/tcp"][0]["HostPort"]) == ("0.0.0.0", "8443")


def test_from_the_network_only_https_answers(probe, host_address):
    assert probe(f"https://{host_address}:8443/health") == 200
    assert probe(f"http://{host_address}:8080/health") == 0


def test_container_is_hardened(container):
    config = container["HostConfig"]
    assert container["Config"]["User"] == "10001:10001"
    assert config["CapDrop"] == ["ALL"]
    assert "no-new-privileges:true" in config["SecurityOpt"]
    assert config["ReadonlyRootfs"] is True
    assert "/tmp" in config["Tmpfs"]


def test_runtime_process_runs_as_uid_10001_without_capabilities(host):
    # `docker exec` can't enter nested containers here: read the process from the test host's /proc.
    pid = host.check_output("docker inspect -f '{{.State.Pid}}' moltbot")
    status = host.file(f"/proc/{pid}/status").content_string
    assert "\nUid:\t10001\t10001\t10001\t10001\n" in status
    assert "\nCapEff:\t0000000000000000\n" in status
    assert "\nNoNewPrivs:\t1\n" in status


def test_api_keys_are_a_mounted_file_not_environment(host, container):
    env = container["Config"]["Env"]
    assert "MOLTBOT_API_KEYS_FILE=/run/secrets/moltbot/api-keys" in env
    assert not any(e.startswith("MOLTBOT_API_KEYS=") for e in env)
    assert KEY not in host.check_output("docker inspect moltbot")
    mount = next(m for m in container["Mounts"] if m["Destination"] == "/run/secrets/moltbot/api-keys")
    assert mount["Source"] == "/etc/moltbot/api-keys" and mount["RW"] is False
    keys_file = host.file("/etc/moltbot/api-keys")
    assert (keys_file.user, keys_file.gid, keys_file.mode) == ("root", 10001, 0o440)


def test_cpu_memory_and_pids_limits(container):
    assert container["HostConfig"]["NanoCpus"] == 1_500_000_000
    assert container["HostConfig"]["Memory"] == 2 * 1024**3
    assert container["HostConfig"]["PidsLimit"] == 1024  # deploy/contract.json's default


def test_admin_keys_are_their_own_mounted_file(host, container):
    env = container["Config"]["Env"]
    assert "MOLTBOT_ADMIN_API_KEYS_FILE=/run/secrets/moltbot/admin-api-keys" in env
    assert ADMIN_KEY not in host.check_output("docker inspect moltbot")
    mount = next(m for m in container["Mounts"] if m["Destination"] == "/run/secrets/moltbot/admin-api-keys")
    assert mount["Source"] == "/etc/moltbot/admin-api-keys" and mount["RW"] is False
    keys_file = host.file("/etc/moltbot/admin-api-keys")
    assert (keys_file.user, keys_file.gid, keys_file.mode) == ("root", 10001, 0o440)


def test_admin_routes_need_the_admin_key(host):
    reload_url = "http://127.0.0.1:8080/v1/plugins/reload"
    json_body = ("-X", "POST", "-H", "'Content-Type: application/json'", "-d", "'{}'")  # POSTs must be JSON (415)
    assert http(host, reload_url, *json_body, "-H", f"'Authorization: Bearer {KEY}'") == 403
    assert http(host, reload_url, *json_body, "-H", f"'Authorization: Bearer {ADMIN_KEY}'") == 200
    assert http(host, "http://127.0.0.1:8080/v1/models", "-H", f"'Authorization: Bearer {ADMIN_KEY}'") == 200


def test_no_gpu_requested_without_a_gpu(container):
    assert not container["HostConfig"]["DeviceRequests"]
    assert "MOLTBOT_DEVICE=cpu" in container["Config"]["Env"]


def test_health_and_ready(host):
    assert http(host, "http://127.0.0.1:8080/health") == 200
    assert http(host, "http://127.0.0.1:8080/ready") == 200


def test_https_with_the_shipped_certificate(host):
    assert http(host, "https://127.0.0.1:8443/health") == 200
    assert host.file("/data/moltbot/tls/tls.key").mode == 0o640


def test_api_keys_are_enforced(host):
    assert http(host, "http://127.0.0.1:8080/v1/models") == 401
    assert http(host, "http://127.0.0.1:8080/v1/models", "-H", f"'Authorization: Bearer {KEY}'") == 200
    assert http(host, "http://127.0.0.1:8080/v1/models", "-H", "'x-api-key: molecule-key-2'") == 200


def test_plugin_from_the_controller_is_served(host):
    assert host.file("/data/moltbot/plugins/code_assistant/plugin.py").uid == 10001
    plugins = host.check_output(f"curl -fs -H 'Authorization: Bearer {KEY}' http://127.0.0.1:8080/v1/plugins")
    assert "code_assistant" in plugins


def test_runtime_logs_land_in_the_data_directory(host):
    first_line = host.check_output("head -n 1 /data/moltbot/logs/moltbot.log")
    assert isinstance(json.loads(first_line), dict)


PLUGIN_SECRET = "molecule-plugin-Secret-1"


def test_plugin_secrets_are_a_root_only_env_file_given_to_the_container(host, container):
    env_file = host.file("/etc/moltbot/plugin.env")
    assert (env_file.user, env_file.group, env_file.mode) == ("root", "root", 0o600)
    assert f"MOLECULE_PLUGIN_SECRET={PLUGIN_SECRET}" in container["Config"]["Env"]
    # Read by Docker, never mounted into the container.
    assert not [m for m in container["Mounts"] if m["Source"] == "/etc/moltbot/plugin.env"]
    # With keys set the role never passes the keyless opt-in (issue #22 item 5).
    assert not [e for e in container["Config"]["Env"] if e.startswith("MOLTBOT_ALLOW_UNAUTHENTICATED=")]


def test_check_mode_diff_prints_no_plugin_secret(ansible_playbook):
    rotated = "rotated-plugin-Secret-2"
    result = ansible_playbook("converge.yml", "--check", "--diff", "-v",
                              "-e", json.dumps({"moltbot_plugin_env": {"MOLECULE_PLUGIN_SECRET": rotated}}))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert PLUGIN_SECRET not in output and rotated not in output


# Re-runs (issue #25): the role's phase tags alone, and a model config dropped from the inventory.
MODELS = os.path.join(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", ""), "models")


def _recap_changed(output: str) -> int:
    match = re.search(r"\sok=\d+\s+changed=(\d+)\s", output)
    assert match, output[-3000:]
    return int(match.group(1))


def _changed_tasks(output: str) -> list[str]:
    """The tasks and handlers ansible-playbook reported as changed."""
    changed, current = [], ""
    for line in output.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            current = line.split("[", 1)[1].rsplit("]", 1)[0]
        elif line.startswith("changed:"):
            changed.append(current)
    return changed


def _served_models(host) -> list[str]:
    body = host.check_output(f"curl -fs --max-time 10 -H 'Authorization: Bearer {KEY}' http://127.0.0.1:8080/v1/models")
    return sorted(m["id"] for m in json.loads(body)["data"])


def test_model_configs_from_the_inventory_are_served(host):
    assert host.file("/data/moltbot/models/svc-a.json").uid == 10001
    assert _served_models(host) == ["svc-a", "svc-b"]
    assert json.loads(host.file("/etc/moltbot/model-configs.json").content_string) == ["svc-a.json", "svc-b.json"]


# `host` keeps these in file order (pytest runs the tests of a module-scoped parameter together): before the
# test below drops a model config.
@pytest.mark.parametrize("tag", ["moltbot_preflight", "moltbot_install", "moltbot_configure", "moltbot_run"])
def test_each_phase_tag_runs_alone_and_changes_nothing(host, ansible_playbook, tag):
    result = ansible_playbook("rerun.yml", "--tags", tag)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert _recap_changed(output) == 0, _changed_tasks(output)


def test_a_model_config_dropped_from_the_inventory_is_removed_with_a_backup_and_the_runtime_restarted(
        host, container, ansible_playbook):
    before = host.file("/data/moltbot/models/svc-b.json").content_string
    # The configure phase alone: the restart is its handler (with its own ready gate), not a run-phase expression.
    result = ansible_playbook("rerun.yml", "--tags", "moltbot_configure", "-v",
                              "-e", json.dumps({"moltbot_model_configs": [os.path.join(MODELS, "svc-a.json")]}))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "RUNNING HANDLER [moltbot : restart moltbot]" in output
    assert PLUGIN_SECRET not in output  # the handler's result holds the container's variables: not logged
    assert not host.file("/data/moltbot/models/svc-b.json").exists
    backups = host.check_output("ls /data/moltbot/models/.removed").split()
    assert len(backups) == 1 and re.fullmatch(r"svc-b\.json\.\d{8}T\d{6}Z", backups[0]), backups
    assert host.file(f"/data/moltbot/models/.removed/{backups[0]}").content_string == before
    assert json.loads(host.file("/etc/moltbot/model-configs.json").content_string) == ["svc-a.json"]
    after = json.loads(host.check_output("docker inspect moltbot"))[0]
    # Restarted, not recreated: the same container with its hardening and ports, a new process.
    assert after["Id"] == container["Id"] and after["State"]["StartedAt"] != container["State"]["StartedAt"]
    assert after["HostConfig"] == container["HostConfig"]
    assert _served_models(host) == ["svc-a"]

    # Idempotent: the whole role again with the same list changes nothing.
    again = ansible_playbook("rerun.yml", "-e", json.dumps({"moltbot_model_configs": [os.path.join(MODELS, "svc-a.json")]}))
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert _recap_changed(again.stdout) == 0, again.stdout[-3000:]
