"""A service chat model takes no grammar (its upstream would not honour structured_outputs): sql_assistant and
knowledge_base, constrained, ask it again without one. The service backend is the real one; its upstream answers
through httpx's MockTransport, as in tests/runtime/test_backends.py."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3

import httpx
import pytest

from moltbot.engine.registry import ModelRegistry
from moltbot.plugins.manager import PluginManager
from moltbot.settings import Settings
from plugin_helpers import BUILTIN_PLUGINS, make_settings
from tests.runtime.test_backends import REPLY, backend_answering

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def upstream(tmp_path_factory, defaults_dir):
    """The embedded defaults (the knowledge base's embeddings) and `upstream`, a service chat model; the payloads
    its upstream got."""
    models = tmp_path_factory.mktemp("models")
    registry = ModelRegistry(Settings(models_dir=models, defaults_dir=defaults_dir, default_models="on",
                                      plugins_dir=models).validate())
    registry.load_all()
    reply = {**REPLY, "choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": "```sql\nSELECT COUNT(*) FROM customers\n```"}}]}
    backend, sent = backend_answering(lambda payload: httpx.Response(200, json=reply))
    registry.models["upstream"] = backend
    yield registry, sent
    asyncio.run(registry.close())


async def manager_for(tmp_path, registry, plugin: str, **settings) -> PluginManager:
    root = tmp_path / "plugins"
    shutil.copytree(BUILTIN_PLUGINS / plugin, root / plugin)
    config = json.loads((root / plugin / "config.json").read_text())
    config["settings"].update(chat_model="upstream", **settings)
    (root / plugin / "config.json").write_text(json.dumps(config))
    manager = PluginManager(make_settings(root, tmp_path), models=registry)
    await manager.load_all()
    return manager


async def test_sql_assistant_asks_a_service_model_without_the_grammar(tmp_path, upstream):
    registry, sent = upstream
    database = tmp_path / "shop.sqlite3"
    with sqlite3.connect(database) as db:
        db.executescript("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT); "
                         "INSERT INTO customers VALUES (1, 'Ada'), (2, 'Grace');")
    db.close()
    manager = await manager_for(tmp_path, registry, "sql_assistant", database=f"sqlite:///{database}")
    try:
        before = len(sent)
        result = await manager.execute("sql_assistant", {"question": "How many customers?"}, request_id="t")
        assert result["rows"] == [[2]] and result["sql"] == "SELECT COUNT(*) FROM customers"
        assert len(sent) == before + 1 and "structured_outputs" not in sent[-1]  # refused before it was sent
    finally:
        await manager.close()


async def test_knowledge_base_asks_a_service_model_without_the_grammar(tmp_path, upstream):
    registry, sent = upstream
    manager = await manager_for(tmp_path, registry, "knowledge_base")
    try:
        documents = manager.data_root() / "knowledge_base" / "documents"
        documents.mkdir(parents=True)
        (documents / "refunds.md").write_text("Refunds are paid within 14 days.")
        await manager.execute("knowledge_base", {"action": "ingest"}, request_id="t")
        before = len(sent)
        result = await manager.execute("knowledge_base", {"action": "answer", "query": "How long do refunds take?"},
                                       request_id="t")
        assert result["answer"].startswith("```sql") and len(result["citations"]) == 1  # the upstream's reply
        assert len(sent) == before + 1 and "structured_outputs" not in sent[-1]
    finally:
        await manager.close()
