"""sql_assistant against a real PostgreSQL server (Debian's postgresql, a throwaway cluster on 127.0.0.1)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from moltbot.plugins.errors import PluginError
from moltbot.plugins.manager import PluginManager
from plugin_helpers import BUILTIN_PLUGINS, make_settings, plugin_module

pytestmark = pytest.mark.anyio


def postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    assert found, "PostgreSQL is not installed: run `make plugins-system-deps` (apt-get install postgresql)"
    return Path(found[-1]).parent


def as_postgres(*command: str) -> None:
    """PostgreSQL refuses to run as root: run its tools as the postgres user when we are root."""
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    result = subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]


# Roles the plugin must refuse to run queries as, and what gives each its power.
ROLES_WITH_POWERS = {
    "reads_files": "GRANT pg_read_server_files TO {role}",
    "writes_files": "GRANT pg_write_server_files TO {role}",
    "runs_programs": "GRANT pg_execute_server_program TO {role}",
    "signals": "GRANT pg_signal_backend TO {role}",
    "links": "GRANT EXECUTE ON FUNCTION dblink_exec(text, text) TO {role}",
    # A member that does not inherit still reaches a superuser role's powers with SET ROLE.
    "in_super_role": "CREATE ROLE boss SUPERUSER NOLOGIN; ALTER ROLE {role} NOINHERIT; GRANT boss TO {role}",
    # EXECUTE granted on one overload of a file function, not only the one-argument form.
    "reads_one_file": "GRANT EXECUTE ON FUNCTION pg_read_file(text, bigint, bigint) TO {role}",
    "lists_dirs": "GRANT EXECUTE ON FUNCTION pg_ls_dir(text) TO {role}",
    "imports": "GRANT EXECUTE ON FUNCTION lo_import(text, oid) TO {role}",
    "exports": "GRANT EXECUTE ON FUNCTION lo_export(oid, text) TO {role}",
    # issue #22: roles that see other sessions' queries, every setting or every table
    "monitors": "GRANT pg_monitor TO {role}",
    "reads_stats": "GRANT pg_read_all_stats TO {role}",
    "reads_settings": "GRANT pg_read_all_settings TO {role}",
    "reads_all_data": "GRANT pg_read_all_data TO {role}",
}


@pytest.fixture(scope="module")
def postgres_url():
    bindir = postgres_bin()
    home = Path(tempfile.mkdtemp(prefix="moltbot-pg-"))
    if os.geteuid() == 0:
        shutil.chown(home, "postgres", "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = home / "data"
    as_postgres(str(bindir / "initdb"), "-D", str(data), "-U", "owner", "-A", "trust", "--no-sync")
    as_postgres(str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(home / "log"), "start", "-o",
                f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c fsync=off")
    try:
        admin = f"postgresql://owner@127.0.0.1:{port}/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE shop")
        url = f"postgresql://owner@127.0.0.1:{port}/shop"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE customers (id integer PRIMARY KEY, name text NOT NULL, city text NOT NULL)")
            conn.execute("INSERT INTO customers VALUES (1, 'Ada', 'London'), (2, 'Grace', 'New York'), "
                         "(3, 'Linus', 'Helsinki')")
            conn.execute("CREATE TABLE orders (id integer PRIMARY KEY, customer_id integer REFERENCES customers, "
                         "total numeric(10, 2) NOT NULL)")
            conn.execute("INSERT INTO orders SELECT i, 1 + i % 3, i * 15 FROM generate_series(1, 30) AS i")
            # dblink installed, as on many servers; its functions are revoked from PUBLIC as they should be.
            conn.execute("CREATE EXTENSION dblink")
            conn.execute("REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA public FROM PUBLIC")
            # The plugin's role: it could even write (read-only must hold anyway), but has no powers beyond.
            conn.execute("CREATE ROLE analyst LOGIN")
            conn.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO analyst")
            conn.execute("GRANT CREATE ON SCHEMA public TO analyst")
            # PostgreSQL 15: lets the plugin set its temp_file_limit (otherwise only a superuser may)
            conn.execute("GRANT SET ON PARAMETER temp_file_limit TO analyst")
            for role, power in ROLES_WITH_POWERS.items():
                conn.execute(f"CREATE ROLE {role} LOGIN")
                conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
                for statement in power.format(role=role).split(";"):
                    conn.execute(statement)
        yield url.replace("owner@", "analyst@")
    finally:
        as_postgres(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
async def pg_sql(tmp_path, models, monkeypatch, postgres_url):
    # A role that could write: read-only must hold anyway.
    monkeypatch.setenv("SQL_ASSISTANT_DATABASE", postgres_url)
    manager = PluginManager(make_settings(BUILTIN_PLUGINS, tmp_path), models=models)
    await manager.reload(["sql_assistant"])
    yield manager
    await manager.close()


def customer_count(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT COUNT(*) FROM customers").fetchone()[0]


async def test_postgres_select_rows_types_and_limits(pg_sql):
    result = await pg_sql.execute("sql_assistant", {"sql": "SELECT name, city FROM customers ORDER BY id"},
                                  request_id="t")
    assert result["columns"] == ["name", "city"] and result["rows"][0] == ["Ada", "London"]
    totals = await pg_sql.execute("sql_assistant", {"sql": "SELECT id, total FROM orders ORDER BY id", "max_rows": 4},
                                  request_id="t")
    assert totals["rows"] == [[1, "15.00"], [2, "30.00"], [3, "45.00"], [4, "60.00"]] and totals["truncated"] is True


async def test_postgres_writes_are_refused_by_the_read_only_transaction(pg_sql, postgres_url):
    manager = pg_sql
    guard = plugin_module(manager, "sql_assistant", "guard")
    with pytest.raises(PluginError, match="more than one statement"):
        await manager.execute("sql_assistant", {"sql": "SELECT 1; DELETE FROM customers"}, request_id="t")
    # The guard function itself refuses what is not a SELECT (and the read-only transaction would).
    for statement in ("DELETE FROM customers", "CREATE TABLE t (x int)",
                      "WITH gone AS (DELETE FROM customers RETURNING id) SELECT * FROM gone",
                      "SELECT * INTO copy_of_customers FROM customers"):
        with pytest.raises(PluginError) as refused:
            guard.postgres_run(postgres_url, statement, 10, 5.0)
        assert refused.value.code == "write_refused", statement
    assert customer_count(postgres_url) == 3


async def test_postgres_time_limit_schema_and_model_wiring(pg_sql, models):
    guard = plugin_module(pg_sql, "sql_assistant", "guard")
    with pytest.raises(PluginError, match="longer than 0.5 s") as slow:
        guard.postgres_run(os.environ["SQL_ASSISTANT_DATABASE"],
                           "SELECT count(*) FROM generate_series(1, 2000000000)", 10, 0.5)
    assert slow.value.code == "query_timeout"
    try:
        await pg_sql.execute("sql_assistant", {"question": "How many orders does Ada have?"}, request_id="t")
    except PluginError as exc:  # the default chat model writes noise; only a guarded failure is acceptable
        assert exc.code in {"no_sql", "write_refused", "sql_error"}
    [call] = models.chat_calls
    system = call["messages"][0]["content"]
    assert "PostgreSQL database" in system
    assert "CREATE TABLE customers (id integer, name text, city text);" in system
    assert "CREATE TABLE orders (id integer, customer_id integer, total numeric);" in system
    # The grammar the model wrote under names the same tables and columns (public's bare).
    assert guard.postgres_tables(os.environ["SQL_ASSISTANT_DATABASE"]) == (
        (None, "customers", ("id", "name", "city")), (None, "orders", ("id", "customer_id", "total")))
    grammar = call["structured_outputs"]["grammar"]
    assert 'SEP "FROM " "customers" SEP "JOIN " "orders"' in grammar and '"orders.customer_id"' in grammar


# ---- issue #16, item 3: roles with powers beyond reading, and functions off the list

@pytest.mark.parametrize("role, power", [
    ("owner", "is a superuser"),
    ("reads_files", "pg_read_server_files"),
    ("writes_files", "pg_write_server_files"),
    ("runs_programs", "pg_execute_server_program"),
    ("signals", "pg_signal_backend"),
    ("links", "can execute dblink functions"),
    ("in_super_role", "is a member of the superuser role boss"),
    ("reads_one_file", "can execute pg_read_file"),
    ("lists_dirs", "can execute pg_ls_dir"),
    ("imports", "can execute lo_import"),
    ("exports", "can execute lo_export"),
    ("monitors", "is a member of pg_monitor"),
    ("reads_stats", "is a member of pg_read_all_stats"),
    ("reads_settings", "is a member of pg_read_all_settings"),
    ("reads_all_data", "is a member of pg_read_all_data"),
])
async def test_postgres_roles_with_powers_are_refused_at_connect(pg_sql, postgres_url, role, power):
    guard = plugin_module(pg_sql, "sql_assistant", "guard")
    url = postgres_url.replace("analyst@", f"{role}@")
    with pytest.raises(PluginError) as refused:
        guard.postgres_run(url, "SELECT count(*) FROM customers", 10, 5.0)
    assert refused.value.code == "role_refused"
    assert power in refused.value.message
    with pytest.raises(PluginError) as schema_refused:
        guard.postgres_schema(url, 1000)
    assert schema_refused.value.code == "role_refused"


@pytest.mark.parametrize("statement, function", [
    # DDL inside a string literal passes a text check; the function itself is what is refused.
    ("SELECT dblink_exec('dbname=shop user=owner', 'DROP TABLE customers')", "dblink_exec"),
    ("SELECT * FROM dblink('dbname=shop user=owner', 'SELECT 1') AS t(x int)", "dblink"),
    ("SELECT pg_read_file('/etc/passwd')", "pg_read_file"),
    ('SELECT "pg_read_file"(\'/etc/passwd\')', "pg_read_file"),
    ("SELECT pg_catalog.pg_ls_dir('.')", "pg_ls_dir"),
    ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity", "pg_terminate_backend"),
    ("SELECT lo_import('/etc/passwd')", "lo_import"),
    ("SELECT pg_sleep(10)", "pg_sleep"),
    ("SELECT name FROM customers WHERE id IN (SELECT current_setting('x')::int)", "current_setting"),
    # issue #16 review: calls the text scan used to miss. A call after a comma and before AS is not a WITH list:
    ("SELECT 1, pg_read_file('/etc/passwd') AS x", "pg_read_file"),
    ("SELECT * FROM customers, pg_ls_dir('.') AS d", "pg_ls_dir"),
    ("SELECT * FROM customers c, dblink(c.name, c.city) AS (x int)", "dblink"),
    ("WITH t(a) AS (SELECT 1), u(b) AS (SELECT 2) SELECT a, pg_sleep(0.1) AS z FROM t, u", "pg_sleep"),
    # `[` is an array subscript on PostgreSQL, not a quote:
    ("SELECT ARRAY[pg_sleep(0.1)]", "pg_sleep"),
    ("SELECT (ARRAY[1])[pg_backend_pid()]", "pg_backend_pid"),
    # $x$ inside an identifier is no dollar quote (nor after a non-ASCII letter, which identifiers take):
    ("SELECT 1 AS a$x$, pg_sleep(0.1), 1 AS b$x$", "pg_sleep"),
    ("SELECT 1 AS é$x$, pg_sleep(0.1), 1 AS b$x$", "pg_sleep"),
    # E'' strings take backslash escapes; comments nest:
    ("SELECT E'\\'', pg_sleep(0.1) --'", "pg_sleep"),
    ("SELECT 1 /* /* */ ' */, pg_sleep(0.1) --'", "pg_sleep"),
    # a schema other than pg_catalog: the function is not the built-in one of that name
    ("SELECT public.upper(name) FROM customers", "public.upper"),
    # builds a value of up to 1 GB in one call
    ("SELECT lpad('x', 100000000, 'y')", "lpad"),
])
async def test_postgres_functions_off_the_list_are_refused_by_name(pg_sql, postgres_url, statement, function):
    with pytest.raises(PluginError) as refused:
        await pg_sql.execute("sql_assistant", {"sql": statement}, request_id="t")
    assert refused.value.code == "function_refused"
    assert f"{function}()" in refused.value.message
    assert customer_count(postgres_url) == 3


async def test_postgres_the_functions_an_analyst_uses_are_allowed(pg_sql):
    result = await pg_sql.execute("sql_assistant", {"sql": """
        WITH per_customer(customer_id, spent) AS (SELECT customer_id, sum(total) FROM orders GROUP BY customer_id)
        SELECT upper(c.name), CAST(p.spent AS numeric(10, 2)), round(avg(p.spent) OVER (), 2),
               date_trunc('day', now()) <= now(), coalesce(NULL, 'x'), extract(year FROM DATE '2026-05-01'),
               to_char(DATE '2026-05-01', 'YYYY-MM'), string_agg(c.city, ',') OVER (), length(c.name)
        FROM per_customer p JOIN customers c ON c.id = p.customer_id
        WHERE c.name IN ('Ada', 'Grace') AND EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.id)
        ORDER BY c.name"""}, request_id="t")
    assert result["row_count"] == 2
    grouped = await pg_sql.execute("sql_assistant", {"sql": "SELECT city, count(*) FROM customers "
                                                            "GROUP BY GROUPING SETS ((city), ()) ORDER BY 1"},
                                   request_id="t")
    assert grouped["row_count"] == 4
    # Type modifiers after ::, arrays, dollar quotes, E'' strings and identifiers with $ are not calls.
    typed = await pg_sql.execute("sql_assistant", {"sql": """
        WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t WHERE n < 3) SEARCH DEPTH FIRST BY n SET ord,
             u(m) AS MATERIALIZED (SELECT 2)
        SELECT n::bit(3)::text, CAST(n AS numeric(4, 1)), (ARRAY[n, m])[1], $q$it's (f(x)$q$, E'a\\'b(',
               1 AS a$x$, /* nested /* comment */ f( */ pg_catalog.upper('x'), "upper"('y')
        FROM t, u ORDER BY t.n"""}, request_id="t")
    assert typed["rows"][0] == ["001", "1.0", 1, "it's (f(x)", "a'b(", 1, "X", "Y"]
    assert result["rows"][0][0] == "ADA" and result["rows"][0][3] is True


async def test_postgres_result_size_is_capped(pg_sql):
    guard = plugin_module(pg_sql, "sql_assistant", "guard")
    with pytest.raises(PluginError) as big:
        guard.postgres_run(os.environ["SQL_ASSISTANT_DATABASE"],
                           f"SELECT '{'x' * 5000}' FROM generate_series(1, 100)", 200, 5.0,
                           max_result_bytes=100_000)
    assert big.value.code == "result_too_large" and "100000 bytes" in big.value.message


async def test_postgres_result_is_fetched_progressively_and_the_query_stopped_at_the_cap(pg_sql, postgres_url):
    """A result of 100 000 rows that the server produces slowly (about 200 s in all, a subquery per row): fetched
    whole before the size check it would end as query_timeout after 5 s; streamed, the cap stops it after a few
    rows, at once, and the server is no longer running it."""
    guard = plugin_module(pg_sql, "sql_assistant", "guard")
    statement = (f"SELECT '{'x' * 5000}' AS big, (SELECT count(*) FROM generate_series(1, 20000 + g)) AS slow "
                 "FROM generate_series(1, 100000) AS g")
    started = time.monotonic()
    with pytest.raises(PluginError) as big:
        guard.postgres_run(postgres_url, statement, 1000, 5.0, max_result_bytes=100_000)
    assert big.value.code == "result_too_large" and "100000 bytes" in big.value.message
    assert time.monotonic() - started < 3
    with psycopg.connect(postgres_url) as conn:
        running = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                               "AND query LIKE %s AND pid <> pg_backend_pid()", ["%20000 + g%"]).fetchone()[0]
    assert running == 0
    # The row cap stops the stream the same way (no downloading of the rest).
    rows = guard.postgres_run(postgres_url, statement.replace(f"'{'x' * 5000}'", "1"), 3, 5.0)
    assert len(rows.rows) == 3 and rows.truncated is True


# ---- issue #22, item 2: PostgreSQL's own parser decides, and the re-printed statement is what runs

@pytest.mark.parametrize("statement, function", [
    # The two bypasses of the hand-written lexer: `\r` ends a -- comment in PostgreSQL; a string continued on
    # the next line after E'...' keeps backslash escapes.
    ("SELECT 1 --\r, pg_sleep(5), repeat('x',5e8)", "pg_sleep"),
    ("SELECT E'a'\n'\\' ', pg_terminate_backend(pid) FROM pg_stat_activity -- '", "pg_terminate_backend"),
    # Attribute notation: c.row_to_json is row_to_json(c); the catalog says it can be called that way.
    ("SELECT c.row_to_json FROM customers c", "row_to_json"),
    ("SELECT (c).pg_typeof FROM customers c", "pg_typeof"),
    ("SELECT set_config('statement_timeout', '0', false)", "set_config"),
    ("SELECT * FROM generate_series(1, 3) AS g, LATERAL pg_catalog.pg_sleep(0.1) AS s", "pg_sleep"),
])
async def test_postgres_calls_the_lexer_missed_are_refused(pg_sql, postgres_url, statement, function):
    with pytest.raises(PluginError) as refused:
        await pg_sql.execute("sql_assistant", {"sql": statement}, request_id="t")
    assert refused.value.code == "function_refused" and f"{function}()" in refused.value.message


@pytest.mark.parametrize("statement, code, words", [
    ("SELECT 'pg_authid'::regclass", "type_refused", "the type regclass"),
    ("SELECT CAST('upper' AS regproc)", "type_refused", "the type regproc"),
    ("SELECT 'pg_signal_backend'::pg_catalog.regrole", "type_refused", "the type regrole"),
    ("SELECT 1 OPERATOR(public.+) 2", "operator_refused", "the operator public.+"),
    ("SELECT 1 OPERATOR(pg_catalog.<->) 2", "operator_refused", "the operator <->"),
    ("COPY (SELECT 1) TO PROGRAM 'id'", "write_refused", "the statement is COPY"),
    ("SET statement_timeout = 0", "write_refused", "the statement is SET"),
    ("EXPLAIN ANALYZE SELECT 1", "write_refused", "the statement is EXPLAIN"),
    ("SELECT * FROM customers FOR UPDATE", "write_refused", "it contains FOR UPDATE/SHARE"),
    ("SELECT * INTO TEMP t FROM customers", "write_refused", "it contains INTO"),
    ("WITH gone AS (DELETE FROM customers RETURNING id) SELECT * FROM gone", "write_refused", "contains DELETE"),
    ("SELECT $1", "write_refused", "a $n parameter"),
    ("SELECT 'x", "sql_error", "unterminated quoted string"),
    ("SELECT 1; SELECT 2", "write_refused", "more than one statement"),
    ("SELECT " + "+".join(["1"] * 3000), "sql_error", "nested too deeply"),  # a clear error, not a 500
])
async def test_postgres_anything_but_a_plain_read_is_refused_on_the_tree(pg_sql, postgres_url, statement, code,
                                                                        words):
    with pytest.raises(PluginError) as refused:
        await pg_sql.execute("sql_assistant", {"sql": statement}, request_id="t")
    assert refused.value.code == code and words in refused.value.message, refused.value.message
    assert customer_count(postgres_url) == 3


async def test_postgres_runs_the_statement_re_printed_from_the_tree(pg_sql, postgres_url):
    """Comments and the user's spelling are gone from what runs: the server sees the deparser's text."""
    result = await pg_sql.execute("sql_assistant", {"sql": "select name /* a comment */, c.city\r\nFROM customers "
                                                           "c -- the end\rWHERE c.id = 1"}, request_id="t")
    assert result["sql"] == "SELECT name, c.city FROM customers AS c WHERE c.id = 1"
    assert result["rows"] == [["Ada", "London"]]
    with psycopg.connect(postgres_url.replace("analyst@", "owner@")) as conn:
        seen = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE %s",
                            ["%a comment%"]).fetchone()[0]
    assert seen <= 1  # only this very query; never the plugin's
    # Attribute notation on a real column and an allowed function still work.
    ok = await pg_sql.execute("sql_assistant", {"sql": "SELECT c.name, c.to_json ->> 'city' FROM customers c "
                                                       "ORDER BY c.id LIMIT 1"}, request_id="t")
    assert ok["rows"] == [["Ada", "London"]]
    # A column named like a function that a row cannot be passed to (system(internal)) is just a column.
    column = await pg_sql.execute("sql_assistant", {"sql": "SELECT g.system FROM (SELECT 1 AS system) g"},
                                  request_id="t")
    assert column["rows"] == [[1]]


# ---- issue #22, item 1: values and rows bounded by the server, before they are sent

RECURSIVE_DOUBLING = ("WITH RECURSIVE s(v, n) AS (SELECT 'x'::text, 0 UNION ALL SELECT v || v, n + 1 FROM s "
                      "WHERE n < 28) SELECT n, v FROM s")


async def test_postgres_a_huge_value_is_refused_before_it_is_sent(pg_sql, postgres_url):
    """Values up to 256 MB built with ||: refused by the size check in SQL at the first value over the cap,
    and this process never holds more than a row under it."""
    from test_plugin_sql_memory import run_measured

    measured = run_measured("postgres_run", postgres_url, RECURSIVE_DOUBLING)
    assert measured["code"] == "value_too_large" and measured["growth_mb"] < 50, measured
    guard = plugin_module(pg_sql, "sql_assistant", "guard")
    with pytest.raises(PluginError) as big:
        guard.postgres_run(postgres_url, RECURSIVE_DOUBLING, 100, 10.0, max_value_bytes=10_000)
    assert big.value.code == "value_too_large" and "10000 bytes" in big.value.message
    # Values each under the cap, a row of them over the result cap: refused in SQL too.
    with pytest.raises(PluginError) as wide:
        guard.postgres_run(postgres_url, "SELECT " + ", ".join([f"'{'y' * 900}'"] * 30) + " FROM customers",
                           100, 10.0, max_value_bytes=1000, max_result_bytes=20_000)
    assert wide.value.code == "result_too_large" and "20000 bytes" in wide.value.message


async def test_postgres_temp_files_and_work_mem_are_limited(pg_sql, postgres_url):
    guard = plugin_module(pg_sql, "sql_assistant", "guard")
    statement = "SELECT g FROM generate_series(1, 2000000) AS g ORDER BY g DESC"
    with pytest.raises(PluginError) as spilled:
        guard.postgres_run(postgres_url, statement, 5, 20.0, work_mem="64kB", temp_file_limit="1MB")
    assert spilled.value.code == "query_too_large" and "temp_file_limit" in spilled.value.message
    assert guard.postgres_run(postgres_url, statement, 5, 20.0).rows[0] == [2000000]
