"""The gpu variant: it builds, carries onnxruntime-gpu with every CUDA and cuDNN library it loads except the
driver's libcuda.so.1 (the NVIDIA Container Toolkit mounts that with `docker run --gpus all`), and on a machine
without a GPU it still serves, on the CPU, after a warning. Running it on a GPU is checked where one exists
(see docs/benchmarks.md)."""

from __future__ import annotations

import json
import textwrap
import tomllib

import pytest

from tests.image.image_helpers import CONTRACT, REPO, docker

# A cold build downloads and unpacks about 2.5 GB of wheels: more than the suite's default 600 s per test.
pytestmark = [pytest.mark.docker, pytest.mark.timeout(3600)]


def pinned_onnxruntime_gpu() -> str:
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    (spec,) = [s for s in extra if s.startswith("onnxruntime-gpu")]
    return spec.split("==", 1)[1]


def test_gpu_variant_carries_onnxruntime_gpu_and_its_cuda_libraries(gpu_image):
    config = json.loads(docker("image", "inspect", "-f", "{{json .Config}}", gpu_image).stdout)
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["MOLTBOT_DEVICE"] == "cuda" and env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
    # Deployments read the CUDA major from the label to check the host's driver (deploy/contract.json).
    cuda_major = str(CONTRACT["gpu"]["cuda_major"])
    labels = config["Labels"]
    assert labels["io.moltbot.variant"] == "gpu" and labels["io.moltbot.cuda-major"] == cuda_major
    print(f"\n{gpu_image}: {int(docker('image', 'inspect', '-f', '{{.Size}}', gpu_image).stdout) / 1e6:.0f} MB")
    probe = textwrap.dedent("""
        import importlib.metadata, importlib.util, json, pathlib, subprocess, onnxruntime
        capi = pathlib.Path(onnxruntime.__file__).parent / "capi"
        ldd = subprocess.run(["ldd", str(capi / "libonnxruntime_providers_cuda.so")], capture_output=True, text=True)
        cache = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
        print(json.dumps({
            "version": onnxruntime.__version__,
            "providers": onnxruntime.get_available_providers(),
            "unresolved": sorted(line.split()[0] for line in ldd.stdout.splitlines() if "not found" in line),
            "cached": sorted({lib for lib in ("libcudnn.so.9", "libcublasLt.so.13", "libcudart.so.13",
                                              "libcufft.so.12", "libcurand.so.10") if lib in cache}),
            "absent": [m for m in ("torch", "transformers", "optimum") if importlib.util.find_spec(m) is None],
            "cuda_runtime": importlib.metadata.version("nvidia-cuda-runtime"),
        }))
    """)
    found = json.loads(docker("run", "--rm", "--network", "none", "--entrypoint", "python", gpu_image, "-c",
                              probe).stdout)
    assert found["cuda_runtime"].split(".")[0] == cuda_major
    assert found["version"] == pinned_onnxruntime_gpu()
    assert "CUDAExecutionProvider" in found["providers"]
    assert found["unresolved"] == ["libcuda.so.1"], "only the driver library may come from the host"
    assert found["cached"] == sorted(["libcudnn.so.9", "libcublasLt.so.13", "libcudart.so.13", "libcufft.so.12",
                                      "libcurand.so.10"])
    assert found["absent"] == ["torch", "transformers", "optimum"]


def test_gpu_variant_without_a_gpu_serves_on_the_cpu(run_container, gpu_image):
    container = run_container(image_tag=gpu_image)
    container.wait_ready()
    logs = container.logs()
    # The CUDA provider library loaded everything but the driver, which only `--gpus all` provides.
    assert "libcuda.so.1" in logs and "running on CPUExecutionProvider" in logs
    with container.client() as client:
        models = client.get("/v1/models").json()["data"]
        assert {m["provider"] for m in models} == {"CPUExecutionProvider"}
        response = client.post("/v1/chat/completions", json={
            "model": "smollm2-135m-instruct", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
        assert response.status_code == 200, response.text
