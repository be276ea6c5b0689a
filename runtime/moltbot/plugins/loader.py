"""Imports a plugin folder and makes its plugin: the one loader of the manager (in-process plugins) and of the
worker process (isolated ones), so both follow the same rules.

Every load imports the folder as a package of its own under a fresh module name (MODULE_PREFIX + name + a
suffix), from source, every time: a reload must see the files as they are now. Python's normal import would
reuse __pycache__ bytecode when a file was edited within the same second at the same size, and caches directory
listings; plugin packages are therefore found and compiled from source by this module's finder, and no bytecode
is written into the operator's plugin folders.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import inspect
import sys
import types
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import Any

from .base import BasePlugin
from .errors import PluginLoadError

MODULE_PREFIX = "moltbot_plugin_"


class _SourceOnlyLoader(importlib.machinery.SourceFileLoader):
    def get_code(self, fullname: str) -> types.CodeType:
        return self.source_to_code(self.get_data(self.path), self.path)


class _PluginFinder:
    """On sys.meta_path: finds the submodules of plugin packages in their folder."""

    @staticmethod
    def find_spec(fullname: str, path: Sequence[str] | None = None,
                  target: types.ModuleType | None = None) -> ModuleSpec | None:
        if not fullname.startswith(MODULE_PREFIX) or not path:
            return None
        leaf = fullname.rpartition(".")[2]
        for folder in path:
            package_init = Path(folder) / leaf / "__init__.py"
            if package_init.is_file():
                return _package_spec(fullname, package_init)
            module_file = Path(folder) / f"{leaf}.py"
            if module_file.is_file():
                return importlib.util.spec_from_file_location(
                    fullname, module_file, loader=_SourceOnlyLoader(fullname, str(module_file)))
        return None


def _package_spec(name: str, init: Path) -> ModuleSpec:
    """The spec of a package from its __init__.py, loaded from source."""
    spec = importlib.util.spec_from_file_location(name, init, loader=_SourceOnlyLoader(name, str(init)),
                                                  submodule_search_locations=[str(init.parent)])
    if spec is None:  # only for a path without a loader; we always give one
        raise ImportError(f"no module spec for {init}")
    return spec


def install() -> None:
    """Put the finder on sys.meta_path (once)."""
    if not any(isinstance(f, _PluginFinder) or f is _PluginFinder for f in sys.meta_path):
        sys.meta_path.insert(0, _PluginFinder)


def package_name(plugin: str, suffix: str) -> str:
    return f"{MODULE_PREFIX}{plugin.replace('-', '_')}_{suffix}"


def load_plugin(folder: Path, package: str, class_name: str | None, settings: dict[str, Any]) -> BasePlugin:
    """Import `folder` as the package `package` and make its plugin with `settings`; PluginLoadError (with the
    file and line where the plugin's code failed) otherwise, its modules dropped again."""
    install()
    if not (folder / "plugin.py").exists():
        raise PluginLoadError("plugin.py is missing")
    try:
        init = folder / "__init__.py"
        if init.exists():
            spec = _package_spec(package, init)
            package_module = importlib.util.module_from_spec(spec)
            sys.modules[package] = package_module
            assert spec.loader is not None  # _package_spec always gives its loader
            spec.loader.exec_module(package_module)
        else:
            package_module = types.ModuleType(package)
            package_module.__path__ = [str(folder)]
            sys.modules[package] = package_module
        module = importlib.import_module(f"{package}.plugin")
        cls = _find_plugin_class(module, package, class_name)
        try:
            return cls(dict(settings))
        except (Exception, SystemExit) as exc:
            raise PluginLoadError(f"{cls.__name__}.__init__ raised {type(exc).__name__}: {exc}") from None
    except PluginLoadError:
        drop_modules(package)
        raise
    except (Exception, SystemExit) as exc:  # import and syntax errors, anything the plugin's modules raise
        drop_modules(package)
        raise PluginLoadError(f"import failed: {_describe(exc, folder)}") from None


def drop_modules(package: str) -> None:
    """Forget the modules of one load of a plugin (unload, or a failed load)."""
    # A snapshot of the keys: plugins are unloaded on worker threads (close(), reload()) while other threads
    # import and drop modules; iterating sys.modules itself then fails ("dictionary changed size").
    for module_name in [m for m in list(sys.modules) if m == package or m.startswith(package + ".")]:
        sys.modules.pop(module_name, None)


def _find_plugin_class(module: types.ModuleType, package: str, class_name: str | None) -> type[BasePlugin]:
    if class_name:
        cls = getattr(module, class_name, None)
        if not (inspect.isclass(cls) and issubclass(cls, BasePlugin)):
            raise PluginLoadError(f"plugin.py has no BasePlugin subclass named {class_name!r}")
        return cls
    found = [obj for obj in vars(module).values()
             if inspect.isclass(obj) and issubclass(obj, BasePlugin) and obj is not BasePlugin]
    own = [c for c in found if c.__module__ == module.__name__] or \
          [c for c in found if c.__module__.startswith(package + ".")]
    if not own:
        raise PluginLoadError("plugin.py defines no subclass of moltbot.plugins.BasePlugin")
    if len(own) > 1:
        names = ", ".join(sorted(c.__name__ for c in own))
        raise PluginLoadError(f"plugin.py defines several BasePlugin subclasses ({names}); "
                              'name one with "class" in config.json')
    return own[0]


def _describe(exc: BaseException, folder: Path) -> str:
    """The error and where in the plugin it happened: the file and line of a syntax error, or of the deepest
    traceback frame inside the plugin folder."""
    if isinstance(exc, SyntaxError):
        return f"SyntaxError: {exc.msg} ({Path(exc.filename or 'plugin.py').name} line {exc.lineno})"
    return f"{type(exc).__name__}: {exc}{_plugin_frame(exc, folder)}"


def _plugin_frame(exc: BaseException, folder: Path) -> str:
    """' (plugin.py line N)' for the deepest traceback frame inside the plugin folder, to point at the bug."""
    where = ""
    tb = exc.__traceback__
    while tb is not None:
        filename = Path(tb.tb_frame.f_code.co_filename)
        if folder in filename.parents:
            where = f" ({filename.name} line {tb.tb_lineno})"
        tb = tb.tb_next
    return where
