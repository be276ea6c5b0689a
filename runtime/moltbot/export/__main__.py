"""`python -m moltbot.export SRC DST --task chat|embeddings`: the export step, run in a child process."""

from __future__ import annotations

import argparse
import sys

from moltbot.export.optimum_export import TASKS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moltbot.export")
    parser.add_argument("source", help="a local Hugging Face checkpoint folder")
    parser.add_argument("output", help="the ONNX model folder to make")
    parser.add_argument("--task", choices=sorted(TASKS), default="chat")
    parser.add_argument("--dtype", choices=["fp32", "fp16"], default="fp32")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for an fp16 export on the GPU")
    args = parser.parse_args(argv)
    try:
        from moltbot.export.optimum_export import export_checkpoint
    except ImportError as exc:
        print(f"moltbot: exporting needs the export extra (pip install 'moltbot[export]'): {exc}", file=sys.stderr)
        return 2
    try:
        out = export_checkpoint(args.source, args.output, task=args.task, device=args.device,
                                dtype="fp16" if args.dtype == "fp16" else None)
    except ImportError as exc:
        print(f"moltbot: exporting needs the export extra (pip install 'moltbot[export]'): {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"moltbot: export failed: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
