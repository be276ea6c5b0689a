"""The benchmark models: random weights in a real model's shape, with a byte-level BPE tokenizer trained here.

Nothing is downloaded: the tokenizer is trained on a generated corpus of pseudo-words (fixed seed), so it reaches
the real model's vocabulary size; the weights are random (fixed seed). Replies mean nothing, but every layer
does the real model's work, which is what a throughput benchmark measures.
"""

from __future__ import annotations

import functools
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

SEED = 20261130
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CONSONANTS = "bcdfghjklmnprstvwz"
VOWELS = "aeiou"


@dataclass(frozen=True)
class ModelShape:
    """A decoder's shape; `architecture` is `llama` or `qwen2`."""

    name: str
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 2048
    extra: dict = field(default_factory=dict)

    def parameter_count(self) -> int:
        """Parameters of the decoder (embedding counted once when tied)."""
        head_dim = self.hidden_size // self.num_attention_heads
        kv = self.num_key_value_heads * head_dim
        attention = self.hidden_size * (self.hidden_size + 2 * kv) + self.hidden_size * self.hidden_size
        if self.architecture == "qwen2":  # q, k and v projections carry biases
            attention += self.hidden_size + 2 * kv
        mlp = 3 * self.hidden_size * self.intermediate_size
        per_layer = attention + mlp + 2 * self.hidden_size
        embedding = self.vocab_size * self.hidden_size
        head = 0 if self.tie_word_embeddings else embedding
        return embedding + head + self.num_hidden_layers * per_layer + self.hidden_size

    def weight_bytes_per_step(self, bytes_per_weight: float) -> float:
        """Bytes of weights a decode step reads: every matrix once, the embedding table as the output head
        (the input lookup touches one row per sequence only)."""
        return self.parameter_count() * bytes_per_weight


# SmolLM2-135M's shape (134.5 M parameters).
CPU_SHAPE = ModelShape(
    name="smollm2-135m-shape", architecture="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
    num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, extra={"rope_theta": 100000.0},
)
# Qwen2.5-0.5B's shape (494 M parameters).
GPU_SHAPE = ModelShape(
    name="qwen2.5-0.5b-shape", architecture="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
    num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
    extra={"rope_theta": 1000000.0, "rms_norm_eps": 1e-6},
)


@functools.lru_cache(maxsize=8)
def pseudo_words(count: int, seed: int = SEED) -> tuple[str, ...]:
    """`count` distinct pronounceable pseudo-words (2-6 syllables), the same for a given seed."""
    rng = random.Random(seed)
    words: set[str] = set()
    ordered: list[str] = []
    while len(ordered) < count:
        word = "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(rng.randint(2, 6)))
        if word not in words:
            words.add(word)
            ordered.append(word)
    return tuple(ordered)


def corpus_lines(words: tuple[str, ...], lines: int, seed: int = SEED) -> list[str]:
    """Sentences of the pseudo-words, with a Zipf-like frequency so that merges have a clear order."""
    rng = random.Random(seed + 1)
    cumulative, total = [], 0.0
    for rank in range(len(words)):
        total += 1.0 / (rank + 1)
        cumulative.append(total)
    out = []
    for _ in range(lines):
        sentence = rng.choices(words, cum_weights=cumulative, k=rng.randint(6, 16))
        out.append(" ".join(sentence).capitalize() + rng.choice([".", "!", "?", ","]))
    return out


def train_tokenizer(vocab_size: int, seed: int = SEED):
    """A byte-level BPE tokenizer (as SmolLM2's and Qwen2's) trained to exactly `vocab_size` entries."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, min_frequency=1,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    # Enough distinct words that BPE can make every merge the vocabulary size asks for.
    words = pseudo_words(max(2000, vocab_size * 2), seed)
    rng = random.Random(seed + 2)
    lines = corpus_lines(words, max(2000, vocab_size // 2), seed)
    lines += [" ".join(rng.sample(words, 12)) for _ in range(len(words) // 12 + 1)]
    tokenizer.train_from_iterator(lines, trainer=trainer)
    if tokenizer.get_vocab_size() != vocab_size:
        raise RuntimeError(f"the tokenizer reached {tokenizer.get_vocab_size()} entries, not {vocab_size}: "
                           "the corpus is too small")
    return tokenizer


def build_checkpoint(shape: ModelShape, out: Path, dtype: str = "float32", seed: int = SEED) -> Path:
    """A Hugging Face checkpoint (random weights, trained tokenizer, ChatML template) in `out`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(shape.vocab_size, seed), eos_token="<|im_end|>",
        pad_token="<|endoftext|>", unk_token="<|endoftext|>", model_input_names=["input_ids", "attention_mask"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = shape.max_position_embeddings
    config = AutoConfig.for_model(
        shape.architecture, vocab_size=shape.vocab_size, hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size, num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads, num_key_value_heads=shape.num_key_value_heads,
        max_position_embeddings=shape.max_position_embeddings, tie_word_embeddings=shape.tie_word_embeddings,
        bos_token_id=fast.convert_tokens_to_ids("<|im_start|>"), eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id, dtype=dtype, **shape.extra,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype)).eval()
    model.generation_config.eos_token_id = fast.eos_token_id
    model.generation_config.pad_token_id = fast.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    fast.save_pretrained(out)
    (out / "bench-shape.json").write_text(json.dumps({"shape": shape.name, "seed": seed, "dtype": dtype}))
    return out


def prompt_of_tokens(encode, tokens: int, variant: int, seed: int = SEED) -> str:
    """A text that `encode` turns into exactly `tokens` tokens; each `variant` gives a different text
    (distinct prompts, so that no server can reuse a cached prefix).

    Words are added one at a time. A byte-level BPE splits text into words (with their leading space) before
    merging, so the count grows by the word's own count; that running count is checked against a full
    encoding whenever it reaches the target, so a tokenizer without that property costs time, not exactness."""
    rng = random.Random(seed * 1000 + variant)
    vocabulary = pseudo_words(4000, seed)
    text, count = "", 0
    for _ in range(tokens * 4):
        word = rng.choice(vocabulary)
        piece = " " + word if text else word.capitalize()
        grown = count + len(encode(piece))
        if grown > tokens:
            continue
        text += piece
        count = grown
        if count == tokens:
            count = len(encode(text))
            if count == tokens:
                return text
            if count > tokens:
                break
    # Fill the last few tokens with single characters, which are single tokens in a byte-level vocabulary.
    while len(encode(text)) < tokens:
        text += rng.choice(",.;:!?")
    if len(encode(text)) != tokens:
        raise RuntimeError(f"could not make a prompt of exactly {tokens} tokens")
    return text
