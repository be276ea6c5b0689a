"""A small real model that calls a tool: the tiny test Llama (tests/fixture_models.py) trained for a
few seconds to answer every chat turn with one Hermes-style `<tool_call>` block, exported to ONNX with Optimum.
Made once per checkout under build/test-models/tiny-toolcall (the conformance and real-client tests serve it).

    python -m tests.runtime.toolcall_model DIR     (what the fixture runs, in a child process: it imports torch)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TEST_MODELS = REPO / "build" / "test-models"
NAME = "tiny-toolcall"
TOOL_NAME = "get_weather"
TOOL_ARGUMENTS = {"city": "Paris", "unit": "celsius"}
ANSWER = ("<tool_call>\n" + json.dumps({"name": TOOL_NAME, "arguments": TOOL_ARGUMENTS}) + "\n</tool_call>")
TRAIN_SEED = 20261202
TRAIN_STEPS = 300
WEATHER_TOOL = {"type": "function", "function": {
    "name": TOOL_NAME, "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city"]}}}

_QUESTIONS = ["What is the weather in Paris?", "Hello", "weather?", "Tell me about Paris.", "x", "Is it sunny?",
              "Please check the forecast", "How warm is it today in the capital of France?", "hi there",
              "What should I wear?", "Call the weather tool", "Moltbot, what is the temperature outside?"]


def ensure_model(root: Path = TEST_MODELS) -> Path:
    folder = root / NAME
    if not (folder / "model.onnx").exists():
        result = subprocess.run([sys.executable, "-m", "tests.runtime.toolcall_model", str(root)], cwd=REPO,
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
    return folder


def _train(out: Path) -> None:
    import shutil
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from tests.fixture_models import build_tiny_chat_checkpoint
    from moltbot.export.optimum_export import export_checkpoint

    with tempfile.TemporaryDirectory(prefix="moltbot-toolcall-") as tmp:
        work = build_tiny_chat_checkpoint(Path(tmp) / "checkpoint")
        tokenizer = PreTrainedTokenizerFast.from_pretrained(work)
        model = AutoModelForCausalLM.from_pretrained(work)
        torch.manual_seed(TRAIN_SEED)
        for module in model.modules():  # the default's wide initialisation makes training slow: start narrow
            if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
                torch.nn.init.normal_(module.weight, std=0.02)
        answer = tokenizer(ANSWER, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows = []
        for question in _QUESTIONS:
            for system in (None, "You are a helpful assistant with tools."):
                messages = ([{"role": "system", "content": system}] if system else []) + [
                    {"role": "user", "content": question}]
                prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
                ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
                rows.append((ids + answer, [-100] * len(ids) + answer))
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.tensor([ids + [tokenizer.pad_token_id] * (width - len(ids)) for ids, _ in rows])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows])
        optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(TRAIN_STEPS):
            loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        model.eval()
        model.save_pretrained(work)
        print(f"{NAME}: loss {loss.item():.4f} after {TRAIN_STEPS} steps", file=sys.stderr)
        partial = out.with_name(out.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        export_checkpoint(work, partial, task="chat", extra_meta={
            "name": NAME, "description": "Test model: answers every turn with one get_weather tool call."})
    partial.rename(out)


if __name__ == "__main__":
    target = Path(sys.argv[1]) / NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    _train(target)
