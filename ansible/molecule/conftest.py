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
