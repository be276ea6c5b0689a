"""node exporter on the host's network, as the Docker stacks declare it, reached from the stack network.

The node exporter image can't be pulled here, so Debian's prometheus-node-exporter (`make system-deps`) runs
on this machine (the Docker host: host networking is its network namespace) with the declared listen address,
taken from a real bridge network's gateway as the provider would report it (the port moved to a free one).
A container on that network, with the host name the declared Prometheus container gets, must reach it; the
machine's other addresses must not.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid

import pytest

from pulumi_harness import Mocks, run_stack
from real_engine import free_port

pytestmark = pytest.mark.docker

CONTAINER = "docker:index/container:Container"


def test_node_exporter_listens_on_the_stack_network_only(engine, runtime_image, engine_mocks):
    binary = shutil.which("prometheus-node-exporter")
    assert binary, "prometheus-node-exporter is missing: run `make system-deps`"
    network = engine.networks.create(f"moltbot-net-node-test-{uuid.uuid4().hex[:8]}", driver="bridge")
    process = None
    try:
        gateway = network.attrs["IPAM"]["Config"][0]["Gateway"]
        run = run_stack("dev", mocks=Mocks(image_state=engine_mocks.image_state, gateway=gateway))
        node = run.one(CONTAINER, "monitoring-node-exporter").inputs
        prometheus = run.one(CONTAINER, "monitoring-prometheus").inputs
        assert node["networkMode"] == "host"
        (listen,) = [arg.split("=", 1)[1] for arg in node["command"] if arg.startswith("--web.listen-address=")]
        host, _, port = listen.rpartition(":")
        assert host == gateway and port == "9100"

        local_port = free_port()
        process = subprocess.Popen([binary, f"--web.listen-address={host}:{local_port}"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.stderr.read()[-2000:]
            try:
                socket.create_connection((host, local_port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "node exporter did not listen within 30 s"
                time.sleep(0.3)

        # From the stack network, by the name Prometheus's /etc/hosts gives the bridge's address.
        extra_hosts = {entry["host"]: entry["ip"] for entry in prometheus["hosts"]}
        assert extra_hosts == {"node-exporter": gateway}
        probe = ("import urllib.request; body = urllib.request.urlopen("
                 f"'http://node-exporter:{local_port}/metrics', timeout=5).read().decode(); "
                 "print('node_network_receive_bytes_total' in body)")
        output = engine.containers.run(runtime_image, entrypoint=["python", "-c", probe], network=network.name,
                                       extra_hosts=extra_hosts, remove=True)
        assert output.decode().strip() == "True"

        # Not on the machine's other addresses.
        for address in ("127.0.0.1", socket.gethostbyname(socket.gethostname())):
            if address != host:
                with pytest.raises(OSError):
                    socket.create_connection((address, local_port), timeout=2).close()
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
        network.remove()
