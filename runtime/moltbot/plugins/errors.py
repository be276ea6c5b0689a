"""Errors of the plugin system, with OpenAI-style error fields (type, param, code) but no HTTP status: the API
layer maps each to its status (api/errors.py)."""

from __future__ import annotations


class PluginAPIError(Exception):
    """Base of the errors a plugin call can end with; the API turns them into JSON errors."""

    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class PluginError(PluginAPIError):
    """Raise this from a plugin for an expected failure the caller should see (e.g. a refused query).

    The message is returned to the client as is (HTTP 422), so it must not contain secrets.
    """

    type = "plugin_error"
    code = "plugin_error"


class PluginNotFound(PluginAPIError):
    type = "not_found_error"
    code = "plugin_not_found"


class PluginUnavailable(PluginAPIError):
    """The plugin exists but cannot run: disabled, or its last load failed."""

    type = "invalid_request_error"
    code = "plugin_unavailable"


class PluginNotATool(PluginAPIError):
    """The plugin runs, but its config.json says `"tool": false`: it is never offered to a model."""

    type = "invalid_request_error"
    code = "plugin_not_a_tool"


class PluginForbidden(PluginAPIError):
    """The call changes server state (config.json "admin") and the caller holds no admin key."""

    type = "permission_error"
    code = "admin_key_required"


class PluginInputError(PluginAPIError):
    type = "invalid_request_error"
    code = "invalid_plugin_input"


class PluginTimeout(PluginAPIError):
    type = "timeout_error"
    code = "plugin_timeout"


class PluginFailed(PluginAPIError):
    """The plugin raised an unexpected exception; details are in the server log only."""

    type = "server_error"
    code = "plugin_failed"


class PluginLoadError(Exception):
    """A plugin folder could not be turned into a running plugin; the message says why."""
