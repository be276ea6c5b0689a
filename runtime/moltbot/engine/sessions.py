"""ONNX Runtime sessions: provider choice (CUDA when asked for and present, else CPU with a warning)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

log = logging.getLogger("moltbot.engine")


@dataclass(frozen=True)
class DeviceOptions:
    device: str = "cpu"  # cpu | cuda
    cuda_device_id: int = 0
    gpu_mem_limit: int = 0
    arena_extend_strategy: str = "kNextPowerOfTwo"
    intra_op_threads: int = 0


def providers_for(options: DeviceOptions) -> list:
    if options.device == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            cuda = {"device_id": options.cuda_device_id, "arena_extend_strategy": options.arena_extend_strategy}
            if options.gpu_mem_limit:
                cuda["gpu_mem_limit"] = options.gpu_mem_limit
            return [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]
        log.warning("device cuda was asked for but ONNX Runtime has no CUDA provider here "
                    "(install moltbot[gpu] and run with a GPU); using the CPU",
                    extra={"available_providers": ort.get_available_providers()})
    return ["CPUExecutionProvider"]


def create_session(model_path: Path, options: DeviceOptions) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if options.intra_op_threads:
        so.intra_op_num_threads = options.intra_op_threads
    so.log_severity_level = 3
    session = ort.InferenceSession(str(model_path), sess_options=so, providers=providers_for(options))
    requested = providers_for(options)[0]
    requested = requested[0] if isinstance(requested, tuple) else requested
    if session.get_providers()[0] != requested:
        log.warning("ONNX Runtime could not use %s for %s; running on %s", requested, model_path,
                    session.get_providers()[0])
    return session


def active_provider(session: ort.InferenceSession) -> str:
    return session.get_providers()[0]
