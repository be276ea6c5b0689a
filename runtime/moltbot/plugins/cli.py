"""`moltbot plugins new NAME` (scaffold) and `moltbot plugins test NAME` (load and run one plugin locally)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import Any

from .config import NAME_PATTERN
from .errors import PluginAPIError

PLUGIN_TEMPLATE = '''"""{description}"""

from moltbot.plugins import BasePlugin


class {class_name}(BasePlugin):
    def __init__(self, config):
        super().__init__(config)
        self.greeting = config.get("greeting", "Hello")

    def execute(self, context):
        # context.input is already validated against input_schema in config.json.
        name = context.input["name"]
        context.logger.info("greeting someone")
        return {{"message": f"{{self.greeting}}, {{name}}!"}}
'''


def add_subcommands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `plugins new` and `plugins test`; each sets `func(args) -> exit code`."""
    plugins = subparsers.add_parser("plugins", help="create and try plugins")
    commands = plugins.add_subparsers(dest="plugins_command", required=True)

    new = commands.add_parser("new", help="scaffold a plugin folder (__init__.py, plugin.py, config.json)")
    new.add_argument("name", help="plugin name: letters, digits, '_' or '-'")
    new.add_argument("--dir", type=Path, default=None, help="plugins folder (default: the plugins_dir setting)")
    new.set_defaults(func=run_new)

    test = commands.add_parser("test", help="load one plugin and run it once, printing the result")
    test.add_argument("name")
    test.add_argument("--dir", type=Path, default=None, help="plugins folder (default: the plugins_dir setting)")
    test.add_argument("--input", default="{}", help="the input as JSON, or @FILE to read it from a file")
    test.add_argument("--models", action="store_true",
                      help="load the configured models (or the embedded defaults) so context.models works")
    test.set_defaults(func=run_test)


def _plugins_dir(given: Path | None) -> Path:
    if given is not None:
        return given
    from moltbot.settings import Settings
    return Path(Settings.load().plugins_dir)


def scaffold(root: Path, name: str) -> Path:
    if not NAME_PATTERN.match(name):
        raise ValueError(f"plugin name {name!r} must be 1-64 letters, digits, '_' or '-'")
    folder = root / name
    if folder.exists():
        raise FileExistsError(f"{folder} already exists")
    class_name = "".join(part.capitalize() for part in name.replace("-", "_").split("_") if part) + "Plugin"
    if not class_name[0].isalpha():
        class_name = "P" + class_name
    description = f"The {name} plugin: describe what it does here."
    config = {
        "name": name, "version": "0.1.0", "description": description, "class": class_name, "enabled": True,
        "timeout": 10,
        "settings": {"greeting": "Hello", "api_key": {"env": f"{name.upper().replace('-', '_')}_API_KEY",
                                                      "default": ""}},
        "input_schema": {"type": "object", "required": ["name"], "additionalProperties": False,
                         "properties": {"name": {"type": "string", "minLength": 1, "description": "Who to greet."}}},
    }
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text("")
    (folder / "plugin.py").write_text(PLUGIN_TEMPLATE.format(description=description, class_name=class_name))
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder


def run_new(args: argparse.Namespace) -> int:
    try:
        folder = scaffold(_plugins_dir(args.dir), args.name)
    except (ValueError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"created {folder}/ (__init__.py, plugin.py, config.json)")
    print(f"try it: moltbot plugins test {args.name} --dir {folder.parent} --input '{{\"name\": \"world\"}}'")
    return 0


def _read_input(text: str) -> Any:
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    return json.loads(text)


def run_test(args: argparse.Namespace) -> int:
    try:
        payload = _read_input(args.input)
    except (OSError, json.JSONDecodeError) as exc:
        print(f"error: --input: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_run_once(_plugins_dir(args.dir), args.name, payload, args.models))


async def _run_once(root: Path, name: str, payload: Any, with_models: bool) -> int:
    from moltbot.settings import Settings

    from .manager import PluginManager

    settings = Settings.load({"plugins_dir": root})
    registry = None
    if with_models:
        from moltbot.engine.registry import ModelRegistry

        registry = ModelRegistry(settings)
        await asyncio.to_thread(registry.load_all)
        for failure in registry.failures:
            print(f"warning: model {failure['model']} not loaded: {failure['error']}", file=sys.stderr)
    manager = PluginManager(settings, models=registry)
    try:
        try:
            await manager.reload([name])
            result = await manager.execute(name, payload, request_id=f"cli-{uuid.uuid4().hex[:12]}")
        except PluginAPIError as exc:
            error = {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}
            print(json.dumps({"error": error}, indent=2), file=sys.stderr)
            return 1
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return 0
    finally:
        await manager.close()
        if registry is not None:
            await registry.close()
