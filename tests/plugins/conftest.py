import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def plugins_root(tmp_path):
    root = tmp_path / "plugins"
    root.mkdir()
    return root


@pytest.fixture(scope="session")
def registry():
    from plugin_models import InterimRegistry, defaults_dir

    return InterimRegistry(defaults_dir())


@pytest.fixture
def models(registry):
    """The real models behind a recorder of the calls plugins make."""
    from plugin_models import RecordingModels

    return RecordingModels(registry)
