"""Test-only models: `tiny-chat`, a random-weight Llama for the tests that need arbitrary tokens fast (its replies
mean nothing), served with the real all-MiniLM-L6-v2 as the live servers' embedded defaults.

The product's defaults (runtime/moltbot/export/defaults.py: smollm2-135m-instruct and all-minilm-l6-v2) are made
in build/default-models; the tests' servers get build/test-defaults instead, whose manifest lists tiny-chat and
all-minilm-l6-v2, so the many tests that talk to "tiny-chat" stay fast and the real model is tested on its own.

    python -m tests.fixture_models DIR     (what tests/conftest.py runs, in a child process: it imports torch)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

TINY_CHAT = "tiny-chat"
TINY_CHAT_SEED = 1234
TINY_CHAT_SPEC = {"task": "chat", "max_tokens": 2048, "temperature": 0.7,
                  "description": "Test fixture with random weights: its replies mean nothing."}

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
    from moltbot.export.optimum_export import export_checkpoint

    with tempfile.TemporaryDirectory(prefix="moltbot-tiny-chat-") as tmp:
        ckpt = build_tiny_chat_checkpoint(Path(tmp) / "checkpoint")
        return export_checkpoint(ckpt, dst, task="chat", extra_meta={
            "name": TINY_CHAT, "smoke_test": True,
            "description": TINY_CHAT_SPEC["description"],
        })


def ensure_test_defaults(out_dir: Path) -> Path:
    """tiny-chat and all-minilm-l6-v2 under out_dir, made once, with the manifest the registry serves."""
    from moltbot.engine.registry import DEFAULT_MODELS
    from moltbot.export.defaults import MINILM, build_minilm, is_built, write_manifest

    out_dir.mkdir(parents=True, exist_ok=True)
    if not is_built(out_dir / TINY_CHAT):
        build_tiny_chat(out_dir / TINY_CHAT)
    if not is_built(out_dir / MINILM):
        build_minilm(out_dir / MINILM)
    write_manifest(out_dir, {TINY_CHAT: {"folder": TINY_CHAT, **TINY_CHAT_SPEC},
                             MINILM: {"folder": MINILM, **DEFAULT_MODELS[MINILM]}})
    return out_dir


if __name__ == "__main__":
    ensure_test_defaults(Path(sys.argv[1]))
