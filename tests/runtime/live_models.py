"""A live server for the conformance and real-client tests: the embedded defaults (tiny-chat, all-minilm-l6-v2)
and `tiny-toolcall`, a small real model that answers every turn with a get_weather tool call
(tests/runtime/toolcall_model.py)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import REPO, Server, start_server
from tests.runtime.toolcall_model import ensure_model

TOOLCALL = "tiny-toolcall"
CHAT = "tiny-chat"
EMBED = "all-minilm-l6-v2"


def start_with_toolcall_model(home: Path, env: dict[str, str] | None = None) -> Server:
    folder = ensure_model()
    (home / "models").mkdir(parents=True, exist_ok=True)
    (home / "models" / "toolcall.json").write_text(json.dumps({
        "name": TOOLCALL, "source": "local", "path": str(folder), "max_tokens": 512, "temperature": 0}))
    server = start_server(home, env={"MOLTBOT_DEFAULT_MODELS": "on", "MOLTBOT_PLUGINS_DIR": str(REPO / "plugins"),
                                     **(env or {})})
    server.wait_ready()
    return server
