"""sql_assistant against a real SQLite database: the read-only guard, limits, and the model wiring."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from moltbot.plugins.errors import PluginError, PluginInputError
from moltbot.plugins.manager import PluginManager
from plugin_helpers import BUILTIN_PLUGINS, make_app, make_settings, plugin_module

pytestmark = pytest.mark.anyio


def make_shop(path: Path) -> Path:
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT NOT NULL);
        CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES customers(id),
                             total_cents INTEGER NOT NULL, placed_on TEXT NOT NULL);
        CREATE VIEW big_orders AS SELECT * FROM orders WHERE total_cents > 10000;
    """)
    db.executemany("INSERT INTO customers VALUES (?, ?, ?)",
                   [(1, "Ada", "London"), (2, "Grace", "New York"), (3, "Linus", "Helsinki")])
    db.executemany("INSERT INTO orders VALUES (?, ?, ?, ?)",
                   [(i, 1 + i % 3, 1500 * i, f"2026-0{1 + i % 9}-1{i % 10}") for i in range(1, 31)])
    db.commit()
    db.close()
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
async def sql(tmp_path, models, monkeypatch):
    """The shipped plugin (its folder copied so the test can tighten its limits) over a shop database."""
    database = make_shop(tmp_path / "shop.sqlite3")
    monkeypatch.setenv("SQL_ASSISTANT_DATABASE", f"sqlite:///{database}")
    root = tmp_path / "plugins"
    shutil.copytree(BUILTIN_PLUGINS / "sql_assistant", root / "sql_assistant")
    config_path = root / "sql_assistant" / "config.json"
    config = json.loads(config_path.read_text())
    config["settings"].update(max_rows=25, timeout_seconds=0.5)
    config_path.write_text(json.dumps(config))
    manager = PluginManager(make_settings(root, tmp_path), models=models)
    await manager.load_all()
    yield manager, database
    await manager.close()


async def run(manager, **payload):
    return await manager.execute("sql_assistant", payload, request_id="test")


async def test_select_returns_sql_columns_and_rows_within_the_row_limit(sql):
    manager, _ = sql
    result = await run(manager, sql="SELECT name, city FROM customers ORDER BY id;  -- all of them")
    assert result["columns"] == ["name", "city"]
    assert result["rows"] == [["Ada", "London"], ["Grace", "New York"], ["Linus", "Helsinki"]]
    assert result["row_count"] == 3 and result["truncated"] is False
    assert result["sql"] == "SELECT name, city FROM customers ORDER BY id;  -- all of them"  # what ran

    capped = await run(manager, sql="SELECT id FROM orders ORDER BY id")
    assert capped["row_count"] == 25 and capped["truncated"] is True and capped["rows"][-1] == [25]
    fewer = await run(manager, sql="SELECT id FROM orders ORDER BY id", max_rows=5)
    assert fewer["row_count"] == 5
    joined = await run(manager, sql="""
        WITH spend AS (SELECT customer_id, SUM(total_cents) AS cents FROM orders GROUP BY customer_id)
        SELECT c.name, s.cents, replace(c.city, ' ', '_') AS city FROM customers c JOIN spend s ON s.customer_id = c.id
        WHERE c.name <> 'DELETE FROM customers; --' ORDER BY s.cents DESC""")
    assert joined["columns"] == ["name", "cents", "city"] and joined["rows"][0][0] == "Ada"
    assert ["Grace", 217500, "New_York"] in joined["rows"]


# SQLite's own parser and authorizer decide: each write is refused naming what it would do.
WRITES = [
    ("INSERT INTO customers VALUES (9, 'Eve', 'Paris')", "would INSERT"),
    ("UPDATE customers SET city = 'Paris'", "would UPDATE"),
    ("DELETE FROM orders", "would DELETE"),
    ("DROP TABLE customers", "would change the schema"),
    ("CREATE TABLE t (x)", "would change the schema"),
    ("PRAGMA writable_schema = 1", "would PRAGMA"),
    ("ATTACH DATABASE '/tmp/other.db' AS other", "would ATTACH"),
    ("VACUUM INTO '/tmp/copy.db'", "would ATTACH"),
    ("SELECT 1; DROP TABLE customers", "more than one statement"),
    ("SELECT * FROM customers; SELECT * FROM orders;", "more than one statement"),
    ("WITH doomed AS (SELECT id FROM orders) DELETE FROM orders WHERE id IN (SELECT id FROM doomed)",
     "would DELETE"),
    ("WITH x AS (SELECT 1) INSERT INTO customers SELECT 10, 'Mallory', 'Nowhere' FROM x", "would INSERT"),
    ("/* harmless */ ; DELETE FROM orders", "would DELETE"),
    ("", "returns no rows"),
]


