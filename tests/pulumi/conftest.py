"""Module-scoped runs of the committed stacks (see pulumi_harness.py), and the real Docker engine."""

from __future__ import annotations

import subprocess

import docker
import pytest

from pulumi_harness import REPO_ROOT, StackRun, run_stack


@pytest.fixture(scope="module")
def dev_stack() -> StackRun:
    return run_stack("dev")


@pytest.fixture(scope="module")
def prod_stack() -> StackRun:
    return run_stack("prod")


@pytest.fixture(scope="module")
def k8s_stack() -> StackRun:
    return run_stack("k8s")


@pytest.fixture(scope="session")
def engine() -> docker.DockerClient:
    """The real Docker engine (started by scripts/ensure-docker.sh when none answers)."""
    subprocess.run(["bash", str(REPO_ROOT / "scripts/ensure-docker.sh")], check=True, timeout=120)
    client = docker.from_env(version="auto", timeout=120)
    yield client
    client.close()


@pytest.fixture(scope="session")
def runtime_image(engine: docker.DockerClient) -> str:
    """moltbot:latest, built by `make image` (mk/image.mk) when this machine has none yet."""
    declared = run_stack("dev").one("docker:index/container:Container", "moltbot-container").inputs["image"]
    try:
        engine.images.get(declared)
    except docker.errors.ImageNotFound:
        subprocess.run(["make", "image"], cwd=REPO_ROOT, check=True, timeout=1800)
        engine.images.get(declared)
    return declared
