"""Read-only SQL: one SELECT, checked by the database's own parser and run on a connection that cannot write.

SQLite: a `mode=ro` URI, `PRAGMA query_only` and an authorizer (SQLite's parser reports every table read,
function call and write to it) that allows only reads and the functions in SQLITE_FUNCTIONS. PostgreSQL: the
statement is parsed by PostgreSQL's own parser (pglast, which wraps libpg_query); every node of the tree must be
plain-read syntax, every function, operator and cast type must be on a list, and the statement re-printed from
the tree is what runs, in a read-only transaction, as a role checked at connect time.
Resources are bounded before a row reaches this process: each value (SQLite's SQLITE_LIMIT_LENGTH; on PostgreSQL
a size check wrapped around the query), the columns (SQLITE_LIMIT_COLUMN), the bytes of a row and of the whole
result, the rows, the time, and on PostgreSQL the server's work_mem and temp_file_limit.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from moltbot.plugins import PluginError

ONLY_SELECT = "only one read-only SELECT statement is allowed"


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Functions an analyst's SELECT may call; any other is refused with an error naming it. Never load_extension,
# fts3_tokenizer (it reads and writes the server's memory), readfile/writefile or anything that changes state.
# Not SQLite's printf/format either: a huge width runs for seconds inside one step, past any interrupt, before
# the value cap stops it; nor zeroblob/randomblob.
COMMON_FUNCTIONS = _names("""
    abs avg ceil ceiling coalesce count cos cot degrees exp floor greatest least length ln log log10 lower ltrim
    max min mod nullif pi power radians replace round rtrim sign sin sqrt substr substring sum tan trim trunc upper
    row_number rank dense_rank percent_rank cume_dist ntile lag lead first_value last_value nth_value
""")
SQLITE_FUNCTIONS = COMMON_FUNCTIONS | _names("""
    acos acosh asin asinh atan atan2 atanh char concat concat_ws cosh glob group_concat hex ifnull iif
    instr like likelihood likely log2 octet_length pow quote random sinh soundex string_agg tanh total
    typeof unhex unicode unlikely
    date time datetime julianday unixepoch strftime timediff current_date current_time current_timestamp
    json jsonb json_array jsonb_array json_array_length json_extract jsonb_extract json_insert jsonb_insert
    json_object jsonb_object json_patch jsonb_patch json_remove jsonb_remove json_replace jsonb_replace json_set
    jsonb_set json_type json_valid json_quote json_group_array jsonb_group_array json_group_object
    jsonb_group_object json_each json_tree json_error_position json_pretty -> ->>
