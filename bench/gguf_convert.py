"""Run llama.cpp's convert_hf_to_gguf.py on a benchmark checkpoint.

The converter identifies a BPE tokenizer's pre-tokenizer by hashing how it splits a fixed text and rejects
hashes it does not know. The benchmark's tokenizer is trained here (byte-level BPE with GPT-2's split rule),
so it is mapped to the `gpt-2` pre-tokenizer type, only for checkpoints that the benchmark made.

    python -m bench.gguf_convert LLAMA_CPP_SRC CHECKPOINT OUTFILE
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    if len(argv) != 3:
        raise SystemExit("usage: python -m bench.gguf_convert LLAMA_CPP_SRC CHECKPOINT OUTFILE")
    src, checkpoint, outfile = (Path(a) for a in argv)
    if not (checkpoint / "bench-shape.json").exists():
        raise SystemExit(f"{checkpoint}: not a benchmark checkpoint (no bench-shape.json)")
    sys.path[:0] = [str(src), str(src / "gguf-py")]
    from conversion import base  # llama.cpp's converter package

    recognise = base.TextModel.get_vocab_base_pre

    def gpt2_for_local_bpe(self, tokenizer) -> str:
        try:
            return recognise(self, tokenizer)
        except NotImplementedError:
            return "gpt-2"

    base.TextModel.get_vocab_base_pre = gpt2_for_local_bpe
    sys.argv = ["convert_hf_to_gguf.py", str(checkpoint), "--outfile", str(outfile), "--outtype", "f16"]
    runpy.run_path(str(src / "convert_hf_to_gguf.py"), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
