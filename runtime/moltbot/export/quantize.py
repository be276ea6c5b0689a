"""int8 dynamic quantisation of an exported model (needs onnx and onnxruntime).

Weights of the MatMuls become int8 (per channel), activations stay float and are quantised on the fly. Only
MatMuls with constant weights are touched (`MatMulConstBOnly`): on the CPU this reads a quarter of the bytes per
decode step and was measured faster than quantising the attention MatMuls too (see docs/benchmarks.md).

Used for Optimum's exports (chat models the model builder does not cover, and embedding models with
"quantize": "int8"). The builder's chat graphs take the builder's own MatMulNBits int8 instead: on real decoder
weights this recipe's per-tensor activation quantisation lost half of the fp32 graph's next-token choices
(docs/engine.md, #21). MiniLM's int8 vectors are checked against fp32 in tests/runtime/test_int8_real_weights.py.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

# An int8 graph below this size is written as one file: ONNX Runtime caches the optimised form of such a graph
# (engine/sessions.py), which makes later starts faster. A protobuf file cannot exceed 2 GB.
SINGLE_FILE_BYTES = 1_500_000_000


def quantize_graph(src: str | Path, dst: str | Path, external_data: bool | None = None) -> None:
    """Write the int8 copy of the graph file `src` to `dst`; its weights go beside it when `external_data`, or
    (None) when the float graph with its weights is larger than SINGLE_FILE_BYTES (int8 keeps about a third)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if external_data is None:
        float_bytes = sum(path.stat().st_size for path in Path(src).parent.glob(Path(src).name + "*"))
        external_data = float_bytes > SINGLE_FILE_BYTES
    quantize_dynamic(Path(src), Path(dst), per_channel=True, weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul"], extra_options={"MatMulConstBOnly": True},
                     use_external_data_format=external_data)


def quantize_int8(src: str | Path, dst: str | Path) -> Path:
    """Write an int8 copy of the model folder `src` to `dst`, atomically."""
    from moltbot.engine.export_marker import read_marker, write_marker

    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        external = any((src / name).exists() for name in ("model.onnx_data", "model.onnx.data"))
        quantize_graph(src / "model.onnx", work / "model.onnx", external_data=external)
        for item in src.iterdir():
            if item.is_file() and not item.name.startswith("model.onnx") and not (work / item.name).exists():
                shutil.copy2(item, work / item.name)
        write_marker(work, {**read_marker(src), "precision": "int8"})
        work.chmod(0o755)
        if dst.exists():
            shutil.rmtree(dst)
        work.rename(dst)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moltbot.export.quantize")
    parser.add_argument("source", help="an ONNX model folder (model.onnx + tokenizer files)")
    parser.add_argument("output")
    args = parser.parse_args(argv)
    try:
        quantize_int8(args.source, args.output)
    except ImportError as exc:
        print(f"moltbot: quantising needs onnx (pip install 'moltbot[export]'): {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # report any failure of the quantiser in one line
        print(f"moltbot: quantisation failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