@pytest.mark.parametrize("statement, reason", WRITES)
async def test_writes_are_refused_and_the_database_is_unchanged(sql, statement, reason):
    manager, database = sql
    before = digest(database)
    if statement == "":
        with pytest.raises(PluginInputError):  # the schema already wants at least one character
            await run(manager, sql=statement)
        statement = "  ;  "
    with pytest.raises(PluginError) as refused:
        await run(manager, sql=statement)
    assert refused.value.code == "write_refused"
    assert reason in refused.value.message and "only one read-only SELECT statement" in refused.value.message
    assert digest(database) == before


@pytest.mark.parametrize("statement, error", [
    # Not SQLite syntax at all (a text check used to call these writes): SQLite's parser says so.
    ("SELECT * INTO copy FROM customers", 'near "INTO": syntax error'),
    ("SELECT * FROM customers FOR UPDATE", 'near "UPDATE": syntax error'),
    ("SELECT 'unterminated", "unrecognized token"),
])
async def test_what_sqlite_cannot_parse_is_a_clear_sql_error(sql, statement, error):
    manager, database = sql
    before = digest(database)
    with pytest.raises(PluginError) as bad:
        await run(manager, sql=statement)
    assert bad.value.code == "sql_error" and error in bad.value.message
    assert digest(database) == before


async def test_the_connection_itself_refuses_writes_that_pass_the_text_check(sql):
    """The guard function itself, without the plugin: the read-only connection and authorizer stop writes."""
    manager, database = sql
    guard = plugin_module(manager, "sql_assistant", "guard")
    before = digest(database)
    for statement in ("DELETE FROM orders", "INSERT INTO customers VALUES (9, 'Eve', 'Paris')",
                      "CREATE TABLE t (x)", "PRAGMA journal_mode = DELETE", "ATTACH DATABASE ':memory:' AS m"):
        with pytest.raises(PluginError) as refused:
            guard.sqlite_run(database, statement, 10, 1.0)
        assert refused.value.code == "write_refused", statement
    assert digest(database) == before
    assert guard.sqlite_run(database, "SELECT COUNT(*) FROM big_orders", 10, 1.0).rows == [[24]]


async def test_slow_queries_stop_at_the_time_limit_and_bad_sql_is_reported(sql):
    manager, _ = sql
    with pytest.raises(PluginError, match="longer than 0.5 s") as slow:
        await run(manager, sql="WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) "
                               "SELECT COUNT(*) FROM n")
    assert slow.value.code == "query_timeout"
    with pytest.raises(PluginError, match="no such table: invoices") as missing:
        await run(manager, sql="SELECT * FROM invoices")
    assert missing.value.code == "sql_error"


async def test_a_missing_database_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SQL_ASSISTANT_DATABASE", str(tmp_path / "absent.sqlite3"))
    manager = PluginManager(make_settings(BUILTIN_PLUGINS, tmp_path))
    await manager.reload(["sql_assistant"])
    with pytest.raises(PluginError, match="absent.sqlite3 does not exist"):
        await run(manager, sql="SELECT 1")
    await manager.close()


async def test_sql_is_found_in_model_replies(sql):
    extract = plugin_module(sql[0], "sql_assistant", "guard").extract_sql
    assert extract("Here you go:\n```sql\nSELECT name FROM customers;\n```\nDone.") == "SELECT name FROM customers;"
    assert extract("```\nselect 1\n```") == "select 1"
    assert extract("The query is SELECT COUNT(*) FROM orders") == "SELECT COUNT(*) FROM orders"
    assert extract("I cannot help with that.") is None
    with_clause = "with totals AS (SELECT 1) SELECT * FROM totals"
    assert extract(f"Use: {with_clause}") == with_clause


async def test_question_prompts_the_chat_model_with_the_schema(sql, models):
    """The default chat model's text is meaningless, so this checks the wiring: the prompt carries the schema and
    the question, the model is called once, and its reply goes through the same guard as any SQL."""
    manager, database = sql
    app = make_app(manager)
    before = digest(database)
    _, reply = await app.asgi_client.post("/v1/plugins/sql_assistant/execute",
                                          json={"question": "Which customer spent the most?"})
    [call] = models.chat_calls
    system, user = call["messages"]
    assert "SQLite database" in system["content"]
    for table in ("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT NOT NULL);",
                  "CREATE TABLE orders", "CREATE VIEW big_orders"):
        assert table in system["content"]
    assert user == {"role": "user", "content": "Which customer spent the most?"}
    assert call["temperature"] == 0.0 and call["max_tokens"] == 256
    model_text = models.chat_replies[0]["content"]
    if reply.status == 200:
        result = reply.json["result"]
        assert result["sql"] and result["question"] == "Which customer spent the most?"
        assert set(result) >= {"columns", "rows", "row_count", "truncated", "model"}
    else:
        assert reply.status == 422, reply.body
        assert reply.json["error"]["code"] in {"no_sql", "write_refused", "sql_error"}
        if reply.json["error"]["code"] == "no_sql":
            assert model_text[:50] in reply.json["error"]["message"] or "\\" in reply.json["error"]["message"]
    assert digest(database) == before

    _, reply = await app.asgi_client.post("/v1/plugins/sql_assistant/execute", json={"question": "x", "sql": "y"})
    assert reply.status == 400
