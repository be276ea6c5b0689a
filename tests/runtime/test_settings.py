"""Settings: defaults < config file < MOLTBOT_* < CLI flags, with clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from moltbot.settings import Settings, SettingsError


def test_defaults_match_the_documented_contract():
    s = Settings.load(environ={})
    assert (s.host, s.port, s.https_port) == ("0.0.0.0", 8080, 8443)
    assert s.models_dir == Path("./data/models") and s.plugins_dir == Path("./plugins")
    assert s.logs_dir == Path("./data/logs")
    assert not s.tls_enabled and s.all_api_keys() == []


def test_precedence_file_then_environment_then_flags(tmp_path):
    config = tmp_path / "moltbot.toml"
    config.write_text('port = 9000\nlog_level = "debug"\napi_keys = ["from-file"]\nmax_running = 7\n')
    env = {"MOLTBOT_CONFIG": str(config), "MOLTBOT_PORT": "9100", "MOLTBOT_API_KEYS": "a, b"}
    s = Settings.load({"port": "9200"}, environ=env)
    assert s.port == 9200 and s.log_level == "DEBUG" and s.api_keys == ["a", "b"] and s.max_running == 7
    assert Settings.load(environ=env).port == 9100
    json_config = tmp_path / "moltbot.json"
    json_config.write_text(json.dumps({"metrics_require_key": True, "models_dir": "/srv/models"}))
    s = Settings.load(environ={"MOLTBOT_CONFIG": str(json_config)})
    assert s.metrics_require_key is True and s.models_dir == Path("/srv/models")


@pytest.mark.parametrize("env,message", [
    ({"MOLTBOT_PORT": "http"}, "port: 'http' is not a valid int"),
    ({"MOLTBOT_PORT": "70000"}, "port: 70000 is not a TCP port"),
    ({"MOLTBOT_LOG_PROMPTS": "maybe"}, "log_prompts"),
    ({"MOLTBOT_DEVICE": "tpu"}, "device"),
    ({"MOLTBOT_TLS_KEY": "/k.pem"}, "tls_cert and tls_key must be set together"),
    ({"MOLTBOT_CONFIG": "/nonexistent.json"}, "config file /nonexistent.json"),
])
def test_bad_values_name_the_setting(env, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(")):
        Settings.load(environ=env)


def test_unknown_keys_in_a_config_file_are_refused(tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"prot": 1}))
    with pytest.raises(SettingsError, match="unknown setting"):
        Settings.load(environ={"MOLTBOT_CONFIG": str(config)})


def test_cli_reports_bad_settings_clearly_and_documents_them():
    bad = subprocess.run([sys.executable, "-m", "moltbot", "serve", "--port", "nope"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "invalid setting: port" in bad.stderr
    table = subprocess.run([sys.executable, "-m", "moltbot", "settings"], capture_output=True, text=True,
                           timeout=60).stdout
    for field in ("MOLTBOT_PORT", "MOLTBOT_MODELS_DIR", "MOLTBOT_TLS_CERT", "MOLTBOT_API_KEYS"):
        assert f"`{field}`" in table


def test_readme_documents_every_setting():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for env, _, _ in Settings.documentation():
        assert f"`{env}`" in readme, env


def test_serving_path_imports_no_torch_transformers_or_optimum():
    code = ("import sys, moltbot.api.server, moltbot.engine.registry, moltbot.cli; "
            "print(sorted(m for m in ('torch', 'transformers', 'optimum') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr
