"""Fixtures of the plugin tests: a plugins folder per test and the service's real model registry."""

import asyncio

import pytest

from plugin_models import RecordingModels, real_registry


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def plugins_root(tmp_path):
    root = tmp_path / "plugins"
    root.mkdir()
    return root


@pytest.fixture(scope="session")
def registry(tmp_path_factory, defaults_dir):
    """The model registry over the embedded defaults (`defaults_dir` comes from tests/conftest.py)."""
    registry = real_registry(tmp_path_factory.mktemp("models"), defaults_dir)
    yield registry
    asyncio.run(registry.close())


@pytest.fixture
def models(registry):
    """The real models behind a recorder of the calls plugins make."""
    return RecordingModels(registry)
