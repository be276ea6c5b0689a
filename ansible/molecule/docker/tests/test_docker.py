"""Docker Engine runs with the configured daemon options, keeps options it does not own, and admits the docker group."""

import json


def docker_info(host) -> dict:
    return json.loads(host.check_output("docker info --format '{{json .}}'"))


def test_service_runs_and_starts_at_boot(host):
    service = host.service("docker")
    assert service.is_running
    assert service.is_enabled


def test_engine_is_20_10_or_newer(host):
    major, minor = host.check_output("docker version --format '{{.Server.Version}}'").split(".")[:2]
    assert (int(major), int(minor)) >= (20, 10)


def test_daemon_runs_with_the_configured_options(host):
    info = docker_info(host)
    assert info["LoggingDriver"] == "json-file"
    assert info["Driver"] == "overlay2"


def test_daemon_json_merges_instead_of_clobbering(host):
    config = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert config["log-opts"] == {"max-size": "10m", "max-file": "3"}
    assert config["cgroup-parent"] == "moltbot-molecule-inner"
    # Written by another tool before the role ran: kept, and live in the daemon.
    assert config["runtimes"]["molecule-runc"]["path"] == "/usr/sbin/runc"
    assert config["log-level"] == "warn"
    assert "molecule-runc" in docker_info(host)["Runtimes"]


def test_deploy_user_can_use_docker(host):
    assert "docker" in host.user("deploy").groups
    host.run_expect([0], "su deploy -s /bin/sh -c 'docker info --format {{.ServerVersion}}'")