""")
NEVER_ALLOWED = frozenset({"load_extension", "fts3_tokenizer"})


def refused(reason: str) -> PluginError:
    return PluginError(f"refused: {reason}; {ONLY_SELECT}", code="write_refused")


def function_refused(name: str) -> PluginError:
    return PluginError(f"refused: the function {name}() is not on the list of functions a query may call",
                       code="function_refused")


def result_too_large(limit: int) -> PluginError:
    return PluginError(f"the result is larger than {limit} bytes (the plugin's max_result_bytes): select fewer "
                       "rows or columns, or shorter values", code="result_too_large")


def value_too_large(limit: int) -> PluginError:
    return PluginError(f"a value would be larger than {limit} bytes (the plugin's max_value_bytes)",
                       code="value_too_large")


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
    statement: str  # what ran: the text as given (SQLite) or re-printed from the parse tree (PostgreSQL)
    columns: list[str]
    rows: list[list[Any]]
    truncated: bool


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if value is None or isinstance(value, (int, float, str, bool)):
        return value
    return str(value)


def _bounded_rows(fetchone: Any, max_rows: int, max_result_bytes: int) -> list[list[Any]]:
    """Up to max_rows + 1 rows as JSON values, or result_too_large once their JSON passes max_result_bytes."""
    rows: list[list[Any]] = []
    size = 0
    while len(rows) <= max_rows:
        row = fetchone()
        if row is None:
            break
        values = [_jsonable(v) for v in row]
        if len(rows) < max_rows:  # the extra row only says the result was truncated
            size += len(json.dumps(values, default=str))
            if size > max_result_bytes:
                raise result_too_large(max_result_bytes)
        rows.append(values)
    return rows


# ---- SQLite

_SQLITE_READS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE}
# What each refused authorizer action would do, for the error (VACUUM INTO and ATTACH both attach a file).
_SQLITE_ACTIONS = {getattr(sqlite3, f"SQLITE_{name}"): name.replace("_", " ") for name in _names("""
    INSERT UPDATE DELETE PRAGMA ATTACH DETACH TRANSACTION SAVEPOINT ALTER_TABLE REINDEX ANALYZE
    CREATE_INDEX CREATE_TABLE CREATE_TEMP_INDEX CREATE_TEMP_TABLE CREATE_TEMP_TRIGGER CREATE_TEMP_VIEW
    CREATE_TRIGGER CREATE_VIEW CREATE_VTABLE DROP_INDEX DROP_TABLE DROP_TEMP_INDEX DROP_TEMP_TABLE
    DROP_TEMP_TRIGGER DROP_TEMP_VIEW DROP_TRIGGER DROP_VIEW DROP_VTABLE""")}
# Virtual-machine steps between checks of the clock: with values capped by SQLITE_LIMIT_LENGTH no single step
# runs long, so the time limit holds to well within a second.
PROGRESS_STEPS = 200


class _Authorizer:
    """Reads and the allowed functions; remembers the first refused function or action to name it."""

    def __init__(self) -> None:
        self.refused_function: str | None = None
        self.refused_action: str | None = None

    def __call__(self, action: int, arg1: str | None, arg2: str | None, *_: Any) -> int:
        if action in _SQLITE_READS:
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_FUNCTION:
            name = (arg2 or "").lower()
            if name in SQLITE_FUNCTIONS and name not in NEVER_ALLOWED:
                return sqlite3.SQLITE_OK
            self.refused_function = self.refused_function or name
        else:  # DROP TABLE is first a DELETE on sqlite_master
            what = "change the schema" if (arg1 or "").startswith("sqlite_") else _SQLITE_ACTIONS.get(action)
            self.refused_action = self.refused_action or what or "change the database"
        return sqlite3.SQLITE_DENY


def sqlite_connect(path: Path, timeout: float, max_value_bytes: int = 1_000_000,
                   max_columns: int = 100) -> sqlite3.Connection:
    """A read-only connection on which no value can pass max_value_bytes and no result max_columns columns:
    a result row, which SQLite builds whole before handing it over, is at most their product."""
    if not path.is_file():
        raise PluginError(f"SQLite database {path.name} does not exist", code="database_missing")
    db = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=timeout, check_same_thread=False)
    db.execute("PRAGMA query_only = ON")
    # No string or blob above this size can be made (printf('%.*c', ...), zeroblob, randomblob, replace, ...).
    db.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, max_value_bytes)
    db.setlimit(sqlite3.SQLITE_LIMIT_COLUMN, max_columns)
    db.setlimit(sqlite3.SQLITE_LIMIT_LIKE_PATTERN_LENGTH, 1000)  # LIKE/GLOB patterns: their cost grows with it
    db.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)  # below the authorizer: no other file (ATTACH, VACUUM INTO)
    return db


def sqlite_schema(path: Path, max_chars: int) -> str:
    db = sqlite_connect(path, 5)
    try:
        rows = db.execute("SELECT sql FROM sqlite_master WHERE type IN ('table', 'view') AND sql IS NOT NULL "
                          "AND name NOT LIKE 'sqlite_%' ORDER BY type, name").fetchall()
    finally:
        db.close()
    return "\n".join(row[0].strip() + ";" for row in rows)[:max_chars]


def sqlite_tables(path: Path) -> tuple[tuple[None, str, tuple[str, ...]], ...]:
    """Each table's and view's name and columns, in order, for the model's grammar."""
    db = sqlite_connect(path, 5)
    try:
        names = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
                                              "AND name NOT LIKE 'sqlite_%' ORDER BY type, name")]
        return tuple((None, name, tuple(row[1] for row in db.execute("SELECT * FROM pragma_table_info(?)", (name,))))
                     for name in names)
    finally:
        db.close()


def sqlite_run(path: Path, statement: str, max_rows: int, timeout: float, max_value_bytes: int = 1_000_000,
               max_result_bytes: int = 4_000_000, max_columns: int = 100) -> QueryResult:
    statement = statement.strip()
    db = sqlite_connect(path, timeout, max_value_bytes, max_columns)
    deadline = time.monotonic() + timeout
    authorizer = _Authorizer()
    # The progress handler stops a query between steps; the timer also interrupts one that is inside a long step.
    alarm = threading.Timer(timeout, db.interrupt)
    alarm.daemon = True
    try:
        db.set_authorizer(authorizer)
        db.set_progress_handler(lambda: int(time.monotonic() > deadline), PROGRESS_STEPS)
        alarm.start()
        try:
            cursor = db.execute(statement)
            if cursor.description is None:
                raise refused("the statement returns no rows")
            rows = _bounded_rows(cursor.fetchone, max_rows, max_result_bytes)
        except sqlite3.DatabaseError as exc:
            raise _sqlite_error(str(exc), authorizer, timeout, max_value_bytes, max_columns) from None
        columns = [d[0] for d in cursor.description]
    finally:
        alarm.cancel()
        db.close()
    return QueryResult(statement, columns, rows[:max_rows], len(rows) > max_rows)


