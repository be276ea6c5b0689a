"""Helpers of the plugin tests: plugin folders, settings, and a Sanic app serving the plugin routes."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from sanic import Sanic

from moltbot.api import plugin_routes
from moltbot.plugins.manager import PluginManager
from moltbot.settings import Settings

REPO = Path(__file__).resolve().parents[2]
BUILTIN_PLUGINS = REPO / "plugins"


def write_plugin(root: Path, folder: str, code: str, config: dict[str, Any] | str | None = None,
                 init: str = "") -> Path:
    """A plugin folder with the three files; `config` as a dict (dumped) or raw text."""
    path = root / folder
    path.mkdir(parents=True, exist_ok=True)
    (path / "__init__.py").write_text(init)
    (path / "plugin.py").write_text(textwrap.dedent(code))
    if config is not None:
        (path / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    return path


def make_settings(plugins_dir: Path, tmp_path: Path, **overrides: Any) -> Settings:
    return Settings(plugins_dir=plugins_dir, cache_dir=tmp_path / "data" / "cache", **overrides).validate()


def make_app(manager: PluginManager) -> Sanic:
    Sanic.test_mode = True
    app = Sanic(f"plugins_test_{id(manager)}")
    app.ctx.plugins = manager
    app.blueprint(plugin_routes.bp)
    return app
