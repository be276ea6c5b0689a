"""Module-scoped runs of the committed stacks (see pulumi_harness.py), and the real Docker engine."""

from __future__ import annotations

import subprocess

import docker
import pytest

from pulumi_harness import REPO_ROOT, Mocks, StackRun, run_stack


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
    """The image the dev stack's RemoteImage names (moltbot:latest), built by `make image` (mk/image.mk)
    when this machine has none yet."""
    declared = run_stack("dev").one("docker:index/remoteImage:RemoteImage", "moltbot-image").inputs["name"]
    try:
        engine.images.get(declared)
    except docker.errors.ImageNotFound:
        subprocess.run(["make", "image"], cwd=REPO_ROOT, check=True, timeout=1800)
        engine.images.get(declared)
    return declared


@pytest.fixture(scope="session")
def engine_mocks(engine: docker.DockerClient, runtime_image: str) -> Mocks:
    """Mocks that answer for a RemoteImage as the provider would on this engine: the local image's ID and
    its repo digest (none for a locally built image)."""
    def image_state(name: str) -> dict[str, str]:
        image = engine.images.get(name)
        repository = name.split("@")[0].rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name
        digests = [d for d in image.attrs.get("RepoDigests") or [] if d.startswith(repository + "@")]
        return {"imageId": image.id, "repoDigest": digests[0] if digests else ""}
    return Mocks(image_state=image_state)