def _sqlite_error(message: str, authorizer: _Authorizer, timeout: float, max_value_bytes: int,
                  max_columns: int) -> PluginError:
    if authorizer.refused_function:
        return function_refused(authorizer.refused_function)
    if authorizer.refused_action:
        return refused(f"the statement would {authorizer.refused_action}")
    if "one statement at a time" in message:
        return refused("more than one statement")
    if "interrupted" in message:
        return PluginError(f"the query took longer than {timeout:g} s", code="query_timeout")
    if "too big" in message:
        return value_too_large(max_value_bytes)
    if "too many columns" in message:
        return PluginError(f"the query has more than {max_columns} columns (the plugin's max_columns)",
                           code="too_many_columns")
    return PluginError(f"SQL error: {message}", code="sql_error")


# ---- PostgreSQL (needs psycopg 3 and pglast)

# Not lpad/rpad/format (repeat neither): one call builds a value of up to 1 GB from a short statement. A value
# can still grow by nesting replace() or by || in a recursive query; the size check around the query stops it
# before it is sent. The last line: functions the parser itself writes for SQL syntax (SIMILAR TO, AT TIME ZONE,
# LIKE ... ESCAPE, OVERLAY, OVERLAPS, TRIM, EXTRACT).
POSTGRES_FUNCTIONS = COMMON_FUNCTIONS | _names("""
    age array_agg array_length array_position bool_and bool_or btrim cardinality cbrt char_length
    character_length concat concat_ws corr covar_pop covar_samp date_bin date_part date_trunc div every extract
    generate_series initcap isfinite json_agg json_array_length json_build_array json_build_object
    json_extract_path json_extract_path_text json_object_agg json_typeof jsonb_agg jsonb_array_length
    jsonb_build_array jsonb_build_object jsonb_extract_path jsonb_extract_path_text jsonb_object_agg jsonb_typeof
    justify_days justify_hours justify_interval left make_date make_interval make_time make_timestamp mode
    now percentile_cont percentile_disc position reverse right split_part starts_with stddev stddev_pop
    stddev_samp string_agg strpos to_char to_date to_json to_jsonb to_number to_timestamp translate unnest
    var_pop var_samp variance width_bucket
    similar_to_escape like_escape timezone overlay overlaps
""")
# Operators (each runs a function): comparison, arithmetic, text, pattern, JSON and array ones of pg_catalog.
POSTGRES_OPERATORS = _names("""
    = <> != < > <= >= + - * / % ^ |/ ||/ @ || ~~ !~~ ~~* !~~* ~ !~ ~* !~* -> ->> #> #>> @> <@ ? ?| ?& &&
""") | {"BETWEEN", "NOT BETWEEN", "BETWEEN SYMMETRIC", "NOT BETWEEN SYMMETRIC"}
# Types a value may be cast to. Never the reg* types: their input functions look names up in the catalogs.
POSTGRES_TYPES = _names("""
    bool int2 int4 int8 float4 float8 numeric text varchar bpchar char name date time timetz timestamp
    timestamptz interval json jsonb uuid bytea bit varbit inet cidr macaddr money
""")
# Syntax of a plain read: every node of the parse tree must be one of these (anything else, from INSERT inside
# a WITH to SELECT INTO, FOR UPDATE, XML or a parameter, is refused).
_READ_NODES = _names("""
    RawStmt SelectStmt ResTarget ColumnRef A_Star A_Const String Integer Float Boolean BitString A_Expr BoolExpr
    FuncCall TypeCast TypeName ColumnDef RangeVar Alias JoinExpr RangeSubselect RangeFunction SubLink NullTest
    BooleanTest CaseExpr CaseWhen CoalesceExpr MinMaxExpr SortBy WindowDef WithClause CommonTableExpr
    CTESearchClause CTECycleClause A_ArrayExpr A_Indices A_Indirection RowExpr GroupingSet GroupingFunc
    CollateClause SQLValueFunction
""")
_NODE_LABELS = {"IntoClause": "INTO", "LockingClause": "FOR UPDATE/SHARE", "VariableSetStmt": "SET",
                "VariableShowStmt": "SHOW", "ParamRef": "a $n parameter"}


