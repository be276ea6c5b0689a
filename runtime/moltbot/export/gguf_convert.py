"""GGUF file -> a dequantised Hugging Face checkpoint folder (config.json, fp32 safetensors, tokenizer files with
the chat template), through transformers' GGUF reader (needs transformers 5, `gguf`, `accelerate` and torch).

Run by export/gguf.py in the model builder's environment (`python gguf_convert.py FILE.gguf OUT_DIR`), so this
file imports nothing of moltbot. It prints one JSON line: the tool versions and the steps taken, for the
imported model's provenance file.

Fixes made to the checkpoint so that ONNX Runtime GenAI's builder 0.18 reads it right (see fix_config):
transformers 5 nests rope settings in `rope_parameters` (per layer type for Gemma 3), where the builder looks for
`rope_theta` / `rope_scaling` at the top: without them it fails (KeyError 'rope_type') or takes a rope base of
10,000 (Gemma 3's global layers use 1,000,000).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def fix_config(config: dict[str, Any]) -> list[str]:
    """Flatten transformers 5's `rope_parameters` into the top-level keys builder 0.18 reads; returns what it did."""
    steps: list[str] = []
    params = config.get("rope_parameters")
    if not isinstance(params, dict):
        return steps
    # Gemma 3: {"full_attention": {...}, "sliding_attention": {...}}; others: one {...} for all layers.
    full = params.get("full_attention", params)
    local = params.get("sliding_attention")
    if isinstance(full, dict) and "rope_theta" in full:
        config["rope_theta"] = full["rope_theta"]
        steps.append(f"rope_theta={full['rope_theta']} (from rope_parameters)")
        scaling = {k: v for k, v in full.items() if k != "rope_theta"}
        if scaling.get("rope_type", "default") != "default":
            config["rope_scaling"] = scaling
            steps.append(f"rope_scaling={scaling}")
        else:
            config["rope_scaling"] = None
    if isinstance(local, dict) and "rope_theta" in local:
        config["rope_local_base_freq"] = local["rope_theta"]
        steps.append(f"rope_local_base_freq={local['rope_theta']} (sliding layers)")
    if full is not params and isinstance(full, dict):
        # The builder's rope reader indexes rope_parameters["rope_type"]: give it the flat form (the full-attention
        # layers' settings); the sliding layers' base is rope_local_base_freq above.
        config["rope_parameters"] = dict(full)
        steps.append("rope_parameters: the full-attention layers' settings, flat")
    return steps


def convert(gguf_file: Path, out_dir: Path) -> dict[str, Any]:
    from importlib.metadata import version

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The weights are dequantised float32 tensors by now; transformers 5 still marks the model as quantised "with
    # gguf", which save_pretrained refuses to write. Drop the mark.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    config_path = out_dir / "config.json"
    config = json.loads(config_path.read_text())
    fixes = fix_config(config)
    config_path.write_text(json.dumps(config, indent=2))
    return {
        "architecture": config.get("model_type"),
        "steps": [f"dequantised to float32 by transformers {transformers.__version__} "
                  f"(gguf {version('gguf')}, accelerate {version('accelerate')}, torch {torch.__version__})",
                  *(f"config.json: {fix}" for fix in fixes)],
        "tools": {"transformers": transformers.__version__, "gguf": version('gguf'),
                  "accelerate": version('accelerate'), "torch": torch.__version__},
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: gguf_convert.py FILE.gguf OUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    print(json.dumps(convert(Path(argv[0]), out)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
