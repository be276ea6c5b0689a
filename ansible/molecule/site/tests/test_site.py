"""site.yml turns a bare systemd host into a running, monitored, firewalled Moltbot host."""

import json
import os
import subprocess
import time

import yaml

import pytest

UNLISTED_PORT = 8081


def status(host, url: str) -> int:
    return int(host.check_output(f"curl -ks -o /dev/null -w '%{{http_code}}' --max-time 10 {url}"))


@pytest.fixture(scope="module")
def unlisted_published_container(host):
    """A second runtime container published on a port the firewall does not list (keyless: the runtime serves on
    the container's 0.0.0.0 only with the explicit opt-in, issue #22 item 5)."""
    host.run_expect([0], f"docker run -d --name molecule-unlisted -e MOLTBOT_ALLOW_UNAUTHENTICATED=true "
                         f"-p {UNLISTED_PORT}:8080 moltbot:latest")
    host.run_expect([0], f"for i in $(seq 90); do curl -fs http://127.0.0.1:{UNLISTED_PORT}/health && exit 0; "
                         "sleep 2; done; exit 1")
    yield
    host.run("docker rm -f molecule-unlisted")


def test_docker_runs(host):
    assert host.service("docker").is_running
    assert host.service("docker").is_enabled


def test_runtime_container_answers_health(host):
    assert json.loads(host.check_output("docker inspect moltbot"))[0]["State"]["Running"]
    assert status(host, "http://127.0.0.1:8080/health") == 200
    assert status(host, "http://127.0.0.1:8080/ready") == 200


def test_runtime_image_came_from_the_archive(host):
    assert host.file("/var/cache/moltbot/image.tar").size > 0


def test_node_exporter_serves_metrics(host):
    metrics = host.check_output("curl -fs http://127.0.0.1:9100/metrics")
    assert "node_cpu_seconds_total" in metrics
    assert 'node_systemd_unit_state{name="docker.service",state="active"' in metrics


def test_ufw_is_active(host):
    status_text = host.check_output("ufw status verbose")
    assert "Status: active" in status_text
    assert "Default: deny (incoming)" in status_text


def test_filebeat_configuration_is_in_place(host):
    config = host.file("/etc/filebeat/filebeat.yml")
    assert config.exists
    assert config.mode == 0o600
    assert "/data/moltbot/logs" in config.content_string


def test_published_runtime_port_is_reachable_from_the_network(probe, host_address):
    assert probe(f"http://{host_address}:8080/health") == 200


def test_published_port_not_listed_is_filtered(unlisted_published_container, probe, host_address, host):
    # Docker publishes it (it answers on the host itself), but DOCKER-USER drops it from the network.
    assert status(host, f"http://127.0.0.1:{UNLISTED_PORT}/health") == 200
    assert probe(f"http://{host_address}:{UNLISTED_PORT}/health") == 0


def test_node_exporter_is_closed_to_non_monitoring_sources(probe, host_address):
    assert probe(f"http://{host_address}:9100/metrics") == 0


SECRETS = ["site-es-Secret-1", "site-api-Key-1"]
ROTATED = ["rotated-es-Secret-2", "rotated-api-Key-2"]


def test_check_mode_diff_works_and_prints_no_secret(ansible_playbook):
    # Rotated secrets make the secret-bearing files differ, so a careless task would print them in its diff.
    result = ansible_playbook(
        "converge.yml", "--check", "--diff",
        "-e", '{"filebeat_output_password": "%s", "moltbot_api_keys": ["%s"]}' % tuple(ROTATED))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    for secret in SECRETS + ROTATED:
        assert secret not in output, f"{secret} printed by a --check --diff run"


def test_converge_log_has_no_secret():
    log = os.path.join(os.environ["MOLECULE_PROJECT_DIRECTORY"], "..", "build", "molecule", "site.log")
    if not os.path.exists(log):
        pytest.skip("no Molecule log (scenario not run through scripts/ansible-molecule.sh)")
    text = open(log, encoding="utf-8", errors="replace").read()
    for secret in SECRETS:
        assert secret not in text


def test_api_keys_are_not_in_the_container_environment(host):
    assert "site-api-Key-1" not in host.check_output("docker inspect moltbot")
    assert status(host, "http://127.0.0.1:8080/v1/models") == 401


def test_no_gpu_no_toolkit_no_dcgm(host):
    assert not host.package("nvidia-container-toolkit").is_installed
    assert "nvidia" not in json.loads(host.file("/etc/docker/daemon.json").content_string).get("runtimes", {})
    assert host.run("docker inspect dcgm-exporter").rc != 0


def test_prometheus_targets_are_written(host):
    name = host.check_output("hostname")
    moltbot = yaml.safe_load(host.file("/etc/prometheus/targets/moltbot.yml").content_string)
    node = yaml.safe_load(host.file("/etc/prometheus/targets/node.yml").content_string)
    dcgm = yaml.safe_load(host.file("/etc/prometheus/targets/dcgm.yml").content_string)
    assert [t for g in moltbot for t in g["targets"]] == ["moltbot-molecule-site:8080"], (name, moltbot)
    assert [t for g in node for t in g["targets"]] == ["moltbot-molecule-site:9100"]
    assert dcgm == []  # a CPU host: no DCGM exporter to scrape