def _label(node: Any) -> str:
    name = type(node).__name__
    return _NODE_LABELS.get(name) or re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name.removesuffix("Stmt")).upper()


def _catalog_name(names: Any) -> str:
    """A function, operator or type name: bare if in pg_catalog; qualified by another schema, qualified (and on
    no list: the built-in of that name is not what it calls)."""
    parts = [n.sval for n in names]
    return ".".join(parts[1:] if len(parts) == 2 and parts[0] == "pg_catalog" else parts)


def _pglast() -> Any:
    try:
        import pglast
    except ImportError:
        raise PluginError("a PostgreSQL database needs the pglast package (pip install pglast)",
                          code="driver_missing") from None
    return pglast


def check_postgres(sql: str) -> tuple[str, frozenset[str]]:
    """The statement re-printed from PostgreSQL's parse tree, if it is one plain read using only listed
    functions, operators and types; and the names after a `.` (`t.fn` calls fn(t) where t has no column fn),
    which only the server's catalog can tell from columns (see _ATTRIBUTE_FUNCTIONS)."""
    try:
        return _check_postgres(sql)
    except RecursionError:  # pglast's tree, visitor and printer recurse: `1+1+...` thousands deep
        raise PluginError("SQL error: the statement is nested too deeply", code="sql_error") from None


def _check_postgres(sql: str) -> tuple[str, frozenset[str]]:
    pglast = _pglast()
    from pglast.stream import RawStream
    from pglast.visitors import Visitor

    try:
        statements = pglast.parse_sql(sql)
    except pglast.parser.ParseError as exc:
        raise PluginError(f"SQL syntax error: {exc}", code="sql_error") from None
    if not statements:
        raise refused("the statement is empty")
    if len(statements) > 1:
        raise refused("more than one statement")
    tree = statements[0].stmt
    if type(tree).__name__ != "SelectStmt":
        raise refused(f"the statement is {_label(tree)}, not SELECT")
    attributes: set[str] = set()

    class Check(Visitor):
        def visit(self, ancestors: Any, node: Any) -> None:
            kind = type(node).__name__
            if kind not in _READ_NODES:
                raise refused(f"it contains {_label(node)}")
            if kind == "FuncCall":
                name = _catalog_name(node.funcname)
                if name not in POSTGRES_FUNCTIONS or name in NEVER_ALLOWED:
                    raise function_refused(name)
            elif kind == "A_Expr" and (name := _catalog_name(node.name)) not in POSTGRES_OPERATORS:
                raise PluginError(f"refused: the operator {name} is not on the list of operators a query may use",
                                  code="operator_refused")
            elif kind == "TypeName" and (name := _catalog_name(node.names)) not in POSTGRES_TYPES:
                raise PluginError(f"refused: the type {name} is not on the list of types a query may cast to",
                                  code="type_refused")
            elif kind == "ColumnRef":
                attributes.update(f.sval for f in node.fields[1:] if type(f).__name__ == "String")
            elif kind == "A_Indirection":
                attributes.update(f.sval for f in node.indirection if type(f).__name__ == "String")

    Check()(statements[0])
    printed = RawStream()(tree)
    # What runs is the re-printed text: it must parse back to the very tree that was checked.
    if pglast.parse_sql(printed)[0].stmt != tree:
        raise PluginError("SQL error: the statement could not be re-printed faithfully", code="sql_error")
    return printed, frozenset(attributes)


# A role that can read or write server files, run programs, signal backends, open other connections or read
# what other sessions run and every setting can act outside a read-only transaction or see past its tables:
# the plugin refuses to run its queries as one. Membership counts even when it does not inherit (SET ROLE
# reaches the role's powers), and so does EXECUTE on the file functions, whichever overload it is granted on.
_FILE_FUNCTIONS = ("pg_read_file", "pg_read_binary_file", "pg_ls_dir", "pg_stat_file", "lo_import", "lo_export")
_FILE_FUNCTION_NAMES = ", ".join(f"'{name}'" for name in _FILE_FUNCTIONS)
_POWER_ROLES = ("pg_read_server_files", "pg_write_server_files", "pg_execute_server_program", "pg_signal_backend",
                "pg_monitor", "pg_read_all_stats", "pg_read_all_settings", "pg_read_all_data")
