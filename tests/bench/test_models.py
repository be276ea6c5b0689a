"""The benchmark's model builder (bench/models.py) on a tiny shape: the checkpoint has the shape asked for, the
parameter count used for the bandwidth ceiling matches the real model's, and prompts have an exact length."""

import dataclasses
import json

import pytest

from bench.models import CPU_SHAPE, GPU_SHAPE, build_checkpoint, prompt_of_tokens, pseudo_words, train_tokenizer

TINY_LLAMA = dataclasses.replace(CPU_SHAPE, name="tiny", vocab_size=600, hidden_size=48, intermediate_size=96,
                                 num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2)
TINY_QWEN2 = dataclasses.replace(GPU_SHAPE, name="tiny-qwen2", vocab_size=600, hidden_size=56, intermediate_size=112,
                                 num_hidden_layers=2, num_attention_heads=7, num_key_value_heads=1)


def test_real_shapes_have_the_published_parameter_counts():
    assert round(CPU_SHAPE.parameter_count() / 1e6, 1) == 134.5  # SmolLM2-135M
    assert round(GPU_SHAPE.parameter_count() / 1e6) == 494  # Qwen2.5-0.5B
    assert CPU_SHAPE.weight_bytes_per_step(4) == 4 * CPU_SHAPE.parameter_count()


def test_pseudo_words_are_distinct_and_reproducible():
    words = pseudo_words(500, seed=7)
    assert len(set(words)) == 500
    assert words == pseudo_words(500, seed=7)
    assert words != pseudo_words(500, seed=8)


def test_tokenizer_reaches_the_exact_vocabulary_size():
    assert train_tokenizer(700).get_vocab_size() == 700


@pytest.mark.parametrize("shape", [TINY_LLAMA, TINY_QWEN2], ids=lambda s: s.architecture)
def test_checkpoint_has_the_shape_and_parameter_count(tmp_path, shape):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = build_checkpoint(shape, tmp_path / "ckpt")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == shape.architecture
    assert (config["vocab_size"], config["hidden_size"], config["num_hidden_layers"],
            config["num_key_value_heads"], config["tie_word_embeddings"]) == (
        shape.vocab_size, shape.hidden_size, shape.num_hidden_layers, shape.num_key_value_heads, True)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert sum(p.numel() for p in model.parameters()) == shape.parameter_count()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert len(tokenizer) == shape.vocab_size
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True).endswith("<|im_start|>assistant\n")


def test_prompts_have_exactly_the_asked_token_count_and_differ():
    tokenizer = train_tokenizer(800)

    def encode(text):
        return tokenizer.encode(text).ids

    prompts = [prompt_of_tokens(encode, 32, variant) for variant in range(20)]
    assert all(len(encode(p)) == 32 for p in prompts)
    assert len(set(prompts)) == 20
    assert prompt_of_tokens(encode, 32, 3) == prompts[3]
    long = [prompt_of_tokens(encode, 1024, variant) for variant in range(3)]  # the long-context point's length
    assert [len(encode(p)) for p in long] == [1024] * 3
    assert len(set(long)) == 3
