"""The interface every plugin implements."""

from __future__ import annotations

from typing import Any


class BasePlugin:
    """Subclass this in your plugin's plugin.py.

    `config` is the plugin's settings from config.json with secret references already resolved.
    `execute(context)` returns a JSON-serialisable dict; it may be a plain method (run in a worker thread)
    or `async def` (awaited on the event loop, so it must not block).
    A class attribute `input_schema` is used when config.json has none.
    """

    input_schema: dict[str, Any] | None = None

    def __init__(self, config: dict[str, Any] | None = None):
        self.config: dict[str, Any] = dict(config or {})

    def execute(self, context: Any) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} does not implement execute(context)")

    def close(self) -> None:
        """Called when the plugin is unloaded (reload or shutdown); release files, connections, threads."""
