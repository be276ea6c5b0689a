"""node exporter serves host metrics, with its collectors, textfile directory and hardening as configured."""

import uuid

SERVICE = "prometheus-node-exporter"
TEXTFILE_DIR = "/var/lib/node_exporter/textfile_collector"


def metrics(host) -> str:
    return host.check_output("curl -fsS --max-time 5 http://127.0.0.1:9100/metrics")


def test_service_runs_and_starts_at_boot(host):
    service = host.service(SERVICE)
    assert service.is_running
    assert service.is_enabled


def test_listens_on_port_9100(host):
    assert host.socket("tcp://0.0.0.0:9100").is_listening


def test_systemd_collector_is_on(host):
    assert 'node_systemd_unit_state{name="prometheus-node-exporter.service",state="active"' in metrics(host)


def test_disabled_collector_is_off(host):
    assert 'collector="wifi"' not in metrics(host)


def test_textfile_directory_is_scraped(host):
    marker = f'molecule_textfile_marker{{run="{uuid.uuid4().hex}"}} 42'
    host.run_expect([0], f"echo '{marker}' > {TEXTFILE_DIR}/molecule.prom")
    try:
        assert marker in metrics(host)
    finally:
        host.run(f"rm -f {TEXTFILE_DIR}/molecule.prom")


def test_unit_is_hardened(host):
    show = host.check_output(f"systemctl show -p ProtectSystem -p NoNewPrivileges -p ReadWritePaths {SERVICE}")
    assert "ProtectSystem=strict" in show
    assert "NoNewPrivileges=yes" in show
    assert TEXTFILE_DIR in show