_POWER_ROLE_CHECKS = ",\n       ".join(f"pg_has_role(current_user, '{role}', 'MEMBER')" for role in _POWER_ROLES)
_ROLE_CHECK = f"""
SELECT r.rolsuper,
       (SELECT string_agg(s.rolname, ', ' ORDER BY s.rolname) FROM pg_roles s
        WHERE s.rolsuper AND s.oid <> r.oid AND pg_has_role(current_user, s.oid, 'MEMBER')),
       {_POWER_ROLE_CHECKS},
       EXISTS (SELECT 1 FROM pg_proc p WHERE p.proname LIKE 'dblink%' AND has_function_privilege(p.oid, 'EXECUTE')),
       (SELECT string_agg(DISTINCT p.proname, ', ') FROM pg_proc p
        WHERE p.proname IN ({_FILE_FUNCTION_NAMES})
          AND has_function_privilege(p.oid, 'EXECUTE'))
FROM pg_roles r WHERE r.rolname = current_user
"""
_ROLE_POWERS = ("is a superuser", "is a member of the superuser role {}",
                *(f"is a member of {role}" for role in _POWER_ROLES),
                "can execute dblink functions", "can execute {}")
# Functions that attribute notation can call, in any schema: those taking one argument that a row converts to
# (its composite type, or record, anyelement, "any", ...).
_ATTRIBUTE_FUNCTIONS = """
SELECT DISTINCT p.proname FROM pg_proc p JOIN pg_type t ON t.oid = p.proargtypes[0]
WHERE p.pronargs >= 1 AND p.pronargs - p.pronargdefaults <= 1
  AND (t.typtype = 'c' OR t.typname IN ('record', 'anyelement', 'any', 'anycompatible', 'anynonarray',
                                         'anycompatiblenonarray'))
"""
# A value, or a row's values together, over the limit make the size check below fail the query with an error
# carrying one of these marks (and the size), before the row is sent.
_VALUE_MARK, _ROW_MARK = "bytes: sql_assistant max_value_bytes", "bytes: sql_assistant max_result_bytes"
_SIZE_CHECK = """SELECT q.* FROM ({statement}) AS q,
  LATERAL (SELECT max(octet_length(v.value)) AS widest, sum(octet_length(v.value)) AS total
           FROM pg_catalog.json_each_text(pg_catalog.row_to_json(q)) AS v) AS size
WHERE CASE WHEN size.widest > {max_value} THEN (size.widest::text || ' {value_mark}')::int = 0
           WHEN size.total > {max_row} THEN (size.total::text || ' {row_mark}')::int = 0
           ELSE true END"""


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise PluginError("a PostgreSQL database needs the psycopg package (pip install 'psycopg[binary]')",
                          code="driver_missing") from None
    return psycopg


def _pg_connect(url: str, timeout: float, work_mem: str = "16MB", temp_file_limit: str = "256MB") -> Any:
    psycopg = _psycopg()
    try:
        conn = psycopg.connect(url, connect_timeout=max(1, int(timeout)),
                               options=f"-c statement_timeout={int(timeout * 1000)} "
                                       "-c default_transaction_read_only=on "
                                       f"-c work_mem={work_mem} "
                                       # the rules the statement was re-printed by
                                       "-c standard_conforming_strings=on")
    except psycopg.OperationalError as exc:
        # The message may echo the URL's host and user, never its password; keep only the first line.
        raise PluginError(f"cannot connect to PostgreSQL: {str(exc).splitlines()[0]}",
                          code="database_unreachable") from None
    conn.read_only = True
    try:
        check_postgres_role(conn)
        _limit_temp_files(conn, temp_file_limit)
    except psycopg.Error as exc:  # e.g. a server before PostgreSQL 11, without the pg_*_server_files roles
        conn.close()
        raise PluginError(f"cannot check the database role's privileges: {str(exc).splitlines()[0]}",
                          code="role_refused") from None
    except BaseException:
        conn.close()
        raise
    return conn


def _limit_temp_files(conn: Any, limit: str) -> None:
    """temp_file_limit needs a superuser or `GRANT SET ON PARAMETER temp_file_limit` (PostgreSQL 15): where the
    role may not set it, the server's value for the role holds (ALTER ROLE ... SET temp_file_limit)."""
    psycopg = _psycopg()
    try:
        conn.execute("SELECT pg_catalog.set_config('temp_file_limit', %s, false)", [limit])
        conn.commit()
    except psycopg.errors.InsufficientPrivilege:
        conn.rollback()


