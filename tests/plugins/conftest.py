import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def plugins_root(tmp_path):
    root = tmp_path / "plugins"
    root.mkdir()
    return root
