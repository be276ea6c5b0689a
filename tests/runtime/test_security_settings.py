"""Admin key settings (issue #16, item 6): the file variant, and a key that is both kinds refused at start."""

from __future__ import annotations

import pytest

from moltbot.settings import Settings, SettingsError


def test_admin_keys_come_inline_and_from_a_file(tmp_path):
    keys_file = tmp_path / "admin-keys"
    keys_file.write_text("# the operators\nsk-admin-2\n\n")
    settings = Settings.load(environ={"MOLTBOT_API_KEYS": "sk-user", "MOLTBOT_ADMIN_API_KEYS": "sk-admin-1",
                                      "MOLTBOT_ADMIN_API_KEYS_FILE": str(keys_file)})
    assert settings.all_admin_api_keys() == ["sk-admin-1", "sk-admin-2"]
    assert settings.all_api_keys() == ["sk-user"]


@pytest.mark.parametrize("environ, message", [
    ({"MOLTBOT_API_KEYS": "sk-same", "MOLTBOT_ADMIN_API_KEYS": "sk-same"}, "both in api_keys and admin_api_keys"),
    ({"MOLTBOT_ADMIN_API_KEYS_FILE": "/nonexistent/admin-keys"}, "admin_api_keys_file: cannot read"),
    ({"MOLTBOT_PLUGIN_ISOLATION": "container"}, "plugin_isolation: 'container' is not process or thread"),
])
def test_bad_admin_key_settings_are_refused(environ, message):
    with pytest.raises(SettingsError, match=message):
        Settings.load(environ=environ)


def test_an_admin_keys_file_without_a_key_is_refused(tmp_path):
    empty = tmp_path / "admin-keys"
    empty.write_text("# no key yet\n")
    with pytest.raises(SettingsError, match="admin_api_keys / admin_api_keys_file are set but hold no key"):
        Settings.load(environ={"MOLTBOT_ADMIN_API_KEYS_FILE": str(empty)})
