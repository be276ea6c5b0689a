"""Fidelity of the runtime to llama.cpp on the same GGUF file (issue 21): tokenizer ids, teacher-forced perplexity
and top-1 agreement, and greedy chat answers, for SmolLM2-135M-Instruct (Q4_1) and Gemma 3 270M (Q4_K_M).

The runtime's side is the GGUF imported by `moltbot.export.gguf.import_gguf` (dequantised, then the model
builder) at fp32, int8 and int4, run in-process through the serving graph runner (engine/builder_runner.py); llama.cpp's
side is the original file through `llama-tokenize`, `llama-perplexity` and `llama-server` (bench/build_llama_server.sh).

Perplexity is computed as `llama-perplexity` computes it, so that both sides score the same positions: the tokens
are cut into chunks of N_CTX, each evaluated from an empty cache with its first token replaced by BOS where the
model adds one, and only the second half of each chunk is scored. llama.cpp's per-position log-probabilities come
from its `--kl-divergence-base` file (its format: tools/perplexity/perplexity.cpp), from which the top-1 token of
every scored position is read.

    python -m bench.fidelity [--models smollm2,gemma3] [--docs docs/fidelity.md]   (`make fidelity`)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bench.prepare import GGUF_MODELS, GGUFModel, LlamaTools, ensure_imported, llama_tools
from bench.servers import LlamaServer, MoltbotServer
from bench.stats import markdown_table

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "build" / "fidelity"
TEXT = REPO / "tests" / "fidelity" / "data" / "us_constitution.txt"
N_CTX = 512  # llama-perplexity's usual context; each chunk scores its last N_CTX / 2 - 1 positions
CHUNKS = 6  # 3,072 tokens evaluated, 1,530 positions scored per model
PIECE = 64  # positions per graph call: Gemma's 262,144-token vocabulary makes 64 MiB of logits per call
THREADS = 2
PRECISIONS = ("fp32", "int8", "int4")
# Targets (issue 21): fp32 vs llama.cpp on the original file, and each quantised graph vs the fp32 graph.
FP32_PPL_TOLERANCE = 0.02
FP32_TOP1_MIN = 0.95
QUANTISED_PPL_TOLERANCE = {"int8": 0.01, "int4": 0.05}
CHAT_TOKENS = 64
CHAT_PRECISIONS = ("fp32", "int8")


MODELS = GGUF_MODELS

# Strings where tokenizers part ways: Unicode (accents, scripts, emoji with joiners and modifiers), whitespace
# runs, digits, code, and each model's chat control tokens (as text, which both sides parse as special tokens).
EDGE_STRINGS = (
    "Hello, world!",
    "  two leading spaces and trailing spaces   ",
    "tabs\tand\nnewlines\n\n\nthree blank lines\r\nCRLF",
    " " * 17 + "seventeen spaces, then a tab\t\t\tand three tabs",
    "1234567890 3.14159 1,000,000 -42 2026-12-07 0x1F 1e-9 007",
    "Ünïcödé: naïve café, Straße, Ελληνικά, русский, 日本語のテキスト, 中文, 한국어, العربية, हिन्दी",
    "emoji 🙂👍🏽 🇫🇷 👨‍👩‍👧 and a zero\u200bwidth space, a non\u00a0breaking one and a thin\u2009one",
    "def add(a: int, b: int) -> int:\n    \"\"\"Sum.\"\"\"\n    return a + b  # done\n",
    "SELECT id, name FROM users WHERE age >= 18 AND name LIKE '%o_' ORDER BY name DESC;",
    '{"key": [1, 2, {"nested": null}], "s": "\\u00e9\\n"}',
    "<|im_start|>system\nYou are brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
    "<bos><start_of_turn>user\nHi!<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n<eos>",
    "<|endoftext|> in the middle <|im_end|> of a sentence",
)

CHAT_PROMPTS = (
    "What is the capital of France?",
    "Write a Python function add(a, b) that returns the sum of two numbers.",
    "Give me three tips for staying focused while studying.",
    "Translate 'Good morning, how are you?' into Spanish.",
    "What is 17 times 23?",
    "Explain in two sentences what photosynthesis is.",
    "Write a haiku about the sea.",
    "List the first five prime numbers.",
    "What does HTTP stand for?",
    "Summarise the plot of Romeo and Juliet in one sentence.",
)


# ---- llama.cpp's side ---------------------------------------------------------------------------------------

def llama_tokenize(tools: LlamaTools, gguf: Path, text: str, bos: bool = True) -> list[int]:
    """llama.cpp's token ids for `text` (special tokens parsed, BOS as the model's file asks unless `bos` is
    False), by `llama-tokenize` on the text written to a file verbatim (no escape processing)."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8", newline="", delete=False) as fh:
        fh.write(text)
    try:
        command = [str(tools.tokenize), "-m", str(gguf), "-f", fh.name, "--ids", "--no-escape", "--log-disable"]
        result = subprocess.run(command + ([] if bos else ["--no-bos"]), capture_output=True, text=True)
    finally:
        os.unlink(fh.name)
    if result.returncode != 0:
        raise RuntimeError(f"llama-tokenize failed: {result.stderr[-2000:]}")
    line = next(ln for ln in reversed(result.stdout.splitlines()) if ln.startswith("["))
    return [int(x) for x in json.loads(line)]


