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
    """Settings for a PluginManager in the test process. Plugins without an `isolation` run in-process here (the
    loader's and the thread pool's rules); test_plugin_isolation.py covers worker processes, the service's
    default."""
    overrides.setdefault("plugin_isolation", "thread")
    return Settings(plugins_dir=plugins_dir, cache_dir=tmp_path / "data" / "cache", **overrides).validate()


def make_app(manager: PluginManager) -> Sanic:
    Sanic.test_mode = True
    app = Sanic(f"plugins_test_{id(manager)}")
    app.ctx.plugins = manager
    app.blueprint(plugin_routes.bp)
    return app


def write_pdf(path: Path, pages: list[str], width: int = 90) -> Path:
    """A small but real PDF (Helvetica text, one content stream per page) for the PDF ingest path."""
    import textwrap as wrap

    def escape(line: str) -> str:
        return line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    objects: list[bytes] = []
    font_id = 3 + 2 * len(pages)
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(len(pages)))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode())
    for i, text in enumerate(pages):
        lines = " T* ".join(f"({escape(line)}) Tj" for line in wrap.wrap(text, width))
        stream = f"BT /F1 11 Tf 50 750 Td 14 TL {lines} ET".encode("latin-1")
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
                       f"/Resources << /Font << /F1 {font_id} 0 R >> >> /Contents {4 + 2 * i} 0 R >>".encode())
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(out))
    return path


def plugin_module(manager, plugin: str, module: str):
    """A module of a loaded plugin's package (e.g. sql_assistant's guard), to test a layer below execute()."""
    import sys

    package = type(manager.get(plugin).instance).__module__.rsplit(".", 1)[0]
    return sys.modules[f"{package}.{module}"]
