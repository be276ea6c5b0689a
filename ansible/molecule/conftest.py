"""Fixtures shared by the scenarios' testinfra tests.

The probe reaches the test host the way a client on the network does: from a throw-away container on Docker's
default bridge (the project's own containers only), made from the test host image itself, which carries curl.
"""

import os
import subprocess

import pytest


@pytest.fixture(scope="module")
def host_address(host) -> str:
    """The test host's address on Docker's default bridge."""
    return host.check_output("ip -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1")


@pytest.fixture(scope="module")
def probe():
    """Return probe(url) -> HTTP status (0 when the connection fails or times out), seen from the bridge."""

    def _probe(url: str, timeout: int = 4) -> int:
        result = subprocess.run(
            ["docker", "run", "--rm", "--network", "bridge", "--entrypoint", "curl", os.environ["MOLECULE_IMAGE"],
             "-ks", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", str(timeout), url],
            capture_output=True, text=True, timeout=timeout + 60, check=False,
        )
        return int(result.stdout.strip() or 0)

    return _probe


@pytest.fixture(scope="module")
def ansible_playbook():
    """Return run(playbook, *args) -> CompletedProcess: a playbook of the current scenario (path relative to the
    scenario folder) run against its test host as Molecule runs it (its inventory and configuration)."""

    def _run(playbook: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
        scenario_dir = os.environ["MOLECULE_SCENARIO_DIRECTORY"]
        inventory = os.path.dirname(os.environ["MOLECULE_INVENTORY_FILE"])
        return subprocess.run(
            ["ansible-playbook", "-i", inventory, os.path.join(scenario_dir, playbook), *args],
            capture_output=True, text=True, timeout=timeout, check=False,
            env={**os.environ, "ANSIBLE_FORCE_COLOR": "false", "ANSIBLE_NOCOLOR": "1"},
        )

    return _run


def task_result(output: str, task: str) -> str:
    """The lines ansible-playbook printed for one task (from its TASK header to the next)."""
    return output.split(f"{task}]", 1)[1].split("TASK [", 1)[0] if f"{task}]" in output else ""
