"""The marker every export step writes beside a model's files (moltbot-export.json): what made it and how.

Keys: task, source, and for chat graphs `graph` (genai | optimum) and `precision` (fp32, fp16, int8, int4).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MARKER = "moltbot-export.json"


def read_marker(folder: Path) -> dict[str, Any]:
    """The folder's marker, or {} where there is none (a folder made by another tool)."""
    try:
        meta = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def write_marker(folder: Path, meta: dict[str, Any]) -> None:
    (Path(folder) / MARKER).write_text(json.dumps(meta, indent=2))
