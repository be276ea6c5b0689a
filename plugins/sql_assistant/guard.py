"""Read-only SQL: one SELECT statement, checked as text and then run on a connection that cannot write.

The text check gives clear errors early; the connection is what actually enforces read-only (SQLite: a `mode=ro`
URI, `PRAGMA query_only` and an authorizer that allows only reads; PostgreSQL: a read-only transaction).
"""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from moltbot.plugins import PluginError

# Words that make a statement starting with SELECT or WITH write: a WITH around INSERT/UPDATE/DELETE/REPLACE/MERGE,
# SELECT INTO, SELECT ... FOR UPDATE. Other writing commands (DROP, PRAGMA, ...) can only start a statement.
# A word followed by "(" is a function call (e.g. replace()), not a command.
WRITE_WORDS = {"INSERT", "UPDATE", "DELETE", "REPLACE", "MERGE", "INTO"}
ONLY_SELECT = "only one read-only SELECT statement is allowed"


def refused(reason: str) -> PluginError:
    return PluginError(f"refused: {reason}; {ONLY_SELECT}", code="write_refused")


def _code_only(sql: str) -> str:
    """The statement with string literals, quoted identifiers and comments blanked out."""
    out = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end
            out.append(" ")
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            if end < 0:
                raise refused("unterminated /* comment")
            i = end + 2
            out.append(" ")
        elif ch in "'\"`[":
            close = "]" if ch == "[" else ch
            j = i + 1
            while True:
                j = sql.find(close, j)
                if j < 0:
                    raise refused(f"unterminated {ch} quote")
                if close != "]" and sql.startswith(close * 2, j):
                    j += 2
                    continue
                break
            out.append(" '' " if ch == "'" else " x ")
            i = j + 1
        elif ch == "$" and (m := re.match(r"\$([A-Za-z_]\w*)?\$", sql[i:])):
            tag = m.group(0)
            end = sql.find(tag, i + len(tag))
            if end < 0:
                raise refused("unterminated dollar quote")
            out.append(" '' ")
            i = end + len(tag)
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def check_statement(sql: str) -> str:
    """The statement, trimmed of trailing semicolons, if it is exactly one SELECT (or WITH ... SELECT)."""
    statement = sql.strip()
    code = _code_only(statement).strip()
    while code.endswith(";"):
        code = code[:-1].rstrip()
        statement = statement[:statement.rstrip().rfind(";")].rstrip() if ";" in statement else statement
    if not code:
        raise refused("the statement is empty")
    if ";" in code:
        raise refused("more than one statement")
    first = re.match(r"\s*\(*\s*([A-Za-z_]+)", code)
    if not first or first.group(1).upper() not in ("SELECT", "WITH"):
        raise refused(f"the statement starts with {first.group(1).upper() if first else code[:10]!r}")
    commands = re.findall(r"\b([A-Za-z_]+)\b(?!\s*\()", code)
    writes = sorted({w.upper() for w in commands} & WRITE_WORDS)
    if writes:
        raise refused(f"it contains {', '.join(writes)}")
    return statement


def extract_sql(text: str) -> str | None:
    """The SQL in a model's reply: a ```sql fenced block, any fenced block, or the text from SELECT/WITH on."""
    for pattern in (r"```sql\s*\n(.*?)```", r"```\s*\n?(.*?)```"):
        match = re.search(pattern, text, re.S | re.I)
        if match and match.group(1).strip():
            return match.group(1).strip()
    match = re.search(r"\b(SELECT\b|WITH\s+(RECURSIVE\s+)?\w+\s*(\([^)]*\))?\s*AS\s*\().*", text, re.S | re.I)
    return match.group(0).strip() if match else None


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[list[Any]]
    truncated: bool


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if value is None or isinstance(value, (int, float, str, bool)):
        return value
    return str(value)


# ---- SQLite

_SQLITE_READS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}


def _authorize(action: int, *_: Any) -> int:
    return sqlite3.SQLITE_OK if action in _SQLITE_READS else sqlite3.SQLITE_DENY


