"""The runtime against llama.cpp on the same GGUF files (issue 21), both real models: SmolLM2-135M-Instruct (Q4_1)
and Gemma 3 270M (Q4_K_M). Tokenizer ids, teacher-forced perplexity and top-1 agreement on a public-domain text,
and greedy chat answers through the runtime's API and llama-server (bench/fidelity.py; docs/fidelity.md has the
figures). Real parts throughout: llama.cpp's own tools built from source, the runtime's GGUF import and serving
graph, live `moltbot serve` and `llama-server` processes. About 4 minutes on 2 cores once the graphs are cached."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from bench import fidelity
from bench.prepare import llama_tools

pytestmark = pytest.mark.timeout(1800)  # the first test of each model imports three graphs from its GGUF


@pytest.fixture(scope="module", params=sorted(fidelity.MODELS))
def measured(request, tmp_path_factory) -> fidelity.ModelFidelity:
    model = fidelity.MODELS[request.param]
    return fidelity.model_fidelity(model, llama_tools(), tmp_path_factory.mktemp(f"fidelity-{model.key}"))


def _target(result: fidelity.ModelFidelity, start: str) -> tuple[str, str, str, bool]:
    return next(t for t in fidelity.targets(result) if t[0].startswith(start))


def test_tokenizer_ids_identical_to_llama_cpp(measured):
    different = [(c.label, c.ours, c.llama, c.first_difference) for c in measured.tokenizer if not c.same]
    assert not different, different
    assert len(measured.tokenizer) == 1 + len(fidelity.EDGE_STRINGS) + len(fidelity.CHAT_PROMPTS)


def test_exactly_one_bos_where_the_model_wants_one(measured):
    bos = measured.bos
    assert bos.wanted == (measured.model.startswith("Gemma")), bos  # Gemma's file asks for one, SmolLM2's not
    assert _target(measured, "exactly one BOS")[3], bos


def test_fp32_graph_perplexity_within_2_percent_of_llama_cpp(measured):
    assert _target(measured, "fp32 graph perplexity")[3], _target(measured, "fp32 graph perplexity")


# Targets of issue 21 measured as NOT met (docs/fidelity.md): each still runs and asserts the target; strict, so
# the day one is met the xfail itself fails and must be removed. Not a pass: the issue stays open on them.
NOT_MET = {
    ("gemma3", "fp32 top-1"): "Gemma 3 fp32 top-1 vs llama.cpp 0.948 (target 0.95): llama.cpp computes with the "
                              "Q4_K blocks and 8-bit activations, the graph with the dequantised values",
}


def _known_unmet(request, target: str) -> None:
    reason = NOT_MET.get((request.node.callspec.params["measured"], target))
    if reason:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


def test_fp32_graph_top1_agreement_with_llama_cpp(request, measured):
    _known_unmet(request, "fp32 top-1")
    assert _target(measured, "fp32 graph top-1")[3], _target(measured, "fp32 graph top-1")


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_quantised_graph_perplexity_near_fp32(request, measured, precision):
    _known_unmet(request, precision)
    target = _target(measured, f"{precision} graph perplexity")
    assert target[3], target


def test_greedy_chat_answers_are_reported(measured):
    """A report, not an equality: both sides answer every prompt, from the same prompt tokens, and the page
    states the common prefixes."""
    section = fidelity.report_section(measured)
    for precision in fidelity.CHAT_PRECISIONS:
        rows = measured.chat[precision]
        assert [r.prompt for r in rows] == list(fidelity.CHAT_PROMPTS)
        for row in rows:
            assert row.ours.strip() and row.llama.strip(), row
            assert row.prompt_tokens_ours == row.prompt_tokens_sent, row  # the API rendered what llama-server got
            assert 0 < row.ours_tokens <= fidelity.CHAT_TOKENS and 0 < row.llama_tokens <= fidelity.CHAT_TOKENS
            assert f"| {row.common_chars} | {row.common_llama_tokens} of {row.llama_tokens} |" in section
        assert f"Greedy chat answers, runtime {precision}" in section


# ---- the pieces, without models ------------------------------------------------------------------------------

def test_read_kl_base_reads_llama_perplexity_format(tmp_path):
    """A file in the layout tools/perplexity/perplexity.cpp writes: the top-1 token of each scored row is its
    largest quantised log-prob, whatever the two float32 at the row's start."""
    n_ctx, n_vocab, n_chunk = 8, 5, 2
    scored = n_ctx - 1 - n_ctx // 2
    row = 2 * ((n_vocab + 1) // 2) + 4
    tokens = np.arange(n_chunk * n_ctx, dtype=np.int32)
    rows = np.zeros((n_chunk, scored, row), dtype=np.uint16)
    expected = np.array([[1, 4, 0], [3, 2, 4]])
    for c in range(n_chunk):
        for p in range(scored):
            rows[c, p, :4] = np.frombuffer(struct.pack("<ff", 0.5, -9.0), dtype=np.uint16)  # scale, min
            rows[c, p, 4 + expected[c, p]] = 65535
            rows[c, p, 4 + (expected[c, p] + 1) % n_vocab] = 100
    path = tmp_path / "base.kld"
    path.write_bytes(b"_logits_" + struct.pack("<iii", n_ctx, n_vocab, n_chunk) + tokens.tobytes() + rows.tobytes())
    got_ctx, got_vocab, got_tokens, top1 = fidelity.read_kl_base(path)
    assert (got_ctx, got_vocab) == (n_ctx, n_vocab)
    assert got_tokens.tolist() == tokens.tolist()
    assert top1.tolist() == expected.tolist()
    path.write_bytes(b"_notlog_" + path.read_bytes()[8:])
    with pytest.raises(ValueError, match="not a llama-perplexity"):
        fidelity.read_kl_base(path)


class _Tokens:
    pieces = {1: "Paris", 2: " is", 3: " big", 4: " small"}

    def decode(self, ids):
        return "".join(self.pieces[i] for i in ids)


def test_chat_row_counts_the_common_prefix():
    row = fidelity._chat_row(_Tokens(), "q", "Paris is big.", {"completion_tokens": 4, "prompt_tokens": 9}, 9,
                             {"content": "Paris is small", "tokens": [1, 2, 4]})
    assert (row.common_chars, row.common_llama_tokens, row.llama_tokens) == (len("Paris is "), 2, 3)
    same = fidelity._chat_row(_Tokens(), "q", "Paris is big", {"completion_tokens": 3, "prompt_tokens": 9}, 9,
                              {"content": "Paris is big", "tokens": [1, 2, 3]})
    assert (same.common_chars, same.common_llama_tokens) == (len("Paris is big"), 3)


def test_targets_say_met_or_not_met():
    bos = fidelity.BosCheck(wanted=True, text_ours=1, text_llama=1, chat_ours=2, chat_llama=2)
    result = fidelity.ModelFidelity("m", "m.gguf", 1, 100, bos, [fidelity.TokenizerCheck("t", 3, 3, True)],
                                    llama_ppl=10.0, ppl={"fp32": 10.3, "int8": 10.35, "int4": 11.0},
                                    top1_vs_llama={"fp32": 0.96, "int8": 0.9, "int4": 0.8})
    verdicts = {t[0].split(" (")[0]: t[3] for t in fidelity.targets(result)}
    assert verdicts == {"fp32 graph perplexity vs llama.cpp on the original file": False,  # +3%
                        "fp32 graph top-1 agreement with llama.cpp": True,
                        "int8 graph perplexity vs the fp32 graph": True,  # +0.49%
                        "int4 graph perplexity vs the fp32 graph": False,  # +6.8%
                        "exactly one BOS where the model wants one": False,  # two in the chat prompt
                        "tokenizer ids identical to llama-tokenize": True}
