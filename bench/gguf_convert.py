"""Run llama.cpp's convert_hf_to_gguf.py on a benchmark checkpoint (f16 GGUF out).

Two kinds of checkpoint come here:
- the random-weight models of bench/models.py (bench-shape.json): their tokenizer is trained here (byte-level BPE
  with GPT-2's split rule), and the converter, which identifies a BPE pre-tokenizer by hashing how it splits a
  fixed text and rejects hashes it does not know, has it mapped to the `gpt-2` pre-tokenizer type;
- a GGUF file dequantised by the runtime's import (moltbot.export.gguf.gguf_to_checkpoint, in the builder's venv
  with transformers 5), whose tokenizer_config.json names transformers 5's generic `TokenizersBackend` class, which
  the transformers 4.57 of this venv does not know: the converter reads a view of the folder (links to its files)
  whose tokenizer_config names `PreTrainedTokenizerFast`, the same tokenizer.json read by the 4.57 class.

    python -m bench.gguf_convert LLAMA_CPP_SRC CHECKPOINT OUTFILE
"""

from __future__ import annotations

import json
import runpy
import sys
import tempfile
from pathlib import Path

GENERIC_TOKENIZER = "TokenizersBackend"


def tokenizer_view(checkpoint: Path, into: Path) -> Path:
    """`checkpoint` itself, or (for a transformers 5 tokenizer config) a folder of links to its files with a
    tokenizer_config.json that transformers 4.57 reads."""
    config_path = checkpoint / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    if config.get("tokenizer_class") != GENERIC_TOKENIZER:
        return checkpoint
    for item in checkpoint.iterdir():
        if item.name != "tokenizer_config.json":
            (into / item.name).symlink_to(item.resolve())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    (into / "tokenizer_config.json").write_text(json.dumps(config))
    return into


def main(argv: list[str]) -> None:
    if len(argv) != 3:
        raise SystemExit("usage: python -m bench.gguf_convert LLAMA_CPP_SRC CHECKPOINT OUTFILE")
    src, checkpoint, outfile = (Path(a) for a in argv)
    sys.path[:0] = [str(src), str(src / "gguf-py")]
    if (checkpoint / "bench-shape.json").exists():
        from conversion import base  # llama.cpp's converter package

        recognise = base.TextModel.get_vocab_base_pre

        def gpt2_for_local_bpe(self, tokenizer) -> str:
            try:
                return recognise(self, tokenizer)
            except NotImplementedError:
                return "gpt-2"

        base.TextModel.get_vocab_base_pre = gpt2_for_local_bpe
    with tempfile.TemporaryDirectory(prefix="gguf-convert-") as view:
        folder = tokenizer_view(checkpoint, Path(view))
        sys.argv = ["convert_hf_to_gguf.py", str(folder), "--outfile", str(outfile), "--outtype", "f16"]
        runpy.run_path(str(src / "convert_hf_to_gguf.py"), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
