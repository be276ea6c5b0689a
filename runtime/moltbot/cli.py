"""`moltbot` command line: serve, models (pull, export, defaults), settings, plugins."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from moltbot.settings import Settings, SettingsError


def process_started_monotonic() -> float:
    """When this process started, on the time.monotonic() clock (Linux; else: now)."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        age = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
        return time.monotonic() - max(age, 0.0)
    except (OSError, ValueError, IndexError):
        return time.monotonic()


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="JSON or TOML settings file (also MOLTBOT_CONFIG)")
    for f in dataclasses.fields(Settings):
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None, metavar="VALUE",
                            help=f"{f.metadata['doc']} (MOLTBOT_{f.name.upper()})")


def _settings(args: argparse.Namespace) -> Settings:
    names = {f.name for f in dataclasses.fields(Settings)} | {"config"}
    return Settings.load({k: v for k, v in vars(args).items() if k in names})


def cmd_serve(args: argparse.Namespace) -> int:
    started = process_started_monotonic()
    settings = _settings(args)
    import asyncio

    from moltbot import logs
    from moltbot.api.server import serve

    logs.configure(settings.log_level, settings.logs_dir, settings.log_max_bytes, settings.log_backups)
    try:
        asyncio.run(serve(settings, process_started=started))
    except OSError as exc:  # e.g. the port is taken
        print(f"moltbot: cannot serve: {exc}", file=sys.stderr)
        return 1
    except SettingsError as exc:  # server.check_exposure: no keys on an address others can reach
        print(f"moltbot: refusing to serve: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_models_pull(args: argparse.Namespace) -> int:
    from moltbot.engine.config import ModelConfig, ModelConfigError
    from moltbot.engine.sources import ModelSourceError, fetch_remote

    settings = _settings(args)
    try:
        config = ModelConfig.from_dict(json.loads(Path(args.config_file).read_text()), file=args.config_file)
    except (OSError, ValueError, ModelConfigError) as exc:
        print(f"moltbot: {args.config_file}: {exc}", file=sys.stderr)
        return 2
    if config.source != "remote":
        print(f"moltbot: {args.config_file}: source is {config.source or 'none'}; only remote models are pulled",
              file=sys.stderr)
        return 2
    bar = _ProgressBar(config.name)
    try:
        folder = fetch_remote(config, settings.models_dir, progress=bar)
    except ModelSourceError as exc:
        bar.close()
        print(f"moltbot: {exc}", file=sys.stderr)
        return 1
    bar.close()
    print(folder)
    return 0


class _ProgressBar:
    def __init__(self, label: str):
        self.label = label
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def __call__(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - self.last < 0.2 and done != total:
            return
        self.last = now
        if total:
            filled = int(30 * done / total)
            line = f"{self.label} [{'#' * filled}{'.' * (30 - filled)}] {done / 1e6:.1f}/{total / 1e6:.1f} MB"
        else:
            line = f"{self.label} {done / 1e6:.1f} MB"
        print(("\r" if self.tty else "") + line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr)


def cmd_models_export(args: argparse.Namespace) -> int:
    from moltbot.export.__main__ import main as export_main

    # --dtype fp16 and --quantize int8 are the older spellings of --precision.
    precision = args.precision or args.quantize or args.dtype or "fp32"
    builder_python = _settings(args).builder_python
    return export_main([args.source, args.output, "--task", args.task, "--precision", precision,
                        "--device", args.device, "--graph", args.graph]
                       + (["--builder-python", builder_python] if builder_python else []))


def cmd_models_defaults(args: argparse.Namespace) -> int:
    from moltbot.export.defaults import main as defaults_main

    settings = _settings(args)
    output = args.output or str(settings.defaults_dir)
    return defaults_main([output, "--precision", settings.default_chat_precision, "--device", settings.device]
                         + (["--builder-python", settings.builder_python] if settings.builder_python else [])
                         + (["--force"] if args.force else []))


def cmd_models_import(args: argparse.Namespace) -> int:
    from moltbot.export.genai_builder import BuilderUnavailable
    from moltbot.export.gguf import import_model

    settings = _settings(args)
    try:
        config_file = import_model(Path(args.file), settings.models_dir, name=args.name, precision=args.precision,
                                   device=settings.device, builder_python=settings.builder_python, force=args.force)
    except (BuilderUnavailable, OSError, ValueError, RuntimeError) as exc:
        print(f"moltbot: import failed: {exc}", file=sys.stderr)
        return 1
    print(config_file)
    return 0


def cmd_models_check(args: argparse.Namespace) -> int:
    from moltbot.engine.config import read_model_configs

    settings = _settings(args)
    configs, errors = read_model_configs(settings.models_dir)
    for config in configs:
        print(f"ok     {config.name} ({config.type}, {config.task}) from {config.file}")
    for _, error in errors:
        print(f"error  {error}")
    return 1 if errors else 0


def cmd_settings(args: argparse.Namespace) -> int:
    print("| Variable | Default | Meaning |\n|---|---|---|")
    for env, default, doc in Settings.documentation():
        print(f"| `{env}` | `{default}` | {doc} |" if default else f"| `{env}` | | {doc} |")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moltbot", description="Self-hosted AI assistant runtime.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the OpenAI-compatible API")
    _add_setting_flags(serve)
    serve.set_defaults(func=cmd_serve)

    models = sub.add_parser("models", help="model configs, downloads and exports")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    pull = models_sub.add_parser("pull", help="download a `remote` model config's archive into the models dir")
    pull.add_argument("config_file")
    _add_setting_flags(pull)
    pull.set_defaults(func=cmd_models_pull)
    export = models_sub.add_parser(
        "export", help="make an ONNX model from a Hugging Face checkpoint: the model builder's graph where it "
                       "covers the model (builder_python), else Optimum's export (needs the export extra)")
    export.add_argument("source")
    export.add_argument("output")
    export.add_argument("--task", choices=["chat", "embeddings"], default="chat")
    export.add_argument("--precision", choices=["fp32", "fp16", "int8", "int4"],
                        help="weights (default fp32): fp16 for CUDA, int8 or int4 block-quantised (int4: builder only)")
    export.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    export.add_argument("--graph", choices=["auto", "builder", "optimum"], default="auto",
                        help="auto: the model builder where it covers the model, else Optimum")
    export.add_argument("--dtype", choices=["fp32", "fp16"], help=argparse.SUPPRESS)
    export.add_argument("--quantize", choices=["int8"], help=argparse.SUPPRESS)
    export.add_argument("--builder-python", dest="builder_python", default=None, metavar="VALUE",
                        help="Python of the model builder's venv (MOLTBOT_BUILDER_PYTHON)")
    export.set_defaults(func=cmd_models_export)
    defaults = models_sub.add_parser("defaults", help="make the embedded default models (needs the export extra)")
    defaults.add_argument("--output", help="folder (default: the defaults_dir setting)")
    defaults.add_argument("--force", action="store_true", help="make them again even if present")
    _add_setting_flags(defaults)
    defaults.set_defaults(func=cmd_models_defaults)
    gguf = models_sub.add_parser(
        "import", help="make a serving graph from a GGUF file (llama, mistral, qwen2, gemma3; in the model "
                       "builder's venv) and a model config for it in the models dir")
    gguf.add_argument("file", help="the .gguf file")
    gguf.add_argument("--precision", choices=["int8", "int4", "fp32", "fp16"], default="int8",
                      help="the graph's weights (default int8; fp16 is for --device cuda)")
    gguf.add_argument("--name", help="the model's name (default: the file's name)")
    gguf.add_argument("--force", action="store_true", help="replace a model of that name imported before")
    _add_setting_flags(gguf)
    gguf.set_defaults(func=cmd_models_import)
    check = models_sub.add_parser("check", help="validate the model configs in the models dir")
    _add_setting_flags(check)
    check.set_defaults(func=cmd_models_check)

    from moltbot.plugins.cli import add_subcommands as add_plugin_commands

    add_plugin_commands(sub)

    settings = sub.add_parser("settings", help="print the settings table (markdown)")
    settings.set_defaults(func=cmd_settings)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.func
    try:
        return command(args)
    except SettingsError as exc:
        print(f"moltbot: invalid setting: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
