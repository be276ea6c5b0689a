"""Runs ONNX Runtime GenAI's model builder (0.18) with transformers 5, after one fix for Gemma 3 checkpoints.

transformers 5 keeps Gemma 3's rope bases only in `rope_parameters` (per layer type) and drops the older
`rope_local_base_freq` key from the config, which the builder's Gemma3Model reads for its sliding-window layers
(AttributeError otherwise). Here the config class answers that name from rope_parameters. The other half of the
fix is in the checkpoint's config.json (gguf_convert.fix_config: a flat rope_parameters with the global base
1,000,000, where the builder would otherwise fail on KeyError 'rope_type' or fall back to 10,000).

    python -P builder_shim.py BUILDER-ARGS...   (genai_builder.py runs it; -P keeps this folder off sys.path)
"""

from __future__ import annotations

import runpy
from typing import Any


def _local_base(config: Any) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    local = params.get("sliding_attention") if isinstance(params, dict) else None
    if isinstance(local, dict) and "rope_theta" in local:
        return float(local["rope_theta"])
    raise AttributeError("rope_local_base_freq")


def _patch() -> None:
    try:
        from transformers import Gemma3TextConfig
    except ImportError:  # a transformers without Gemma 3: nothing to fix
        return
    if "rope_local_base_freq" not in vars(Gemma3TextConfig):
        Gemma3TextConfig.rope_local_base_freq = property(_local_base, lambda self, value: None)


if __name__ == "__main__":
    _patch()
    runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__", alter_sys=True)
