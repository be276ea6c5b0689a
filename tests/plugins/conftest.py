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
def registry(tmp_path_factory):
    import asyncio

    from plugin_models import real_registry

    registry = real_registry(tmp_path_factory.mktemp("models"))
    yield registry
    asyncio.run(registry.close())


@pytest.fixture
def models(registry):
    """The real models behind a recorder of the calls plugins make."""
    from plugin_models import RecordingModels

    return RecordingModels(registry)
