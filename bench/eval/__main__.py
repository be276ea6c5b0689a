"""`python -m bench.eval`: load the embedded default models, score every built-in plugin both ways, print the table
and write it to build/eval/eval.md and eval.json."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from bench.eval.harness import REPO, Questions, evaluate, table
from moltbot.engine.registry import ModelRegistry
from moltbot.settings import Settings


def log(message: str) -> None:
    print(f"[eval {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def main(defaults: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(exist_ok=True)
    registry = ModelRegistry(Settings(models_dir=out / "models", defaults_dir=defaults, default_models="on",
                                      plugins_dir=out / "models").validate())
    registry.load_all()
    try:
        chat = registry.model_names("chat")
        log(f"models: {', '.join(registry.model_names())}")
        started = time.monotonic()
        scores = await evaluate(registry, out / "work", Questions.shipped(), log)
    finally:
        await registry.close()
    text = table(scores)
    print(text)
    header = (f"Measured {datetime.date.today().isoformat()} on {', '.join(chat)} (greedy), "
              f"{time.monotonic() - started:.0f} s.\n\n")
    (out / "eval.md").write_text(header + text + "\n")
    (out / "eval.json").write_text(json.dumps({"chat_models": chat, "scores": [asdict(s) for s in scores]},
                                              indent=1, ensure_ascii=False))
    log(f"wrote {out / 'eval.md'} and {out / 'eval.json'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--defaults", type=Path, default=REPO / "build" / "default-models",
                        help="the embedded default models' folder (make image-default-models)")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "eval")
    args = parser.parse_args()
    asyncio.run(main(args.defaults, args.out))
