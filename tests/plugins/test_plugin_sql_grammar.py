"""sql_assistant's grammar: every query it admits parses and passes the guard, sampled on the random test model
(tiny-chat, random weights: any token is possible, so the grammar's mask does all the work)."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import sqlite3
from pathlib import Path

import pytest

from moltbot.plugins.errors import PluginError
from moltbot.plugins.manager import PluginManager
from plugin_helpers import BUILTIN_PLUGINS, make_settings, plugin_module

pytestmark = pytest.mark.anyio
SAMPLES = 60


def make_awkward_shop(path: Path) -> Path:
    """A shop whose names need care: keywords, upper case and spaces, a view, a table joined to itself by name."""
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT NOT NULL);
        CREATE TABLE "order" (id INTEGER PRIMARY KEY, "user" INTEGER, "Total Cents" INTEGER, "select" TEXT,
                              placed_on TEXT);
        CREATE VIEW big_orders AS SELECT id, "Total Cents" FROM "order" WHERE "Total Cents" > 10000;
        INSERT INTO customers VALUES (1, 'Ada', 'London'), (2, 'Grace', 'New York');
        INSERT INTO "order" VALUES (1, 1, 1500, 'x', '2026-01-10'), (2, 2, 30000, 'y', '2026-02-11');
    """)
    db.commit()
    db.close()
    return path


async def load(tmp_path, models, monkeypatch, **settings) -> tuple[PluginManager, Path]:
    database = make_awkward_shop(tmp_path / "shop.sqlite3")
    monkeypatch.setenv("SQL_ASSISTANT_DATABASE", f"sqlite:///{database}")
    root = tmp_path / "plugins"
    shutil.copytree(BUILTIN_PLUGINS / "sql_assistant", root / "sql_assistant")
    config_path = root / "sql_assistant" / "config.json"
    config = json.loads(config_path.read_text())
    config["settings"].update(settings)
    config_path.write_text(json.dumps(config))
    manager = PluginManager(make_settings(root, tmp_path), models=models)
    await manager.load_all()
    return manager, database


async def test_every_sampled_query_parses_and_passes_the_guard(tmp_path, models, registry, monkeypatch):
    manager, database = await load(tmp_path, models, monkeypatch)
    try:
        grammar = plugin_module(manager, "sql_assistant", "grammar")
        guard = plugin_module(manager, "sql_assistant", "guard")
        tables = guard.sqlite_tables(database)
        assert [t[1] for t in tables] == ["customers", "order", "big_orders"]
        text = grammar.sql_grammar(tables)
        assert grammar.sql_grammar(tables) is text  # built once per schema
        queries = []
        for seed in range(SAMPLES):
            messages = [{"role": "user", "content": f"Write query {seed} {seed * 7919 % 1000}."}]
            reply = await registry.chat(messages, max_tokens=400, temperature=2.0, seed=seed,
                                        structured_outputs={"grammar": text})
            assert reply["finish_reason"] == "stop", reply  # the grammar's bounds end every query
            sql = guard.extract_sql(reply["content"])
            assert sql is not None, reply["content"]
            guard.check_postgres(sql)  # PostgreSQL's parser and the allow-lists: raises on anything else
            result = guard.sqlite_run(database, sql, 50, 5.0)  # SQLite's parser and the authorizer
            assert result.columns, sql
            queries.append(sql)
        assert len(set(queries)) > SAMPLES // 2  # the sampler explored the grammar, not one query
        assert any(re.search(r"\sJOIN ", q) for q in queries) and any('"order"' in q for q in queries)
        assert any("\n" in q for q in queries) and any(" AS " in q for q in queries)
    finally:
        await manager.close()


async def test_the_plugin_asks_under_the_grammar_unless_turned_off(tmp_path, models, monkeypatch):
    manager, _ = await load(tmp_path, models, monkeypatch)
    try:
        result = await manager.execute("sql_assistant", {"question": "How many customers?"}, request_id="t")
        grammar = models.chat_calls[-1]["structured_outputs"]["grammar"]
        assert '"customers"' in grammar and '"\\"Total Cents\\""' in grammar
        assert result["sql"].startswith("SELECT ") and result["columns"]  # random weights, still a query that ran
    finally:
        await manager.close()
    (tmp_path / "off").mkdir()
    manager, _ = await load(tmp_path / "off", models, monkeypatch, constrained=False)
    try:
        with contextlib.suppress(PluginError):  # free text from random weights is seldom a query that runs
            await manager.execute("sql_assistant", {"question": "How many customers?"}, request_id="t")
        assert "structured_outputs" not in models.chat_calls[-1]
    finally:
        await manager.close()



async def test_a_large_schema_gets_a_bounded_grammar_or_none(tmp_path, models, registry, monkeypatch):
    """Joins go first, then the grammar itself, rather than pass the size llguidance compiles quickly."""
    manager, _ = await load(tmp_path, models, monkeypatch)
    try:
        grammar = plugin_module(manager, "sql_assistant", "grammar")

        def schema(tables: int, columns: int) -> tuple:
            return tuple((None, f"t{i}", tuple(f"c{i}_{j}" for j in range(columns))) for i in range(tables))

        assert "JOIN" in grammar.sql_grammar(schema(8, 10))
        wide = grammar.sql_grammar(schema(12, 20))
        assert "JOIN" not in wide and len(wide) <= grammar.MAX_GRAMMAR_CHARS
        assert grammar.sql_grammar(schema(200, 30)) is None
        reply = await registry.chat([{"role": "user", "content": "q"}], max_tokens=400, temperature=1.0, seed=1,
                                    structured_outputs={"grammar": wide})  # it compiles and admits queries
        assert reply["finish_reason"] == "stop" and re.search(r"\sFROM t\d", reply["content"])
    finally:
        await manager.close()
