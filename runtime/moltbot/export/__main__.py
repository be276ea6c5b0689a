"""`python -m moltbot.export SRC DST --task chat|embeddings --precision ...`: the export step, run in a child process.

Chat models get the model builder's graph (genai_builder.py) where the builder is installed and covers the
architecture, else Optimum's export (fp32/fp16; int8 by dynamic quantisation of it); `--graph` forces one.
int4 exists only as a builder graph. Embedding models always go through Optimum.
"""

from __future__ import annotations

import argparse
import sys

from moltbot.export.genai_builder import PRECISIONS
from moltbot.export.optimum_export import TASKS

GRAPHS = ("auto", "builder", "optimum")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moltbot.export")
    parser.add_argument("source", help="a local Hugging Face checkpoint folder")
    parser.add_argument("output", help="the ONNX model folder to make")
    parser.add_argument("--task", choices=sorted(TASKS), default="chat")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="weights: fp32, fp16 (CUDA), int8 or int4 (block-quantised; builder graphs only)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="the device the graph is made for")
    parser.add_argument("--graph", choices=GRAPHS, default="auto",
                        help="auto: the model builder where it covers the model, else Optimum")
    parser.add_argument("--builder-python", help="the Python of the model builder's venv (setting builder_python)")
    args = parser.parse_args(argv)
    try:
        print(export(args.source, args.output, args.task, args.precision, args.device, args.graph,
                     args.builder_python))
    except ImportError as exc:
        print(f"moltbot: exporting needs the export extra (pip install 'moltbot[export]'): {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"moltbot: export failed: {exc}", file=sys.stderr)
        return 1
    return 0


def export(source: str, output: str, task: str = "chat", precision: str = "fp32", device: str = "cpu",
           graph: str = "auto", builder_python: str | None = None) -> str:
    """Make `output` from the checkpoint `source`; returns the path. Raises ValueError for a precision or graph
    that cannot be had, RuntimeError when a tool fails."""
    from moltbot.export.genai_builder import ArchitectureNotCovered, BuilderUnavailable, build_graph

    if task == "embeddings" and (graph == "builder" or precision in ("int8", "int4")):
        raise ValueError("embedding models are exported by Optimum, in fp32 or fp16")
    if task == "chat" and graph != "optimum":
        try:
            return str(build_graph(source, output, precision, device, python=builder_python))
        except (BuilderUnavailable, ArchitectureNotCovered) as exc:
            if graph == "builder" or precision == "int4":
                raise ValueError(f"{exc} (int4 graphs come only from the model builder)") from None
            print(f"moltbot: {exc}; exporting with Optimum instead", file=sys.stderr)
    from moltbot.export.optimum_export import export_checkpoint
    from moltbot.export.quantize import quantize_int8

    if precision == "int4":
        raise ValueError("int4 graphs come only from the model builder (--graph auto or builder)")
    out = export_checkpoint(source, output, task=task, device=device, dtype="fp16" if precision == "fp16" else None)
    if precision == "int8":
        quantize_int8(out, out)
    return str(out)


if __name__ == "__main__":
    sys.exit(main())
