"""ONNX Runtime sessions: provider choice (CUDA when asked for and present, else CPU with a warning)."""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort

from moltbot.engine.config import ModelConfig
from moltbot.settings import Settings

log = logging.getLogger("moltbot.engine")


@dataclass(frozen=True)
class DeviceOptions:
    device: str = "cpu"  # cpu | cuda
    cuda_device_id: int = 0
    gpu_mem_limit: int = 0
    arena_extend_strategy: str = "kNextPowerOfTwo"
    intra_op_threads: int = 0


def device_options(config: ModelConfig, settings: Settings) -> DeviceOptions:
    """The settings' device options, with the model config's own device where it sets one."""
    return DeviceOptions(device=config.device or settings.device, cuda_device_id=settings.cuda_device_id,
                         gpu_mem_limit=settings.gpu_mem_limit, arena_extend_strategy=settings.arena_extend_strategy,
                         intra_op_threads=settings.intra_op_threads)


def admission_limits(config: ModelConfig, settings: Settings) -> tuple[int, int]:
    """(max_running, max_queued): the settings, or the model config's own where it sets them."""
    return (config.max_running or settings.max_running,
            settings.max_queued if config.max_queued is None else config.max_queued)


# An execution provider: its name, or (name, options).
Provider = str | tuple[str, dict[str, Any]]


def providers_for(options: DeviceOptions) -> list[Provider]:
    if options.device == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            _preload_cuda_libraries()
            cuda: dict[str, Any] = {"device_id": options.cuda_device_id,
                                    "arena_extend_strategy": options.arena_extend_strategy}
            if options.gpu_mem_limit:
                cuda["gpu_mem_limit"] = options.gpu_mem_limit
            return [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]
        log.warning("device cuda was asked for but ONNX Runtime has no CUDA provider here "
                    "(install moltbot[gpu] and run with a GPU); using the CPU",
                    extra={"available_providers": ort.get_available_providers()})
    return ["CPUExecutionProvider"]


@functools.cache
def _preload_cuda_libraries() -> None:
    """Load CUDA's and cuDNN's libraries from the nvidia-* wheels that onnxruntime-gpu[cuda,cudnn] installs: the
    serving process imports no torch, which would otherwise have loaded them, and they are not on the loader's
    path. Where they are missing, the system's are used (or the CUDA provider fails and says so)."""
    try:
        ort.preload_dlls(cuda=True, cudnn=True, msvc=False)
    except Exception as exc:  # a partial set: the provider's own load reports what is missing
        log.warning("could not preload CUDA libraries from the nvidia wheels: %s", exc)


def create_session(model_path: Path, options: DeviceOptions, cache_dir: Path | None = None) -> ort.InferenceSession:
    """A session over model_path. On the CPU the optimised graph is cached in cache_dir: optimising a large
    graph takes seconds at every start, loading the optimised one a fraction of that."""
    providers = providers_for(options)
    cached = _optimised_path(Path(model_path), cache_dir) if providers == ["CPUExecutionProvider"] else None
    if cached is not None and cached.exists():
        try:
            return ort.InferenceSession(str(cached), sess_options=_session_options(options, optimise=False),
                                        providers=providers)
        except Exception as exc:  # a damaged cache file: make it again
            log.warning("ignoring the cached optimised graph %s: %s", cached, exc)
            cached.unlink(missing_ok=True)
    so = _session_options(options, optimise=True)
    partial = None
    if cached is not None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            partial = cached.with_suffix(f".{os.getpid()}.partial")
            so.optimized_model_filepath = str(partial)
        except OSError:  # a read-only cache: optimise every time
            partial = None
    session = ort.InferenceSession(str(model_path), sess_options=so, providers=providers)
    if cached is not None and partial is not None and partial.exists():
        partial.rename(cached)
    requested = providers_for(options)[0]
    requested = requested[0] if isinstance(requested, tuple) else requested
    if session.get_providers()[0] != requested:
        log.warning("ONNX Runtime could not use %s for %s; running on %s", requested, model_path,
                    session.get_providers()[0])
    return session


def _session_options(options: DeviceOptions, optimise: bool) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimise
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Unlimited, ONNX Runtime's own choice stands (one thread per physical core, which on SMT hosts beats one per
    # logical CPU); limited below the host's CPUs, the limit.
    budget = cpu_budget()
    threads = options.intra_op_threads or (budget if budget < (os.cpu_count() or budget) else 0)
    if threads:
        so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return so


# The optimised graph is written as one protobuf file, which cannot exceed 2 GB.
_MAX_CACHED_MODEL_BYTES = 1_500_000_000


def _optimised_path(model_path: Path, cache_dir: Path | None) -> Path | None:
    """Where this model's optimised graph is cached: keyed by the file, its size and time, and ORT's version
    (the optimised graph holds this machine's CPU-specific kernels, so the cache is never shipped elsewhere)."""
    # A graph with external weights (Optimum's model.onnx_data, the builder's model.onnx.data) is not cached: the
    # optimised copy would point at weight files beside it that are not there. The builder's graphs come optimised.
    external = (model_path.with_name(model_path.name + ".data"), model_path.with_name(model_path.name + "_data"))
    if cache_dir is None or any(path.exists() for path in external):
        return None
    stat = model_path.stat()
    if stat.st_size > _MAX_CACHED_MODEL_BYTES:
        return None
    key = hashlib.sha256(f"{model_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{ort.__version__}".encode())
    return Path(cache_dir) / "ort-optimised" / f"{model_path.parent.name}-{key.hexdigest()[:16]}.onnx"


def active_provider(session: ort.InferenceSession) -> str:
    return str(session.get_providers()[0])


def cpu_budget(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """The CPUs this process may use: the ones it may run on (a cpuset, `--cpuset-cpus`), capped by its cgroup's
    CPU quota (`docker run --cpus`, a Kubernetes CPU limit), rounded up. ONNX Runtime sizes its pools to the
    host's cores, so under `--cpus=2` on a 16-core host its 16 threads would share two CPUs' time and stall each
    other at every barrier."""
    cpus = len(os.sched_getaffinity(0))
    quota = _cgroup_quota(cgroup_root)
    return max(1, min(cpus, math.ceil(quota))) if quota else cpus


def _cgroup_quota(root: Path) -> float | None:
    """CPUs' worth of time the cgroup allows per period (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us`); None for
    no limit or where the files are not there."""
    try:
        v2 = root / "cpu.max"
        if v2.exists():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        v1 = root / "cpu" / "cpu.cfs_quota_us"
        if v1.exists():
            quota_us = int(v1.read_text())
            return None if quota_us <= 0 else quota_us / int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None
