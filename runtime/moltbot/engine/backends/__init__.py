"""The backends, one file each: what serves a model, picked by its config's backend and task.

A new backend is a new file here with a class that has ModelBackend's methods and a `load(config, folder,
settings)` classmethod, its name in engine/config.py's BACKENDS, and its line in LOADERS below.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from moltbot.engine.backend import ModelBackend
from moltbot.engine.backends.decoder import DecoderBackend
from moltbot.engine.backends.encoder import EncoderBackend
from moltbot.engine.backends.service import ServiceBackend
from moltbot.engine.config import ModelConfig
from moltbot.settings import Settings

Loader = Callable[[ModelConfig, Path | None, Settings], ModelBackend]

# (backend, task) -> the loader. `folder` is the model's files (None for a backend without a source).
LOADERS: dict[tuple[str, str], Loader] = {
    ("onnxruntime", "chat"): DecoderBackend.load,
    ("onnxruntime", "embeddings"): EncoderBackend.load,
    ("service", "chat"): ServiceBackend.load,
    ("service", "embeddings"): ServiceBackend.load,
}


def load_backend(config: ModelConfig, folder: Path | None, settings: Settings) -> ModelBackend:
    """The model, loaded and ready to serve; blocking (files, sessions, threads)."""
    loader = LOADERS.get((config.backend, config.task))
    if loader is None:
        raise ValueError(f"{config.file or config.name}: backend {config.backend} does not serve {config.task}")
    return loader(config, folder, settings)