def check_postgres_role(conn: Any) -> None:
    """Refuse a role with powers beyond reading tables (see _ROLE_CHECK)."""
    try:
        with conn.cursor() as cur:
            cur.execute(_ROLE_CHECK)
            row = cur.fetchone()
    finally:
        conn.rollback()
    powers = [what.format(has) for what, has in zip(_ROLE_POWERS, row or (True,) * len(_ROLE_POWERS), strict=True)
              if has]
    if powers:
        raise PluginError(f"refused: the database role {'; '.join(powers)}; give the plugin a role that can "
                          "only SELECT the tables it should see", code="role_refused")


def _postgres_columns(url: str) -> list[tuple[str, str, str, str]]:
    """(schema, table, column, data type) of every column the role sees outside the system schemas, in order."""
    with _pg_connect(url, 10) as conn, conn.cursor() as cur:
        cur.execute("SELECT table_schema, table_name, column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') "
                    "ORDER BY table_schema, table_name, ordinal_position")
        return list(cur.fetchall())


def postgres_schema(url: str, max_chars: int) -> str:
    tables: dict[str, list[str]] = {}
    for schema, table, column, data_type in _postgres_columns(url):
        name = table if schema == "public" else f"{schema}.{table}"
        tables.setdefault(name, []).append(f"{column} {data_type}")
    return "\n".join(f"CREATE TABLE {t} ({', '.join(cols)});" for t, cols in tables.items())[:max_chars]


def postgres_tables(url: str) -> tuple[tuple[str | None, str, tuple[str, ...]], ...]:
    """Each table's schema (None for public), name and columns, for the model's grammar."""
    tables: dict[tuple[str | None, str], list[str]] = {}
    for schema, table, column, _ in _postgres_columns(url):
        tables.setdefault((None if schema == "public" else schema, table), []).append(column)
    return tuple((schema, table, tuple(columns)) for (schema, table), columns in tables.items())


def postgres_run(url: str, sql: str, max_rows: int, timeout: float, max_value_bytes: int = 1_000_000,
                 max_result_bytes: int = 4_000_000, work_mem: str = "16MB",
                 temp_file_limit: str = "256MB") -> QueryResult:
    psycopg = _psycopg()
    statement, attributes = check_postgres(sql)
    wrapped = _SIZE_CHECK.format(statement=statement, max_value=int(max_value_bytes), value_mark=_VALUE_MARK,
                                 max_row=int(max_result_bytes), row_mark=_ROW_MARK)
    with _pg_connect(url, timeout, work_mem, temp_file_limit) as conn:
        try:
            callable_by_attribute = {row[0] for row in conn.execute(_ATTRIBUTE_FUNCTIONS)}
            for name in sorted(attributes & callable_by_attribute - POSTGRES_FUNCTIONS):
                raise function_refused(name)
            # Single-row mode (stream with size 1): one row, bounded by the size check, in memory at a time;
            # the caps stop the query (cancelled when the stream is closed) as soon as they are passed.
            with conn.cursor() as cur, contextlib.closing(cur.stream(wrapped, size=1)) as rows_in:
                rows = _bounded_rows(lambda: next(rows_in, None), max_rows, max_result_bytes)
                columns = [d.name for d in cur.description]
        except psycopg.errors.ReadOnlySqlTransaction:
            raise refused("the statement would change the database") from None
        except psycopg.errors.QueryCanceled:
            raise PluginError(f"the query took longer than {timeout:g} s", code="query_timeout") from None
        except psycopg.errors.InvalidTextRepresentation as exc:
            message = str(exc)
            if _VALUE_MARK in message:
                raise value_too_large(max_value_bytes) from None
            if _ROW_MARK in message:
                raise result_too_large(max_result_bytes) from None
            raise PluginError(f"SQL error: {message.splitlines()[0]}", code="sql_error") from None
        except (psycopg.errors.ConfigurationLimitExceeded, psycopg.errors.ProgramLimitExceeded,
                psycopg.errors.OutOfMemory) as exc:
            raise PluginError(f"the query needs more than the server allows it: {str(exc).splitlines()[0]}",
                              code="query_too_large") from None
        except psycopg.Error as exc:
            raise PluginError(f"SQL error: {str(exc).splitlines()[0]}", code="sql_error") from None
        finally:
            conn.rollback()
    return QueryResult(statement, columns, rows[:max_rows], len(rows) > max_rows)
