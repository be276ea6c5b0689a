"""Image versions (issue #25, rollback): every build is tagged with its version and labelled, and a build leaves
the image it replaced under that image's own version tag, which a host rolls back to."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.image.image_helpers import REPO, docker

pytestmark = pytest.mark.docker

REPOSITORY = "moltbot-versiontest"
MODELS_DIR = REPO / "build" / "default-models"


def build(version: str) -> None:
    """scripts/image-build.sh as `make image` runs it, under a test repository and a given version."""
    result = subprocess.run(
        ["bash", "scripts/image-build.sh"], cwd=REPO, capture_output=True, text=True, timeout=1800,
        env={**os.environ, "IMAGE_TAG": f"{REPOSITORY}:latest", "IMAGE_VERSION": version,
             "DEFAULT_MODELS_DIR": str(MODELS_DIR)},
    )
    assert result.returncode == 0, f"image-build failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"


def inspect(name: str) -> dict:
    return json.loads(docker("image", "inspect", name).stdout)[0]


@pytest.fixture
def two_builds():
    subprocess.run(["bash", "scripts/ensure-docker.sh"], cwd=REPO, check=True, timeout=120)
    assert (MODELS_DIR / "defaults.json").is_file(), "the default models are not made (make image makes them)"
    yield build
    for tag in ("latest", "v1-test", "v2-test"):
        docker("rmi", f"{REPOSITORY}:{tag}", check=False)


def test_a_build_moves_latest_and_keeps_the_replaced_image_under_its_version(two_builds):
    two_builds("v1-test")
    first = inspect(f"{REPOSITORY}:v1-test")
    assert inspect(f"{REPOSITORY}:latest")["Id"] == first["Id"]
    labels = first["Config"]["Labels"]
    assert labels["io.moltbot.version"] == "v1-test" and labels["io.moltbot.variant"] == "cpu"
    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    assert labels["io.moltbot.revision"].removesuffix("-dirty") == revision
    two_builds("v2-test")
    second = inspect(f"{REPOSITORY}:v2-test")
    assert second["Id"] != first["Id"] and inspect(f"{REPOSITORY}:latest")["Id"] == second["Id"]
    # The replaced image is still there, whole, under its version tag.
    assert inspect(f"{REPOSITORY}:v1-test")["Id"] == first["Id"]
    assert second["Config"]["Labels"]["io.moltbot.version"] == "v2-test"