def sqlite_connect(path: Path, timeout: float) -> sqlite3.Connection:
    if not path.is_file():
        raise PluginError(f"SQLite database {path.name} does not exist", code="database_missing")
    db = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=timeout, check_same_thread=False)
    db.execute("PRAGMA query_only = ON")
    return db


def sqlite_schema(path: Path, max_chars: int) -> str:
    db = sqlite_connect(path, 5)
    try:
        rows = db.execute("SELECT sql FROM sqlite_master WHERE type IN ('table', 'view') AND sql IS NOT NULL "
                          "AND name NOT LIKE 'sqlite_%' ORDER BY type, name").fetchall()
    finally:
        db.close()
    return "\n".join(row[0].strip() + ";" for row in rows)[:max_chars]


def sqlite_run(path: Path, statement: str, max_rows: int, timeout: float) -> QueryResult:
    db = sqlite_connect(path, timeout)
    deadline = time.monotonic() + timeout
    try:
        db.set_authorizer(_authorize)
        db.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
        try:
            cursor = db.execute(statement)
            if cursor.description is None:
                raise refused("the statement returns no rows")
            rows = cursor.fetchmany(max_rows + 1)
        except sqlite3.DatabaseError as exc:
            message = str(exc)
            if "not authorized" in message or "readonly" in message or "read-only" in message:
                raise refused("the statement would change the database") from None
            if "interrupted" in message:
                raise PluginError(f"the query took longer than {timeout:g} s", code="query_timeout") from None
            raise PluginError(f"SQL error: {message}", code="sql_error") from None
        columns = [d[0] for d in cursor.description]
    finally:
        db.close()
    return QueryResult(columns, [[_jsonable(v) for v in row] for row in rows[:max_rows]], len(rows) > max_rows)


# ---- PostgreSQL (needs psycopg 3)

def _psycopg():
    try:
        import psycopg
    except ImportError:
        raise PluginError("a PostgreSQL database needs the psycopg package (pip install 'psycopg[binary]')",
                          code="driver_missing") from None
    return psycopg


def _pg_connect(url: str, timeout: float):
    psycopg = _psycopg()
    try:
        conn = psycopg.connect(url, connect_timeout=max(1, int(timeout)),
                               options=f"-c statement_timeout={int(timeout * 1000)} "
                                       "-c default_transaction_read_only=on")
    except psycopg.OperationalError as exc:
        # The message may echo the URL's host and user, never its password; keep only the first line.
        raise PluginError(f"cannot connect to PostgreSQL: {str(exc).splitlines()[0]}",
                          code="database_unreachable") from None
    conn.read_only = True
    return conn


def postgres_schema(url: str, max_chars: int) -> str:
    with _pg_connect(url, 10) as conn, conn.cursor() as cur:
        cur.execute("SELECT table_schema, table_name, column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') "
                    "ORDER BY table_schema, table_name, ordinal_position")
        tables: dict[str, list[str]] = {}
        for schema, table, column, data_type in cur.fetchall():
            name = table if schema == "public" else f"{schema}.{table}"
            tables.setdefault(name, []).append(f"{column} {data_type}")
    return "\n".join(f"CREATE TABLE {t} ({', '.join(cols)});" for t, cols in tables.items())[:max_chars]


def postgres_run(url: str, statement: str, max_rows: int, timeout: float) -> QueryResult:
    psycopg = _psycopg()
    with _pg_connect(url, timeout) as conn:
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
                if cur.description is None:
                    raise refused("the statement returns no rows")
                rows = cur.fetchmany(max_rows + 1)
                columns = [d.name for d in cur.description]
        except psycopg.errors.ReadOnlySqlTransaction:
            raise refused("the statement would change the database") from None
        except psycopg.errors.QueryCanceled:
            raise PluginError(f"the query took longer than {timeout:g} s", code="query_timeout") from None
        except psycopg.Error as exc:
            raise PluginError(f"SQL error: {str(exc).splitlines()[0]}", code="sql_error") from None
        finally:
            conn.rollback()
    return QueryResult(columns, [[_jsonable(v) for v in row] for row in rows[:max_rows]], len(rows) > max_rows)
