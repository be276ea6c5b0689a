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


def reloads(host) -> int:
    # systemd logs "Reloading." (249) or "Reloading requested from ..." (252) for each daemon-reload.
    return int(host.run("journalctl -q _PID=1 --no-pager | grep -c 'Reloading'").stdout.strip() or 0)


def test_rerun_does_not_reload_systemd(host, ansible_playbook):
    # A daemon-reload is NVIDIA's known trigger for containers losing their GPUs: an unchanged run must not do one.
    before = reloads(host)
    result = ansible_playbook("converge.yml")
    assert result.returncode == 0, result.stdout[-3000:]
    assert reloads(host) == before