@dataclass
class LlamaScores:
    """llama-perplexity on the original file: its final estimate, the tokens it evaluated and, per chunk, the
    top-1 token of each scored position."""

    ppl: float
    tokens: np.ndarray  # [chunks * N_CTX]
    top1: np.ndarray  # [chunks, N_CTX - 1 - N_CTX // 2]
    seconds: float


def read_kl_base(path: Path) -> tuple[int, int, np.ndarray, np.ndarray]:
    """(n_ctx, n_vocab, tokens, top1) from a `--kl-divergence-base` file: "_logits_", int32 n_ctx, n_vocab,
    n_chunk, the int32 tokens, then per chunk and scored position one row of 2 * ((n_vocab + 1) // 2) + 4 uint16:
    two float32 (scale, min log-prob) and each token's log-prob quantised to uint16 (0 = at or below the row's
    max - 16). The top-1 token is the row's largest quantised value (resolution 16 / 65535 nats). Rows are
    read by memory map a chunk at a time: Gemma's file is about 0.8 GB."""
    with path.open("rb") as fh:
        if fh.read(8) != b"_logits_":
            raise ValueError(f"{path}: not a llama-perplexity --kl-divergence-base file")
        n_ctx, n_vocab, n_chunk = (int(x) for x in np.fromfile(fh, np.int32, 3))
    tokens = np.memmap(path, np.int32, "r", offset=20, shape=(n_chunk * n_ctx,))
    row = 2 * ((n_vocab + 1) // 2) + 4
    scored = n_ctx - 1 - n_ctx // 2
    rows = np.memmap(path, np.uint16, "r", offset=20 + 4 * n_chunk * n_ctx, shape=(n_chunk, scored, row))
    top1 = np.stack([np.argmax(rows[c, :, 4:4 + n_vocab], axis=1) for c in range(n_chunk)])
    return n_ctx, n_vocab, np.array(tokens), top1


def llama_perplexity(tools: LlamaTools, gguf: Path, text: Path, cache: Path) -> LlamaScores:
    """llama-perplexity over the first CHUNKS chunks of `text`; its summary is cached in `cache` (the base file
    itself, one row of the whole vocabulary per scored position, is removed once read)."""
    summary = cache / f"{gguf.name}.c{N_CTX}x{CHUNKS}.npz"
    if summary.exists():
        data = np.load(summary)
        return LlamaScores(float(data["ppl"]), data["tokens"], data["top1"], float(data["seconds"]))
    cache.mkdir(parents=True, exist_ok=True)
    base = cache / f"{gguf.name}.kld"
    started = time.monotonic()
    result = subprocess.run(
        [str(tools.perplexity), "-m", str(gguf), "-f", str(text), "-c", str(N_CTX), "-b", str(N_CTX),
         "--chunks", str(CHUNKS), "-t", str(THREADS), "--kl-divergence-base", str(base)],
        capture_output=True, text=True)
    seconds = time.monotonic() - started
    found = re.search(r"Final estimate: PPL = ([0-9.]+)", result.stdout + result.stderr)
    if result.returncode != 0 or not found:
        raise RuntimeError(f"llama-perplexity failed:\n{(result.stderr or result.stdout)[-3000:]}")
    try:
        n_ctx, _, tokens, top1 = read_kl_base(base)
    finally:
        base.unlink(missing_ok=True)
    if n_ctx != N_CTX or top1.shape[0] != CHUNKS:
        raise RuntimeError(f"llama-perplexity evaluated {top1.shape[0]} chunks of {n_ctx}, not {CHUNKS} of {N_CTX}")
    np.savez(summary, ppl=float(found.group(1)), tokens=tokens, top1=top1, seconds=seconds)
    return LlamaScores(float(found.group(1)), tokens, top1, seconds)


# ---- the runtime's side --------------------------------------------------------------------------------------

@dataclass
class GraphScores:
    ppl: float
    top1: np.ndarray  # [chunks, scored]
    seconds: float


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    out: np.ndarray = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return out


def score_graph(folder: Path, tokens: np.ndarray, bos_id: int | None, chunks: int = CHUNKS) -> GraphScores:
    """Teacher-forced perplexity of the serving graph over `tokens`, chunked as llama-perplexity chunks them,
    and the top-1 token of every scored position. Each chunk runs from an empty cache in pieces of PIECE
    positions, each piece continuing the cache the previous one wrote, so no more than one piece's logits
    are ever held."""
    from moltbot.engine.builder_runner import BuilderGraphRunner
    from moltbot.engine.sessions import DeviceOptions

    runner = BuilderGraphRunner(folder, DeviceOptions(intra_op_threads=THREADS), slots=1, max_length=N_CTX + 1)
    first = N_CTX // 2
    nll: list[float] = []
    top1 = np.zeros((chunks, N_CTX - 1 - first), dtype=np.int64)
    started = time.monotonic()
    for c in range(chunks):
        chunk = np.array(tokens[c * N_CTX: (c + 1) * N_CTX], dtype=np.int64)
        if bos_id is not None:
            chunk[0] = bos_id  # as llama-perplexity does: the chunk's first token becomes BOS
        runner.reset()
        for start in range(0, N_CTX, PIECE):
            piece = chunk[start: start + PIECE]
            # _run: the runner's one graph call over a slot, asked for the logits of every position of the piece
            # (the public prefill method keeps only the last position's, which is all serving needs).
            logits = runner._run(0, 1, piece[None, :], np.array([start + len(piece)]), np.array([start]),
                                 last=np.arange(len(piece)))
            positions = np.arange(start, start + len(piece))
            wanted = (positions >= first) & (positions <= N_CTX - 2)
            if not wanted.any():
                continue
            scores = _log_softmax(logits[wanted].astype(np.float64))
            targets = chunk[positions[wanted] + 1]
            nll.extend((-scores[np.arange(len(targets)), targets]).tolist())
            top1[c, positions[wanted] - first] = scores.argmax(axis=1)
    return GraphScores(float(np.exp(np.mean(nll))), top1, time.monotonic() - started)


# ---- one model's whole comparison ----------------------------------------------------------------------------

@dataclass
class TokenizerCheck:
    label: str
    ours: int  # token count
    llama: int
    same: bool
    first_difference: int | None = None


@dataclass
class ChatRow:
    prompt: str
    ours: str
    llama: str
    common_chars: int
    common_llama_tokens: int  # llama-server's tokens whose text is a prefix of the runtime's answer
    llama_tokens: int
    ours_tokens: int
    prompt_tokens_ours: int  # the runtime's usage.prompt_tokens
    prompt_tokens_sent: int  # the ids llama-server was given (the runtime's rendering, tokenised)


@dataclass
class ModelFidelity:
    model: str
    gguf: str
    gguf_bytes: int
    text_tokens: int
    bos: BosCheck
    tokenizer: list[TokenizerCheck] = field(default_factory=list)
    llama_ppl: float = 0.0
    llama_seconds: float = 0.0
    ppl: dict[str, float] = field(default_factory=dict)
    top1_vs_llama: dict[str, float] = field(default_factory=dict)
    top1_vs_fp32: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    chat: dict[str, list[ChatRow]] = field(default_factory=dict)


def _first_difference(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


@dataclass
class BosCheck:
    """Whether the model's file asks for a BOS before a text, and the BOS tokens each side puts at the start of
    the text and of a rendered chat prompt (the template writes its own; none may be added on top)."""

    wanted: bool
    text_ours: int
    text_llama: int
    chat_ours: int
    chat_llama: int

    def text(self) -> str:
        return (f"the file {'asks for' if self.wanted else 'does not ask for'} one; the text starts with "
                f"{self.text_ours} (runtime) / {self.text_llama} (llama.cpp), a rendered chat prompt with "
                f"{self.chat_ours} / {self.chat_llama}")


def _leading(ids: list[int], token: int | None) -> int:
    count = 0
    while token is not None and count < len(ids) and ids[count] == token:
        count += 1
    return count


def check_tokenizer(tools: LlamaTools, gguf: Path, graph: Path, text: str) -> tuple[list[TokenizerCheck], BosCheck]:
    """The runtime's tokenizer (the graph folder's tokenizer.json) against llama-tokenize: the text, the edge
    strings and each chat prompt as the runtime renders it. Plain text is encoded as completions encode it
    (with the tokenizer's special tokens: a BOS where the model wants one); a rendered chat prompt as chat
    encodes it (none added: the template writes its own BOS), against llama-tokenize --no-bos."""
    from moltbot.engine.tokenizer import TextTokenizer

    tokenizer = TextTokenizer(graph)
    checks = []
    cases = [("the text", text, True)] + [(f"edge string {i + 1}", s, True) for i, s in enumerate(EDGE_STRINGS)]
    cases += [(f"chat prompt {i + 1} (rendered)", tokenizer.render_chat([{"role": "user", "content": p}]), False)
              for i, p in enumerate(CHAT_PROMPTS)]
    for label, case, special in cases:
        ours = tokenizer.encode(case, add_special_tokens=special)
        theirs = llama_tokenize(tools, gguf, case, bos=special)
        checks.append(TokenizerCheck(label, len(ours), len(theirs), ours == theirs, _first_difference(ours, theirs)))
    bos_id = tokenizer.tokenizer.token_to_id(tokenizer.bos_token) if tokenizer.bos_token else None
    rendered = tokenizer.render_chat([{"role": "user", "content": CHAT_PROMPTS[0]}])
    bos = BosCheck(
        wanted=len(llama_tokenize(tools, gguf, "a")) > len(llama_tokenize(tools, gguf, "a", bos=False)),
        text_ours=_leading(tokenizer.encode(text), bos_id),
        text_llama=_leading(llama_tokenize(tools, gguf, text), bos_id),
        chat_ours=_leading(tokenizer.encode(rendered, add_special_tokens=False), bos_id),
        chat_llama=_leading(llama_tokenize(tools, gguf, rendered, bos=False), bos_id))
    return checks, bos


def chat_answers(tools: LlamaTools, model: GGUFModel, gguf: Path, graph: Path, home: Path) -> list[ChatRow]:
    """Greedy answers to CHAT_PROMPTS through the runtime's chat API and through llama-server on the original
    file. llama-server gets the token ids of the runtime's own rendering of the chat (the same template, and
    no BOS added twice), on /completion."""
    import httpx

    from moltbot.engine.tokenizer import TextTokenizer

    tokenizer = TextTokenizer(graph)
    config = {"name": model.name, "type": "local", "path": str(graph), "max_tokens": 2048}
    rows = []
    with MoltbotServer(f"moltbot {model.key}", config, home / "moltbot", home / "cache") as ours, \
            LlamaServer(tools.server, gguf, parallel=1, threads=THREADS, context_per_slot=2048, home=home / "llama",
                        alias=model.name) as peer, httpx.Client(timeout=300) as client:
        for prompt in CHAT_PROMPTS:
            messages = [{"role": "user", "content": prompt}]
            reply = client.post(ours.url + "/v1/chat/completions", json={
                "model": model.name, "messages": messages, "temperature": 0, "max_tokens": CHAT_TOKENS})
            reply.raise_for_status()
            body = reply.json()
            answer = body["choices"][0]["message"]["content"] or ""
            ids = tokenizer.encode(tokenizer.render_chat(messages), add_special_tokens=False)
            theirs = client.post(peer.url + "/completion", json={
                "prompt": ids, "n_predict": CHAT_TOKENS, "temperature": 0, "cache_prompt": False,
                "return_tokens": True})
            theirs.raise_for_status()
            llama = theirs.json()
            rows.append(_chat_row(tokenizer, prompt, answer, body["usage"], len(ids), llama))
    return rows


def _chat_row(tokenizer, prompt: str, ours: str, usage: dict, sent: int, llama: dict) -> ChatRow:
    text = llama.get("content", "")
    common = 0
    for a, b in zip(ours, text, strict=False):
        if a != b:
            break
        common += 1
    tokens = [int(t) for t in llama.get("tokens") or []]
    agreed = 0
    for n in range(1, len(tokens) + 1):
        if ours.startswith(tokenizer.decode(tokens[:n])):
            agreed = n
        else:
            break
    return ChatRow(prompt, ours, text, common, agreed, len(tokens), int(usage.get("completion_tokens", 0)),
                   int(usage.get("prompt_tokens", 0)), sent)


def model_fidelity(model: GGUFModel, tools: LlamaTools, work: Path, chat: bool = True,
                   log: Callable[[str], None] = print) -> ModelFidelity:
    from moltbot.engine.tokenizer import TextTokenizer

    gguf = model.locate()
    text = TEXT.read_text(encoding="utf-8")
    graphs = {precision: ensure_imported(model, precision, all_logits=True, log=log) for precision in PRECISIONS}
    log(f"{model.key}: graphs {', '.join(str(p) for p in graphs.values())}")
    tokenizer = TextTokenizer(graphs["fp32"])
    checks, bos = check_tokenizer(tools, gguf, graphs["fp32"], text)
    result = ModelFidelity(model.title, f"{gguf.name}", gguf.stat().st_size, len(tokenizer.encode(text)), bos, checks)
    llama = llama_perplexity(tools, gguf, TEXT, BUILD / "llama")
    result.llama_ppl, result.llama_seconds = llama.ppl, llama.seconds
    ours = tokenizer.encode(text)
    if ours[: len(llama.tokens)] != llama.tokens.tolist():
        raise AssertionError(f"{model.key}: the runtime's tokens of the text differ from those llama-perplexity "
                             f"evaluated, first at {_first_difference(ours, llama.tokens.tolist())}")
    before, _ = tokenizer.special_tokens_around()
    bos_id = before[0] if before else None  # the model adds a BOS: llama-perplexity puts one at each chunk start
    scores = {}
    for precision, folder in graphs.items():
        scores[precision] = score_graph(folder, llama.tokens, bos_id)
        result.ppl[precision] = scores[precision].ppl
        result.seconds[precision] = scores[precision].seconds
        result.top1_vs_llama[precision] = float(np.mean(scores[precision].top1 == llama.top1))
        if precision != "fp32":
            result.top1_vs_fp32[precision] = float(np.mean(scores[precision].top1 == scores["fp32"].top1))
        log(f"{model.key} {precision}: ppl {result.ppl[precision]:.4f} (llama.cpp {llama.ppl:.4f}), top-1 vs "
            f"llama.cpp {result.top1_vs_llama[precision]:.4f}, {result.seconds[precision]:.0f} s")
    if chat:
        for precision in CHAT_PRECISIONS:
            home = work / f"{model.key}-{precision}"
            result.chat[precision] = chat_answers(tools, model, gguf, graphs[precision], home)
            log(f"{model.key} {precision} chat: common prefix "
                + ", ".join(str(r.common_chars) for r in result.chat[precision]) + " characters")
    return result


# ---- targets and the report -----------------------------------------------------------------------------------

def targets(result: ModelFidelity) -> list[tuple[str, str, str, bool]]:
    """(target, measured, needed, met) for one model."""
    rows = []
    fp32, llama = result.ppl.get("fp32"), result.llama_ppl
    if fp32 is not None:
        change = fp32 / llama - 1
        rows.append(("fp32 graph perplexity vs llama.cpp on the original file", f"{fp32:.4f} vs {llama:.4f} "
                     f"({100 * change:+.2f}%)", f"within {100 * FP32_PPL_TOLERANCE:.0f}%",
                     abs(change) <= FP32_PPL_TOLERANCE))
        top1 = result.top1_vs_llama["fp32"]
        rows.append(("fp32 graph top-1 agreement with llama.cpp", f"{top1:.4f}", f">= {FP32_TOP1_MIN}",
                     top1 >= FP32_TOP1_MIN))
    for precision, tolerance in QUANTISED_PPL_TOLERANCE.items():
        if precision in result.ppl and fp32 is not None:
            change = result.ppl[precision] / fp32 - 1
            rows.append((f"{precision} graph perplexity vs the fp32 graph",
                         f"{result.ppl[precision]:.4f} vs {fp32:.4f} ({100 * change:+.2f}%)",
                         f"within {100 * tolerance:.0f}%", abs(change) <= tolerance))
    bos = result.bos
    one = (bos.text_ours == bos.text_llama == 1 and bos.chat_ours == 1) if bos.wanted else bos.text_ours == 0
    rows.append(("exactly one BOS where the model wants one (none where it does not)",
                 f"text {bos.text_ours}, chat {bos.chat_ours}", "1 and 1" if bos.wanted else "text 0",
                 one and bos.chat_ours == bos.chat_llama))
    same = sum(c.same for c in result.tokenizer)
    rows.append(("tokenizer ids identical to llama-tokenize", f"{same} of {len(result.tokenizer)} strings",
                 f"all {len(result.tokenizer)}", same == len(result.tokenizer)))
    return rows


def report_section(result: ModelFidelity) -> str:
    lines = [f"## {result.model}: `{result.gguf}` ({result.gguf_bytes:,} bytes)\n",
             f"The text: {result.text_tokens:,} tokens; {CHUNKS} chunks of {N_CTX} evaluated, "
             f"{CHUNKS * (N_CTX - 1 - N_CTX // 2):,} positions scored. BOS: {result.bos.text()}.\n"]
    lines.append(markdown_table(["Target", "Measured", "Needed", "Result"],
                                [[t, m, n, "met" if ok else "NOT MET"] for t, m, n, ok in targets(result)]) + "\n")
    rows = [["llama.cpp (original file)", f"{result.llama_ppl:.4f}", "-", "-", f"{result.llama_seconds:.0f}"]]
    for precision, ppl in result.ppl.items():
        rows.append([f"runtime {precision}", f"{ppl:.4f}", f"{result.top1_vs_llama[precision]:.4f}",
                     f"{result.top1_vs_fp32[precision]:.4f}" if precision in result.top1_vs_fp32 else "-",
                     f"{result.seconds[precision]:.0f}"])
    lines.append(markdown_table(["Side", "Perplexity", "Top-1 agreement with llama.cpp", "Top-1 agreement with fp32",
                                 "Seconds"], rows) + "\n")
    different = [c for c in result.tokenizer if not c.same]
    lines.append(f"Tokenizer: {len(result.tokenizer) - len(different)} of {len(result.tokenizer)} strings give "
                 "the same ids (the text, the edge strings of bench/fidelity.py, the ten chat prompts as rendered)"
                 + (": differing " + "; ".join(f"{c.label} ({c.ours} vs {c.llama} tokens, first at "
                                               f"{c.first_difference})" for c in different) if different else "")
                 + ".\n")
    for precision, chat in result.chat.items():
        lines.append(f"Greedy chat answers, runtime {precision} (chat API) vs llama-server on the original file "
                     f"(/completion with the same rendered prompt's ids), {CHAT_TOKENS} tokens at most:\n")
        lines.append(markdown_table(
            ["Prompt", "Common prefix (characters)", "Common prefix (llama-server tokens)", "Tokens (runtime / llama)",
             "Runtime answer (start)", "llama-server answer (start)"],
            [[r.prompt, r.common_chars, f"{r.common_llama_tokens} of {r.llama_tokens}",
              f"{r.ours_tokens} / {r.llama_tokens}", _cell(r.ours), _cell(r.llama)] for r in chat]) + "\n")
    return "\n".join(lines)


def _cell(text: str, width: int = 70) -> str:
    text = " ".join(text.split())
    return (text[:width] + "...") if len(text) > width else text


NOTES_MARKER = "<!-- Hand-written notes below this line are kept when make fidelity rewrites the page. -->"


def write_docs(path: Path, results: list[ModelFidelity], seconds: float) -> None:
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = [
        "# Fidelity to llama.cpp on the same GGUF file\n",
        "Written by `make fidelity` (bench/fidelity.py); tests/fidelity checks the same figures against the "
        "targets in `make test`.\n",
        f"- Date: {today}; the run took {seconds / 60:.1f} min; load average at its end "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} (1, 5, 15 min)",
        "- The text: tests/fidelity/data/us_constitution.txt, the Constitution of the United States (Preamble and "
        "Articles I-VII, with the closing paragraph), a work of the United States government and so in the public "
        "domain; typed out for this repository after the National Archives transcription, spelling of 1787 kept.",
        f"- Method: teacher-forced, as `llama-perplexity -c {N_CTX} --chunks {CHUNKS}` computes perplexity (each "
        "chunk from an empty cache, its first token BOS where the model adds one, the second half scored). The "
        "runtime's side is the serving graph (engine/builder_runner.py) of `moltbot.export.gguf.import_gguf` at each "
        f"precision, run in-process on the CPU ({THREADS} threads) in pieces of {PIECE} positions; llama.cpp's "
        "top-1 tokens come from its `--kl-divergence-base` file. llama.cpp computes with the file's 4/5-bit blocks "
        "and 8-bit activations, the fp32 graph with the exact dequantised values, so the two are compared "
        "teacher-forced, not by answers.\n",
    ]
    notes = "\n"
    if path.exists() and NOTES_MARKER in path.read_text():
        notes = path.read_text().split(NOTES_MARKER, 1)[1]
    path.write_text("\n".join(header + [report_section(r) for r in results] + [NOTES_MARKER]) + notes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2,gemma3")
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "fidelity.md")
    parser.add_argument("--json", type=Path, default=BUILD / "last-run.json")
    parser.add_argument("--skip-chat", action="store_true")
    args = parser.parse_args(argv)
    started = time.monotonic()
    tools = llama_tools()
    results = []
    with tempfile.TemporaryDirectory(prefix="moltbot-fidelity-") as tmp:
        for key in [k.strip() for k in args.models.split(",") if k.strip()]:
            results.append(model_fidelity(MODELS[key], tools, Path(tmp), chat=not args.skip_chat,
                                          log=lambda m: print(f"[fidelity {time.strftime('%H:%M:%S')}] {m}",
                                                              flush=True)))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    write_docs(args.docs, results, time.monotonic() - started)
    for result in results:
        print(report_section(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
