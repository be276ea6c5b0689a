"""Filebeat from Elastic's repository layout (signed stand-in), configured, checked and running.

Not tested here (Elastic's repository and packages can't be reached): the real Filebeat's own parsing of the
configuration and shipping to Elasticsearch/Logstash; the stand-in checks what `filebeat test config` rejects.
"""

import json
import re

import yaml


def environment(host) -> dict:
    lines = host.file("/etc/default/filebeat").content_string.splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def config(host) -> dict:
    return yaml.safe_load(host.file("/etc/filebeat/filebeat.yml").content_string)


def test_configuration_is_root_only(host):
    for path in ("/etc/filebeat/filebeat.yml", "/etc/default/filebeat"):
        f = host.file(path)
        assert (f.user, f.group, f.mode) == ("root", "root", 0o600)


def test_inputs_read_runtime_json_logs_and_container_logs(host):
    inputs = config(host)["filebeat.inputs"]
    runtime = [i for i in inputs if any("moltbot.log" in p for p in i["paths"])]
    containers = [i for i in inputs if any("/var/lib/docker/containers" in p for p in i["paths"])]
    assert runtime and containers
    assert any("ndjson" in parser for parser in runtime[0]["parsers"])


def test_output_is_elasticsearch_with_tls(host):
    rendered = config(host)
    assert "output.elasticsearch" in rendered
    assert rendered["output.elasticsearch"]["ssl.certificate_authorities"]


def test_environment_selects_the_output_and_credentials(host):
    env = environment(host)
    assert env["ELASTICSEARCH_ENABLED"] == "true"
    assert env["LOGSTASH_ENABLED"] == "false"
    assert env["ELASTICSEARCH_HOST"] == "es.molecule.internal:9200"
    assert env["ELASTICSEARCH_USERNAME"] == "molecule"
    assert env["ELASTICSEARCH_PASSWORD"] == "molecule-secret"
    assert env["FILEBEAT_CA_CERT"] == "/etc/filebeat/certs/molecule-ca.crt"
    assert env["MOLTBOT_LOGS_DIR"] == "/data/moltbot/logs"


def test_installed_from_the_signed_deb822_repository(host):
    # deb822_repository names the file after `name` (elastic-8.x) with the dot replaced.
    text = host.check_output("cat /etc/apt/sources.list.d/elastic-8*.sources")
    assert "Signed-By: /etc/apt/keyrings/elastic.asc" in text
    assert "URIs: http://127.0.0.1:8790/packages/8.x/apt" in text
    assert host.package("python3-debian").is_installed
    assert host.package("filebeat").version == "8.17.4"
    assert "http://127.0.0.1:8790/packages/8.x/apt" in host.check_output("apt-cache policy filebeat")


def test_ca_certificate_was_copied(host):
    ca = host.file("/etc/filebeat/certs/molecule-ca.crt")
    assert ca.exists and ca.mode == 0o644
    assert "BEGIN CERTIFICATE" in ca.content_string


def test_filebeat_test_config_passes_with_the_service_environment(host):
    out = host.check_output("systemd-run --quiet --wait --pipe --collect -p EnvironmentFile=/etc/default/filebeat "
                            "filebeat test config -c /etc/filebeat/filebeat.yml")
    assert "Config OK" in out


def test_filebeat_test_config_fails_without_the_ca(host):
    # What the CA copy prevents: TLS to Elasticsearch with a CA file that is not on the host.
    result = host.run("env FILEBEAT_CA_CERT=/etc/filebeat/certs/missing.crt "
                      "filebeat test config -c /etc/filebeat/filebeat.yml")
    assert result.rc != 0
    assert "missing.crt" in result.stdout + result.stderr


def test_service_runs_with_the_environment(host):
    service = host.service("filebeat")
    assert service.is_running and service.is_enabled
    pid = host.check_output("systemctl show -p MainPID --value filebeat")
    environ = host.check_output(f"tr '\\0' '\\n' < /proc/{pid}/environ")
    assert "ELASTICSEARCH_HOST=es.molecule.internal:9200" in environ


def test_check_mode_diff_prints_no_secret(ansible_playbook):
    # A changed password must not show up in a dry run's diff or results (the environment file is no_log, no diff).
    result = ansible_playbook("converge.yml", "--check", "--diff", "-e", "filebeat_output_password=rotated-Secret-42")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "rotated-Secret-42" not in result.stdout + result.stderr
    assert "molecule-secret" not in result.stdout + result.stderr
    # The environment file would change: its task ran (and reported a change) without printing the content.
    assert "changed: [" in result.stdout.split("Write the service environment", 1)[1].split("TASK [", 1)[0]


def test_disabled_role_changes_nothing_and_needs_no_ca(host, ansible_playbook):
    """The example inventory ships with filebeat_enabled: false: a first run without the log server's CA passes."""
    before = host.file("/etc/default/filebeat").content_string
    result = ansible_playbook("converge.yml", "-e", json.dumps({
        "filebeat_enabled": False, "filebeat_output_ca_cert": "/etc/filebeat/certs/not-there.crt",
        "filebeat_output_ca_cert_src": "", "filebeat_output_password": "disabled-run-Secret"}))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert re.search(r"\sok=\d+\s+changed=0\s", output), output[-3000:]
    assert host.file("/etc/default/filebeat").content_string == before
