"""Filebeat's configuration and service environment are rendered as configured.

Not tested here (Elastic's repository and images can't be reached): installing the package, `filebeat test
config`, the running service and shipping to Elasticsearch/Logstash.
"""

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
