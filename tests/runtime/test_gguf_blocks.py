"""export/gguf_blocks.py: the GGUF block types decoded to MatMulNBits' (q, scale, zero point, offset) give
exactly the values of the `gguf` package's own dequantisation, for every type it covers, also after widening to
8 bits and splitting blocks (how rows of different types share one MatMulNBits). Runs in the model builder's
venv (the `gguf` package is not in the serving one). The real files' import and its perplexity are checked in
tests/fidelity and test_default_model's int4 test."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILDER_PYTHON = REPO / "build" / "builder-venv" / "bin" / "python"
BLOCKS = REPO / "runtime" / "moltbot" / "export" / "gguf_blocks.py"

CHECK = r"""
import importlib.util, json, sys
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize
spec = importlib.util.spec_from_file_location("gguf_blocks", sys.argv[1])
gb = importlib.util.module_from_spec(spec); sys.modules["gguf_blocks"] = gb; spec.loader.exec_module(gb)
rng = np.random.default_rng(7)
rows, k = 6, 512
# The f16 fields of each K-type block (random bytes elsewhere are valid blocks): byte offsets.
F16_FIELDS = {"Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}
SIZES = {"Q4_K": 144, "Q5_K": 176, "Q6_K": 210}
out = {}
for name in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"):
    qtype = T[name]
    if name in SIZES:
        raw = rng.integers(0, 256, size=(rows * k // 256, SIZES[name]), dtype=np.uint8)
        for at in F16_FIELDS[name]:
            raw[:, at:at + 2] = rng.uniform(-0.05, 0.05, size=(raw.shape[0], 1)).astype(np.float16).view(np.uint8)
        data = raw.reshape(rows, -1)
    else:
        weights = rng.normal(size=(rows, k)).astype(np.float32)
        weights[0] += 3.0  # a row all above zero: Q4_1's and Q5_1's minimum is positive
        data = quantize(weights, qtype)
    reference = dequantize(data, qtype).reshape(rows, k)
    per_row = k // (256 if name.endswith("_K") else 32)
    blocks = gb.decode(name, data.reshape(rows * per_row, -1), rows)
    widened = blocks.as_format(8, 16)
    out[name] = {"bits": blocks.bits, "block": blocks.block, "offset": blocks.offset is not None,
                 "max_q": int(blocks.q.max()), "spread": float(np.abs(reference).max()),
                 "error": float(np.abs(blocks.values() - reference).max()),
                 "widened_error": float(np.abs(widened.values() - reference).max()),
                 "packed_bytes": int(gb.packed_q(blocks).size)}
try:
    gb.decode("Q3_K", np.zeros((1, 110), np.uint8), 1)
    out["Q3_K"] = "decoded"
except gb.NotCovered as exc:
    out["Q3_K"] = str(exc)
print(json.dumps(out))
"""

EXPECTED = {  # type: (bits, block, has an offset, largest q)
    "Q4_0": (4, 32, False, 15), "Q4_1": (4, 32, True, 15), "Q5_0": (8, 32, False, 31), "Q5_1": (8, 32, True, 31),
    "Q8_0": (8, 32, False, 255), "Q4_K": (4, 32, True, 15), "Q5_K": (8, 32, True, 31), "Q6_K": (8, 16, False, 63),
}


def test_every_covered_block_type_decodes_to_gguf_s_own_values():
    result = subprocess.run([str(BUILDER_PYTHON), "-P", "-c", CHECK, str(BLOCKS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    decoded = json.loads(result.stdout.strip().splitlines()[-1])
    assert decoded.pop("Q3_K") == "block type Q3_K"
    for name, (bits, block, offset, max_q) in EXPECTED.items():
        got = decoded[name]
        assert (got["bits"], got["block"], got["offset"]) == (bits, block, offset), (name, got)
        assert got["max_q"] <= max_q and got["max_q"] >= max_q // 2, (name, got)  # the grid is used, not exceeded
        assert got["spread"] > 0.01, (name, got)  # real values, not zeros
        assert got["error"] <= 1e-6 * got["spread"] and got["widened_error"] <= 1e-6 * got["spread"], (name, got)
        assert got["packed_bytes"] == 6 * 512 * bits // 8, (name, got)
