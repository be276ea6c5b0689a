"""Fixtures for the container image tests: the image `make image` builds, and containers started with the
documented command on temporary folders (see image_helpers)."""

from __future__ import annotations

import secrets
import subprocess
import time

import pytest

from tests.image.image_helpers import GPU_IMAGE, IMAGE, KEYLESS_OPT_IN, REPO, Container, docker


@pytest.fixture(scope="session")
def image() -> str:
    subprocess.run(["bash", "scripts/ensure-docker.sh"], cwd=REPO, check=True, timeout=120)
    result = subprocess.run(["make", "--no-print-directory", "image"], cwd=REPO, capture_output=True, text=True,
                            timeout=1800)
    assert result.returncode == 0, f"make image failed:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
    return IMAGE


@pytest.fixture
def run_container(image, tmp_path):
    """Start containers with the documented command on fresh folders; removes them (and their anonymous
    volumes) afterwards. Extra `docker run` options go before the image name; `publish=False` publishes nothing
    (for `--network none`); `prepare(data)` fills the folders before the start; `image_tag` picks another
    image than moltbot:latest."""
    started: list[Container] = []

    def run(*options: str, publish: bool = True, prepare=None, image_tag: str = image) -> Container:
        data = tmp_path / f"moltbot-{len(started)}"
        for sub in ("models", "plugins", "logs"):  # mkdir -p /data/moltbot/{models,plugins,logs}
            (data / sub).mkdir(parents=True)
        if prepare:
            prepare(data)
        name = f"moltbot-imagetest-{secrets.token_hex(4)}"
        command = ["run", "-d", "--name", name, "--restart", "unless-stopped"]
        if publish:
            command += ["-p", "127.0.0.1::8080"]
        # Keyless on 0.0.0.0 the runtime refuses to start unless told so: these containers publish on 127.0.0.1.
        command += ["-e", "MOLTBOT_ALLOW_UNAUTHENTICATED=true"]
        command += ["-v", f"{data}/models:/app/models", "-v", f"{data}/plugins:/app/plugins",
                    "-v", f"{data}/logs:/app/logs", *KEYLESS_OPT_IN, *options, image_tag]
        container = Container(name=name, data=data, run_started=time.monotonic(), published=publish)
        started.append(container)
        docker(*command)
        return container

    yield run
    for container in started:
        docker("rm", "-f", "-v", container.name, check=False)


@pytest.fixture(scope="session")
def gpu_image() -> str:
    """The gpu variant, built by `make image VARIANT=gpu` (a cold build downloads about 2.5 GB of CUDA wheels)."""
    subprocess.run(["bash", "scripts/ensure-docker.sh"], cwd=REPO, check=True, timeout=120)
    result = subprocess.run(["make", "--no-print-directory", "image", "VARIANT=gpu"], cwd=REPO, capture_output=True,
                            text=True, timeout=3600)
    assert result.returncode == 0, f"make image VARIANT=gpu failed:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
    return GPU_IMAGE
