"""sql_assistant's resource limits and function allow-list on a real SQLite database (issue #16, items 1 and 2)."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from moltbot.plugins.errors import PluginError
from moltbot.plugins.manager import PluginManager
from plugin_helpers import BUILTIN_PLUGINS, make_settings, plugin_module
from test_plugin_sql_assistant import make_shop

pytestmark = pytest.mark.anyio


@pytest.fixture
async def sql(tmp_path, models, monkeypatch):
    database = make_shop(tmp_path / "shop.sqlite3")
    monkeypatch.setenv("SQL_ASSISTANT_DATABASE", f"sqlite:///{database}")
    root = tmp_path / "plugins"
    shutil.copytree(BUILTIN_PLUGINS / "sql_assistant", root / "sql_assistant")
    config_path = root / "sql_assistant" / "config.json"
    config = json.loads(config_path.read_text())
    config["settings"].update(timeout_seconds=1, max_result_bytes=20_000)
    config_path.write_text(json.dumps(config))
    manager = PluginManager(make_settings(root, tmp_path), models=models)
    await manager.load_all()
    yield manager, database
    await manager.close()


async def run(manager, sql):
    return await manager.execute("sql_assistant", {"sql": sql}, request_id="test")


# A string doubled until it passes the cap (2^20 bytes > 1 000 000).
DOUBLED = ("WITH RECURSIVE s(v, n) AS (SELECT 'x', 0 UNION ALL SELECT v || v, n + 1 FROM s WHERE n < 25) "
           "SELECT max(length(v)) FROM s")
# 900 000 characters: under the cap.
BIG = "(WITH RECURSIVE s(v, n) AS (SELECT 'x', 0 UNION ALL SELECT v || v, n + 1 FROM s WHERE n < 19) " \
      "SELECT substr(max(v), 1, 900000) FROM s)"


@pytest.mark.parametrize("statement", [
    DOUBLED,
    f"SELECT length(replace({BIG}, 'x', 'xyz'))",
    f"SELECT length({BIG} || {BIG})",
])
async def test_no_value_can_grow_past_the_value_cap(sql, statement):
    manager, _ = sql
    started = time.monotonic()
    with pytest.raises(PluginError) as big:
        await run(manager, statement)
    assert big.value.code == "value_too_large"
    assert "1000000 bytes" in big.value.message and "max_value_bytes" in big.value.message
    assert time.monotonic() - started < 2


async def test_a_result_over_the_result_cap_is_refused_naming_the_cap(sql):
    manager, _ = sql
    # 30 rows of 900 characters: under the value cap, over the 20 000-byte result cap set above.
    with pytest.raises(PluginError) as big:
        await run(manager, f"SELECT substr({BIG}, 1, 900) FROM orders")
    assert big.value.code == "result_too_large"
    assert "20000 bytes" in big.value.message and "max_result_bytes" in big.value.message
    small = await run(manager, f"SELECT substr({BIG}, 1, 100) FROM orders LIMIT 5")
    assert small["row_count"] == 5


async def test_the_time_limit_holds_within_a_second(sql):
    manager, _ = sql
    for statement in (
        "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT COUNT(*) FROM n",
        # Each step is big (values near the cap): few steps per second, so the clock is read often enough.
        "WITH RECURSIVE s(v) AS (SELECT 'x' UNION ALL SELECT substr(v || 'xy', 1, 900000) FROM s) "
        "SELECT SUM(length(v)) FROM s",
    ):
        started = time.monotonic()
        with pytest.raises(PluginError) as slow:
            await run(manager, statement)
        elapsed = time.monotonic() - started
        assert slow.value.code == "query_timeout", statement
        assert elapsed < 2.0, (statement, elapsed)  # a 1 s limit, kept within a second


@pytest.mark.parametrize("statement, function", [
    ("SELECT fts3_tokenizer('simple')", "fts3_tokenizer"),
    ("SELECT length(printf('%.*c', 900000000, 'x'))", "printf"),
    ("SELECT zeroblob(4000000)", "zeroblob"),
    ("SELECT randomblob(2000000)", "randomblob"),
    ("SELECT fts3_tokenizer('simple', x'0000000000000000')", "fts3_tokenizer"),
    ("SELECT load_extension('/tmp/evil.so')", "load_extension"),
    ("SELECT name FROM customers WHERE name = sqlite_compileoption_get(0)", "sqlite_compileoption_get"),
    ("SELECT upper(name), last_insert_rowid() FROM customers", "last_insert_rowid"),
])
async def test_functions_off_the_list_are_refused_by_name(sql, statement, function):
    manager, _ = sql
    with pytest.raises(PluginError) as refused:
        await run(manager, statement)
    assert refused.value.code == "function_refused"
    assert f"{function}()" in refused.value.message


async def test_the_functions_an_analyst_uses_are_allowed(sql):
    manager, _ = sql
    result = await run(manager, """
        SELECT upper(c.name), lower(c.city), length(c.name), substr(c.name, 1, 2), coalesce(NULL, 1),
               round(avg(o.total_cents) / 100.0, 2), count(*), sum(o.total_cents), min(o.placed_on),
               max(o.placed_on), group_concat(o.id), date(max(o.placed_on)), strftime('%Y', min(o.placed_on)),
               '{"a": 7}' ->> '$.a', json_array_length('[1, 2]'), abs(-3), typeof(1.5),
               iif(1, 'y', 'n'), ifnull(NULL, 'z'), instr('abc', 'c'), replace('aa', 'a', 'b'),
               row_number() OVER (ORDER BY c.name)
        FROM customers c JOIN orders o ON o.customer_id = c.id
        WHERE c.name LIKE 'A%' OR c.name GLOB 'G*'
        GROUP BY c.id ORDER BY c.name""")
    assert result["row_count"] == 2
    assert result["rows"][0][:3] == ["ADA", "london", 3]
    assert result["rows"][0][13:16] == [7, 2, 3]


async def test_the_list_never_holds_the_dangerous_functions(sql):
    guard = plugin_module(sql[0], "sql_assistant", "guard")
    for name in ("load_extension", "fts3_tokenizer", "readfile", "writefile", "edit", "pg_read_file", "dblink"):
        assert name not in guard.SQLITE_FUNCTIONS | guard.POSTGRES_FUNCTIONS


async def test_the_guard_function_is_bounded_without_the_manager(sql):
    manager, database = sql
    guard = plugin_module(manager, "sql_assistant", "guard")
    with pytest.raises(PluginError) as big:
        guard.sqlite_run(database, f"SELECT substr({BIG}, 1, 2000)", 10, 1.0, max_value_bytes=1000)
    assert big.value.code == "value_too_large"
