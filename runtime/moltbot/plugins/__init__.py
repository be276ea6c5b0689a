"""Plugin SDK: subclass `BasePlugin`, put it in `<plugins dir>/<name>/plugin.py` next to a config.json.

See plugins/README.md for how to write, test and ship a plugin.
"""

from .base import BasePlugin
from .context import PluginContext
from .errors import PluginError

__all__ = ["BasePlugin", "PluginContext", "PluginError"]