# Rollback (issue #25): deploy v1 (converge), deploy v2, roll back to v1 with playbooks/rollback.yml while a client
# on the host keeps calling the API.
HOST_CONTAINER = "moltbot-molecule-site"
V2 = "moltbot:molecule-v2"
CLIENT_LIMIT_S = 240  # the client stops by itself after this, whatever happens to the test


def running_image(host) -> str:
    return host.check_output("docker inspect -f '{{.Image}}' moltbot")


def release_ids(host) -> list[str]:
    record = json.loads(host.file("/etc/moltbot/releases.json").content_string)
    return [release["id"] for release in record["releases"]]


def start_client(key: str) -> subprocess.Popen:
    """A client on the host through the switch: every 50 ms a GET /v1/models (with the API key) and GET /ready,
    each line `<unix time> <image the container runs> <models status> <ready status>`, until
    /tmp/molecule-client-stop exists (or CLIENT_LIMIT_S passed)."""
    loop = (
        f"end=$((SECONDS + {CLIENT_LIMIT_S})); rm -f /tmp/molecule-client-stop; "
        "while [ ! -e /tmp/molecule-client-stop ] && [ $SECONDS -lt $end ]; do "
        "image=$(docker inspect -f '{{.Image}}' moltbot 2>/dev/null || echo none); "
        f"models=$(curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 -H 'Authorization: Bearer {key}' "
        "http://127.0.0.1:8080/v1/models); "
        "ready=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 http://127.0.0.1:8080/ready); "
        'echo "$(date +%s.%N) $image $models $ready"; sleep 0.05; done')
    return subprocess.Popen(["docker", "exec", HOST_CONTAINER, "bash", "-c", loop],
                            stdout=subprocess.PIPE, text=True)


def stop_client(host, client: subprocess.Popen) -> list[list[str]]:
    host.run("touch /tmp/molecule-client-stop")
    out, _ = client.communicate(timeout=60)
    return [line.split() for line in out.splitlines() if len(line.split()) == 4]


def test_deploy_v2_then_roll_back_to_v1(host, ansible_playbook):
    v1 = running_image(host)
    host.run_expect([0], f"printf 'FROM moltbot:latest\\n' | docker build -q --label io.moltbot.version=molecule-v2 "
                         f"-t {V2} -")
    v2 = host.check_output(f"docker image inspect -f '{{{{.Id}}}}' {V2}")
    assert v2 != v1
    started = time.time()
    deployed = ansible_playbook("converge.yml", "-e", f"moltbot_image={V2}")
    deploy_took = time.time() - started
    assert deployed.returncode == 0, deployed.stdout[-3000:]
    assert running_image(host) == v2 and release_ids(host)[:2] == [v2, v1]

    client = start_client(SECRETS[1])
    time.sleep(1)  # the client's first lines are from v2
    started = time.time()
    rolled = ansible_playbook("../../playbooks/rollback.yml")
    took = time.time() - started
    lines = stop_client(host, client)
    assert rolled.returncode == 0, rolled.stdout[-3000:]
    assert running_image(host) == v1 and release_ids(host)[:2] == [v1, v2]
    # Both images stay on the host, tagged by the release record.
    tags = host.check_output("docker images --format '{{.Repository}}:{{.Tag}}' moltbot-release").split()
    assert {f"moltbot-release:{v1[7:19]}", f"moltbot-release:{v2[7:19]}"} <= set(tags)

    during = [line for line in lines if float(line[0]) >= started]
    ready_v1 = [float(line[0]) - started for line in during if line[1] == v1 and line[3] == "200"]
    failed = [line for line in during if line[2] != "200"]
    assert lines[0][1] == v2 and ready_v1, lines[:3] + lines[-3:]
    print(f"\nrollback: deploy of v2 {deploy_took:.1f} s; rollback playbook {took:.1f} s, ready on v1 "
          f"{ready_v1[0]:.1f} s after the command; "
          f"{len(failed)} of {len(during)} client requests failed ({sorted({line[2] for line in failed})})")
    # The target is 10 s from the command to ready; how long it takes here depends on what else loads the
    # machine (ansible/README.md, measured), so the bound is the deploy's own time under the same load: the
    # rollback ships, pulls and copies nothing.
    assert took < deploy_took
    assert "Copy the image archive" not in rolled.stdout and "Create the data directories" not in rolled.stdout


def test_rollback_to_a_release_not_recorded_stops_and_names_the_record(host, ansible_playbook):
    before = running_image(host)
    result = ansible_playbook("../../playbooks/rollback.yml", "-e", "moltbot_release=sha256:0123456789ab")
    assert result.returncode != 0
    assert "names no release of this host's record (/etc/moltbot/releases.json), which holds: 0: " + before[7:19] \
        in " ".join((result.stdout + result.stderr).split())
    assert running_image(host) == before


def test_a_release_falling_off_the_record_loses_its_tag_not_a_tagged_image(host, ansible_playbook):
    before = running_image(host)  # v1, after the rollback above
    result = ansible_playbook("../../playbooks/rollback.yml", "-e", "moltbot_releases_kept=1")
    assert result.returncode == 0, result.stdout[-3000:]
    after = running_image(host)
    assert after != before and release_ids(host) == [after]
    tags = host.check_output("docker images --format '{{.Repository}}:{{.Tag}}' moltbot-release").split()
    assert f"moltbot-release:{after[7:19]}" in tags and f"moltbot-release:{before[7:19]}" not in tags
    # v1 itself stays: moltbot:latest still names it.
    assert host.check_output("docker image inspect -f '{{.Id}}' moltbot:latest") == before
