"""Memory bandwidth of this machine, measured with numpy copies (read + write traffic), on 1 and 2 threads; and
of a CUDA device (torch), for the GPU rows."""

from __future__ import annotations

import threading
import time

import numpy as np

ARRAY_BYTES = 256 * 1024 * 1024  # far beyond any cache


def copy_bandwidth(threads: int, repeats: int = 10, array_bytes: int = ARRAY_BYTES) -> float:
    """Best bytes/s over `repeats` copies of `array_bytes` split over `threads` threads (numpy releases the
    GIL while copying). Traffic is counted as read + write, as STREAM's copy does."""
    source = np.ones(array_bytes // 8, dtype=np.float64)
    target = np.empty_like(source)
    parts = np.array_split(np.arange(source.size), threads)
    bounds = [(int(p[0]), int(p[-1]) + 1) for p in parts]

    def copy(lo: int, hi: int) -> None:
        np.copyto(target[lo:hi], source[lo:hi])

    best = 0.0
    for _ in range(repeats):
        workers = [threading.Thread(target=copy, args=b) for b in bounds]
        started = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - started
        best = max(best, 2 * source.nbytes / elapsed)
    return best


def cuda_copy_bandwidth(repeats: int = 20, array_bytes: int = 1 << 30) -> float:
    """Best bytes/s of a device-to-device copy on the first CUDA device (torch), counted as read + write."""
    import torch

    source = torch.ones(array_bytes // 4, dtype=torch.float32, device="cuda")
    target = torch.empty_like(source)
    target.copy_(source)
    torch.cuda.synchronize()
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        target.copy_(source)
        torch.cuda.synchronize()
        best = max(best, 2 * array_bytes / (time.perf_counter() - started))
    return best


if __name__ == "__main__":  # python -m bench.membw [--cuda]: one JSON line
    import json
    import sys

    if "--cuda" in sys.argv[1:]:
        print(json.dumps({"device": "cuda", "bytes_per_second": cuda_copy_bandwidth()}))
    else:
        print(json.dumps({"device": "cpu", "bytes_per_second": {t: copy_bandwidth(t) for t in (1, 2)}}))
