"""Imports plugin folders from source, every time.

A reload must see the files as they are now. Python's normal import would reuse __pycache__ bytecode when a file
was edited within the same second at the same size, and caches directory listings; plugin packages (module names
starting with MODULE_PREFIX) are therefore found and compiled from source by this finder, and no bytecode is
written into the operator's plugin folders.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import CodeType, ModuleType

MODULE_PREFIX = "moltbot_plugin_"


class _SourceOnlyLoader(importlib.machinery.SourceFileLoader):
    def get_code(self, fullname: str) -> CodeType:
        return self.source_to_code(self.get_data(self.path), self.path)


class _PluginFinder:
    """On sys.meta_path: finds the submodules of plugin packages in their folder."""

    @staticmethod
    def find_spec(fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if not fullname.startswith(MODULE_PREFIX) or not path:
            return None
        leaf = fullname.rpartition(".")[2]
        for folder in path:
            package_init = Path(folder) / leaf / "__init__.py"
            if package_init.is_file():
                return package_spec(fullname, package_init)
            module_file = Path(folder) / f"{leaf}.py"
            if module_file.is_file():
                return importlib.util.spec_from_file_location(
                    fullname, module_file, loader=_SourceOnlyLoader(fullname, str(module_file)))
        return None


def package_spec(name: str, init: Path) -> ModuleSpec:
    """The spec of a package from its __init__.py, loaded from source."""
    spec = importlib.util.spec_from_file_location(name, init, loader=_SourceOnlyLoader(name, str(init)),
                                                  submodule_search_locations=[str(init.parent)])
    if spec is None:  # only for a path without a loader; we always give one
        raise ImportError(f"no module spec for {init}")
    return spec


def install() -> None:
    if not any(isinstance(f, _PluginFinder) or f is _PluginFinder for f in sys.meta_path):
        sys.meta_path.insert(0, _PluginFinder)
