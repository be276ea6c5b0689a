"""Plugins as OpenAI tools, and the `plugins new` / `plugins test` commands."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

from moltbot.plugins.cli import add_subcommands
from moltbot.plugins.errors import PluginNotATool, PluginNotFound
from moltbot.plugins.manager import PluginManager
from moltbot.plugins.tools import plugin_tool_specs, run_tool_calls
from plugin_helpers import BUILTIN_PLUGINS, make_settings, write_plugin

WEATHER = '''
from moltbot.plugins import BasePlugin
class Weather(BasePlugin):
    def execute(self, context):
        if context.input["city"] == "Atlantis":
            raise RuntimeError("no such city")
        return {"city": context.input["city"], "celsius": 21}
'''
WEATHER_CONFIG = {"name": "weather", "description": "Current temperature in a city.",
                  "input_schema": {"type": "object", "required": ["city"],
                                   "properties": {"city": {"type": "string"}}}}


@pytest.mark.anyio
async def test_tool_specs_and_tool_calls(plugins_root, tmp_path):
    write_plugin(plugins_root, "weather", WEATHER, WEATHER_CONFIG)
    manager = PluginManager(make_settings(plugins_root, tmp_path))
    await manager.load_all()
    assert plugin_tool_specs(manager, ["weather"]) == [{
        "type": "function",
        "function": {"name": "weather", "description": "Current temperature in a city.",
                     "parameters": WEATHER_CONFIG["input_schema"]},
    }]
    with pytest.raises(PluginNotFound):
        plugin_tool_specs(manager, ["weather", "stocks"])
    write_plugin(plugins_root, "wiper", WEATHER, {**WEATHER_CONFIG, "name": "wiper", "tool": False})
    await manager.load_all()
    with pytest.raises(PluginNotATool, match="tool"):
        plugin_tool_specs(manager, ["weather", "wiper"])

    tool_calls = [
        {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": "{}"}},
        {"id": "call_3", "type": "function", "function": {"name": "weather", "arguments": "{oops"}},
        {"id": "call_4", "type": "function", "function": {"name": "stocks", "arguments": "{}"}},
        {"id": "call_5", "type": "function", "function": {"name": "weather", "arguments": {"city": "Atlantis"}}},
    ]
    messages = await run_tool_calls(manager, tool_calls, request_id="req-7")
    assert [m["tool_call_id"] for m in messages] == ["call_1", "call_2", "call_3", "call_4", "call_5"]
    assert all(m["role"] == "tool" for m in messages)
    contents = [json.loads(m["content"]) for m in messages]
    assert contents[0] == {"city": "Oslo", "celsius": 21}
    assert contents[1]["error"]["param"] == "city"
    assert contents[2]["error"]["param"] == "arguments"
    assert contents[3]["error"]["code"] == "plugin_not_found"
    assert contents[4]["error"]["code"] == "plugin_failed" and "req-7" in contents[4]["error"]["message"]
    await manager.close()


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="moltbot")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_new_scaffold_loads_and_runs_with_plugins_test(plugins_root, capsys):
    assert cli(["plugins", "new", "greeter-bot", "--dir", str(plugins_root)]) == 0
    folder = plugins_root / "greeter-bot"
    assert sorted(p.name for p in folder.iterdir()) == ["__init__.py", "config.json", "plugin.py"]
    config = json.loads((folder / "config.json").read_text())
    assert config["class"] == "GreeterBotPlugin" and config["input_schema"]["required"] == ["name"]
    capsys.readouterr()

    assert cli(["plugins", "test", "greeter-bot", "--dir", str(plugins_root), "--input", '{"name": "world"}']) == 0
    assert json.loads(capsys.readouterr().out) == {"message": "Hello, world!"}

    assert cli(["plugins", "test", "greeter-bot", "--dir", str(plugins_root), "--input", "{}"]) == 1
    assert json.loads(capsys.readouterr().err)["error"]["param"] == "name"

    assert cli(["plugins", "new", "greeter-bot", "--dir", str(plugins_root)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli(["plugins", "new", "bad name!", "--dir", str(plugins_root)]) == 2
    assert cli(["plugins", "test", "greeter-bot", "--dir", str(plugins_root), "--input", "{nope"]) == 2


def test_plugins_test_reports_a_load_error(plugins_root, capsys):
    write_plugin(plugins_root, "broken", "import nothing_here_at_all\n", {})
    assert cli(["plugins", "test", "broken", "--dir", str(plugins_root)]) == 1
    error = json.loads(capsys.readouterr().err)["error"]
    assert "failed to load" in error["message"] and "nothing_here_at_all" in error["message"]


def test_plugins_test_with_the_models(tmp_path, monkeypatch, capsys, defaults_dir):
    monkeypatch.setenv("MOLTBOT_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("MOLTBOT_DEFAULTS_DIR", str(defaults_dir))
    monkeypatch.setenv("MOLTBOT_CACHE_DIR", str(tmp_path / "cache"))
    question = '{"question": "How much does shipping cost?"}'
    assert cli(["plugins", "test", "support_faq", "--dir", str(BUILTIN_PLUGINS), "--input", question]) == 1
    assert "no models are available" in json.loads(capsys.readouterr().err)["error"]["message"]

    assert cli(["plugins", "test", "support_faq", "--dir", str(BUILTIN_PLUGINS), "--input", question,
                "--models"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["matched_question"] == "How much does shipping cost?" and result["score"] > 0.99


def test_the_moltbot_command_runs_plugins_new_and_test(tmp_path):
    def moltbot(*args: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MOLTBOT_")}
        return subprocess.run([sys.executable, "-m", "moltbot", "plugins", *args], capture_output=True, text=True,
                              env={**env, "MOLTBOT_PLUGINS_DIR": str(tmp_path / "plugins"),
                                   "MOLTBOT_CACHE_DIR": str(tmp_path / "cache")}, timeout=120)

    created = moltbot("new", "hello")
    assert created.returncode == 0, created.stderr
    assert (tmp_path / "plugins" / "hello" / "plugin.py").exists()
    ran = moltbot("test", "hello", "--input", '{"name": "Moltbot"}')
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout) == {"message": "Hello, Moltbot!"}
