"""ufw is on with default deny: SSH and Moltbot's ports open as configured, node exporter only for monitoring."""

import re

import pytest

LISTENERS = {8090: "moltbot", 9100: "node-exporter"}


@pytest.fixture(scope="module")
def listeners(host):
    """Plain HTTP servers on the ports under test, so a refused probe can only be the firewall."""
    for port in LISTENERS:
        host.run_expect([0], f"systemd-run --unit molecule-listen-{port} python3 -m http.server {port} --bind 0.0.0.0")
    host.run_expect([0], "for i in $(seq 50); do ss -ltn | grep -q ':9100 ' && ss -ltn | grep -q ':8090 ' && exit 0; "
                         "sleep 0.2; done; exit 1")
    yield
    for port in LISTENERS:
        host.run(f"systemctl stop molecule-listen-{port}")


def test_ufw_is_active_with_default_deny(host):
    status = host.check_output("ufw status verbose")
    assert "Status: active" in status
    assert "Default: deny (incoming), allow (outgoing)" in status


def test_ufw_starts_at_boot(host):
    assert host.service("ufw").is_enabled


@pytest.mark.parametrize("rule", [
    r"22/tcp\s+ALLOW\s+Anywhere",
    r"8090/tcp\s+ALLOW\s+Anywhere",
    r"8443/tcp\s+ALLOW\s+Anywhere",
    r"9100/tcp\s+ALLOW\s+192\.0\.2\.10\s",
    r"9999/udp\s+ALLOW\s+198\.51\.100\.0/24",
])
def test_rule_is_configured(host, rule):
    assert re.search(f"^{rule}", host.check_output("ufw status"), re.MULTILINE)


def test_node_exporter_port_has_no_other_source(host):
    assert len(re.findall(r"^9100/tcp\s", host.check_output("ufw status"), re.MULTILINE)) == 1


def test_moltbot_port_follows_the_moltbot_role_variable(host):
    status = host.check_output("ufw status")
    assert re.search(r"^8090/tcp\s+ALLOW\s+Anywhere", status, re.MULTILINE)
    assert not re.search(r"^8080/tcp", status, re.MULTILINE)


def test_docker_user_chain_is_loaded(host):
    chain = host.check_output("iptables -S DOCKER-USER")
    assert "--ctorigdstport 8090" in chain
    assert "2001:db8" not in chain
    assert chain.strip().splitlines()[-1] == "-A DOCKER-USER -m conntrack --ctstate NEW -j DROP"


def test_docker_user_chain_is_loaded_for_ipv6(host):
    chain = host.check_output("ip6tables -S DOCKER-USER")
    assert "--ctorigdstport 8090" in chain
    assert "-s 2001:db8:10::/48" in chain
    assert chain.strip().splitlines()[-1] == "-A DOCKER-USER -m conntrack --ctstate NEW -j DROP"


def test_dcgm_exporter_port_is_open_to_the_monitoring_sources_only(host):
    """DCGM's exporter is a container: its published 9400 goes through DOCKER-USER, not ufw's INPUT rules."""
    rules = [r for r in host.check_output("iptables -S DOCKER-USER").splitlines() if "--ctorigdstport 9400" in r]
    assert rules and all("-s 192.0.2.10/32" in r and r.endswith("-j RETURN") for r in rules), rules
    # No IPv6 monitoring source: nothing opens 9400 over IPv6, so the final DROP applies.
    assert "--ctorigdstport 9400" not in host.check_output("ip6tables -S DOCKER-USER")


def test_moltbot_port_answers_from_the_network(listeners, probe, host_address):
    assert probe(f"http://{host_address}:8090/") == 200


def test_node_exporter_port_is_closed_to_non_monitoring_sources(listeners, probe, host_address, host):
    assert probe(f"http://{host_address}:9100/") == 0
    # The service itself answers: only the firewall stands in the way.
    assert host.check_output("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:9100/") == "200"
