"""Small real models for the builder-graph tests, made once per checkout under build/test-models/.

A random-weight model's next-token scores are nearly flat, so any quantisation flips its greedy choices and a
top-1 agreement figure says nothing about the graph. The tests therefore use `tiny-trained`: the tiny test
Llama (tests/fixture_models.py) trained for a few seconds on its own tokenizer corpus, so that its
predictions have real margins. From that one checkpoint the model builder makes the fp32, int8 and int4
graphs (in build/builder-venv, `make builder-venv`), and Optimum the reference export.

    python -m tests.builder_models DIR     (what the fixtures run, in a child process: it imports torch)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEST_MODELS = REPO / "build" / "test-models"
CHECKPOINT = "tiny-trained-hf"
BUILDER_PYTHON = REPO / "build" / "builder-venv" / "bin" / "python"
TRAIN_STEPS = 120
TRAIN_SEED = 20261202


def ensure_checkpoint(root: Path = TEST_MODELS) -> Path:
    folder = root / CHECKPOINT
    if not (folder / "model.safetensors").exists():
        result = subprocess.run([sys.executable, "-m", "tests.builder_models", str(root)], cwd=REPO,
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
    return folder


def ensure_graph(precision: str, root: Path = TEST_MODELS) -> Path:
    """The builder's graph of the trained checkpoint at `precision`, made once."""
    from moltbot.export.genai_builder import build_graph, graph_recipe

    folder = root / f"tiny-trained-{precision}-{graph_recipe(precision, 'cpu')}"  # a changed recipe: made again
    if not (folder / "genai_config.json").exists():
        build_graph(ensure_checkpoint(root), folder, precision, python=str(BUILDER_PYTHON))
    return folder


def _train(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from tests.fixture_models import _CORPUS, build_tiny_chat_checkpoint

    work = out.with_name(out.name + ".partial")
    build_tiny_chat_checkpoint(work)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(work)
    model = AutoModelForCausalLM.from_pretrained(work)
    torch.manual_seed(TRAIN_SEED)
    for module in model.modules():  # the default's wide initialisation makes training slow: start narrow
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            torch.nn.init.normal_(module.weight, std=0.02)
    ids = torch.tensor(tokenizer(_CORPUS * 8)["input_ids"])
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(TRAIN_STEPS):
        starts = torch.randint(0, len(ids) - 65, (8,))
        batch = torch.stack([ids[s: s + 64] for s in starts])
        loss = model(input_ids=batch, labels=batch).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    model.save_pretrained(work)
    print(f"tiny-trained: loss {loss.item():.3f} after {TRAIN_STEPS} steps", file=sys.stderr)
    work.rename(out)


if __name__ == "__main__":
    target = Path(sys.argv[1]) / CHECKPOINT
    target.parent.mkdir(parents=True, exist_ok=True)
    _train(target)
