"""Read-only SQL: one SELECT statement, checked as text and then run on a connection that cannot write.

The text check gives clear errors early; the connection is what actually enforces read-only (SQLite: a `mode=ro`
URI, `PRAGMA query_only` and an authorizer that allows only reads and the functions in SQLITE_FUNCTIONS;
PostgreSQL: a read-only transaction, a role checked at connect time, and the functions in POSTGRES_FUNCTIONS).
Resources are bounded too: the size of one value (SQLite's SQLITE_LIMIT_LENGTH), the bytes of a whole result,
the rows, and the time (checked every few hundred virtual-machine steps, and by an interrupt at the deadline).
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

# Words that make a statement starting with SELECT or WITH write: a WITH around INSERT/UPDATE/DELETE/REPLACE/MERGE,
# SELECT INTO, SELECT ... FOR UPDATE. Other writing commands (DROP, PRAGMA, ...) can only start a statement.
# A word followed by "(" is a function call (e.g. replace()), not a command.
WRITE_WORDS = {"INSERT", "UPDATE", "DELETE", "REPLACE", "MERGE", "INTO"}
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


def _code_only(sql: str, keep_identifiers: bool = False, postgres: bool = False) -> str:
    """The statement with string literals, quoted identifiers and comments blanked out (quoted identifiers
    unquoted instead with keep_identifiers, so that a quoted function name is still seen). With postgres, by
    PostgreSQL's lexical rules (_pg_tokens: `[` is an array subscript, not a quote), quoted identifiers as x."""
    if postgres:
        return " ".join("''" if t.kind == "string" else "x" if t.quoted else t.text for t in _pg_tokens(sql))
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
            if ch == "'":
                out.append(" '' ")
            elif keep_identifiers:
                inner = sql[i + 1:j]
                out.append(f" {inner} " if re.fullmatch(r"[A-Za-z_][\w$]*", inner) else " x ")
            else:
                out.append(" x ")
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


def check_statement(sql: str, postgres: bool = False) -> str:
    """The statement, trimmed of trailing semicolons, if it is exactly one SELECT (or WITH ... SELECT)."""
    statement = sql.strip()
    code = _code_only(statement, postgres=postgres).strip()
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

_SQLITE_READS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE}
# Virtual-machine steps between checks of the clock: with values capped by SQLITE_LIMIT_LENGTH no single step
# runs long, so the time limit holds to well within a second.
PROGRESS_STEPS = 200


class _Authorizer:
    """Reads and the allowed functions; remembers the first refused function to name it in the error."""

    def __init__(self) -> None:
        self.refused_function: str | None = None

    def __call__(self, action: int, arg1: str | None, arg2: str | None, *_: Any) -> int:
        if action in _SQLITE_READS:
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_FUNCTION:
            name = (arg2 or "").lower()
            if name in SQLITE_FUNCTIONS and name not in NEVER_ALLOWED:
                return sqlite3.SQLITE_OK
            self.refused_function = self.refused_function or name
        return sqlite3.SQLITE_DENY


def sqlite_connect(path: Path, timeout: float, max_value_bytes: int = 1_000_000) -> sqlite3.Connection:
    if not path.is_file():
        raise PluginError(f"SQLite database {path.name} does not exist", code="database_missing")
    db = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=timeout, check_same_thread=False)
    db.execute("PRAGMA query_only = ON")
    # No string or blob above this size can be made (printf('%.*c', ...), zeroblob, randomblob, replace, ...).
    db.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, max_value_bytes)
    db.setlimit(sqlite3.SQLITE_LIMIT_LIKE_PATTERN_LENGTH, 1000)  # LIKE/GLOB patterns: their cost grows with it
    return db


def sqlite_schema(path: Path, max_chars: int) -> str:
    db = sqlite_connect(path, 5)
    try:
        rows = db.execute("SELECT sql FROM sqlite_master WHERE type IN ('table', 'view') AND sql IS NOT NULL "
                          "AND name NOT LIKE 'sqlite_%' ORDER BY type, name").fetchall()
    finally:
        db.close()
    return "\n".join(row[0].strip() + ";" for row in rows)[:max_chars]


def sqlite_run(path: Path, statement: str, max_rows: int, timeout: float, max_value_bytes: int = 1_000_000,
               max_result_bytes: int = 4_000_000) -> QueryResult:
    db = sqlite_connect(path, timeout, max_value_bytes)
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
            message = str(exc)
            if authorizer.refused_function:
                raise function_refused(authorizer.refused_function) from None
            if "not authorized" in message or "readonly" in message or "read-only" in message:
                raise refused("the statement would change the database") from None
            if "interrupted" in message:
                raise PluginError(f"the query took longer than {timeout:g} s", code="query_timeout") from None
            if "too big" in message:
                raise PluginError(f"a value would be larger than {max_value_bytes} bytes (the plugin's "
                                  "max_value_bytes)", code="value_too_large") from None
            raise PluginError(f"SQL error: {message}", code="sql_error") from None
        columns = [d[0] for d in cursor.description]
    finally:
        alarm.cancel()
        db.close()
    return QueryResult(columns, rows[:max_rows], len(rows) > max_rows)


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


# ---- PostgreSQL (needs psycopg 3)

# Not lpad/rpad/format (repeat neither): one call builds a value of up to 1 GB from a short statement. A value
# can still grow by nesting replace() or by || in a recursive query; statement_timeout and the result's size
# bound what comes back.
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
""")
# Words that precede "(" without being a function call (syntax and type names with a precision).
_SQL_WORDS = _names("""
    all and any array as between by case cast char character collate decimal distinct else end except exists
    from group having ilike in intersect interval is join lateral like limit not numeric offset on or
    order row select similar some table then time timestamp timestamptz union using
    values varchar when where window with rollup cube grouping to escape for only symmetric float bit
""")
# Words PostgreSQL also takes as function names: syntax only right after these tokens (`count(*) FILTER (`,
# `AT TIME ZONE (`, `AS MATERIALIZED (`), a call anywhere else.
_SQL_WORDS_AFTER = {"filter": {")"}, "over": {")"}, "within": {")"}, "sets": {"grouping"}, "zone": {"time"},
                    "varying": {"bit", "character", "char"}, "materialized": {"as", "not"},
                    "recursive": {"with"}}
# A role that can read or write server files, run programs, signal backends or open other connections can act
# outside a read-only transaction: the plugin refuses to run its queries as one. Membership counts even when it
# does not inherit (SET ROLE reaches the role's powers), and so does EXECUTE on the file functions, whichever of
# their overloads it is granted on.
_FILE_FUNCTIONS = ("pg_read_file", "pg_read_binary_file", "pg_ls_dir", "pg_stat_file", "lo_import", "lo_export")
_FILE_FUNCTION_NAMES = ", ".join(f"'{name}'" for name in _FILE_FUNCTIONS)
_ROLE_CHECK = f"""
SELECT r.rolsuper,
       (SELECT string_agg(s.rolname, ', ' ORDER BY s.rolname) FROM pg_roles s
        WHERE s.rolsuper AND s.oid <> r.oid AND pg_has_role(current_user, s.oid, 'MEMBER')),
       pg_has_role(current_user, 'pg_read_server_files', 'MEMBER'),
       pg_has_role(current_user, 'pg_write_server_files', 'MEMBER'),
       pg_has_role(current_user, 'pg_execute_server_program', 'MEMBER'),
       pg_has_role(current_user, 'pg_signal_backend', 'MEMBER'),
       EXISTS (SELECT 1 FROM pg_proc p WHERE p.proname LIKE 'dblink%' AND has_function_privilege(p.oid, 'EXECUTE')),
       (SELECT string_agg(DISTINCT p.proname, ', ') FROM pg_proc p
        WHERE p.proname IN ({_FILE_FUNCTION_NAMES})
          AND has_function_privilege(p.oid, 'EXECUTE'))
FROM pg_roles r WHERE r.rolname = current_user
"""
_ROLE_POWERS = ("is a superuser", "is a member of the superuser role {}", "is a member of pg_read_server_files",
                "is a member of pg_write_server_files", "is a member of pg_execute_server_program",
                "is a member of pg_signal_backend", "can execute dblink functions", "can execute {}")


# PostgreSQL's lexical rules, as far as finding the function calls needs them. Identifiers take letters, digits,
# "_", "$" and any non-ASCII character; a dollar quote's tag neither "$" nor (in a sequential scan) can it start
# inside an identifier, so `a$x$` is one identifier, not a quote.
_PG_IDENT = re.compile(r"[A-Za-z_\x80-\U0010FFFF][A-Za-z0-9_$\x80-\U0010FFFF]*")
_PG_DOLLAR = re.compile(r"\$([A-Za-z_\x80-\U0010FFFF][A-Za-z0-9_\x80-\U0010FFFF]*)?\$")
_PG_NUMBER = re.compile(r"(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|\$\d+")


@dataclass
class _Token:
    kind: str  # "ident", "string" (any literal: quoted, E'', dollar-quoted), "number" or "op" (anything else)
    text: str  # an unquoted identifier in lower case, a quoted one as written; the character(s) of an "op"
    quoted: bool = False

    def word(self, *words: str) -> bool:
        """An unquoted identifier that is one of `words` (a keyword, where a quoted one never is)."""
        return self.kind == "ident" and not self.quoted and self.text in words


def _pg_tokens(sql: str) -> list[_Token]:
    """The statement's tokens by PostgreSQL's rules (standard_conforming_strings on, which the connection sets):
    nested /* comments */, E'' strings with backslash escapes, dollar quotes, "quoted" identifiers, `::`."""
    tokens: list[_Token] = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch.isspace():
            i += 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end
        elif sql.startswith("/*", i):
            depth, i = 1, i + 2
            while depth:
                if i >= n:
                    raise refused("unterminated /* comment")
                if sql.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif sql.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif ch in "Ee" and sql.startswith("'", i + 1):  # E'...': backslash escapes
            j = i + 2
            while True:
                if j >= n:
                    raise refused("unterminated ' quote")
                if sql[j] == "\\" or sql.startswith("''", j):  # \' or '' inside
                    j += 2
                elif sql[j] == "'":
                    break
                else:
                    j += 1
            tokens.append(_Token("string", ""))
            i = j + 1
        elif ch in "'\"":
            j = i + 1
            while True:
                j = sql.find(ch, j)
                if j < 0:
                    raise refused(f"unterminated {ch} quote")
                if sql.startswith(ch * 2, j):
                    j += 2
                    continue
                break
            if ch == "'":
                tokens.append(_Token("string", ""))
            else:
                tokens.append(_Token("ident", sql[i + 1:j].replace('""', '"'), quoted=True))
            i = j + 1
        elif ch == "$" and (m := _PG_DOLLAR.match(sql, i)):
            end = sql.find(m.group(0), m.end())
            if end < 0:
                raise refused("unterminated dollar quote")
            tokens.append(_Token("string", ""))
            i = end + len(m.group(0))
        elif m := _PG_NUMBER.match(sql, i):
            tokens.append(_Token("number", m.group(0)))
            i = m.end()
        elif m := _PG_IDENT.match(sql, i):
            tokens.append(_Token("ident", m.group(0).lower()))
            i = m.end()
        elif sql.startswith("::", i):
            tokens.append(_Token("op", "::"))
            i += 2
        else:
            tokens.append(_Token("op", ch))
            i += 1
    return tokens


def _matching_paren(tokens: list[_Token], opening: int) -> int | None:
    depth = 0
    for i in range(opening, len(tokens)):
        if tokens[i].kind == "op" and tokens[i].text == "(":
            depth += 1
        elif tokens[i].kind == "op" and tokens[i].text == ")":
            depth -= 1
            if depth == 0:
                return i
    return None


def _is(tokens: list[_Token], i: int, text: str) -> bool:
    return i < len(tokens) and tokens[i].kind == "op" and tokens[i].text == text


def _cte_column_lists(tokens: list[_Token]) -> set[int]:
    """The indexes of the names in `WITH [RECURSIVE] name (columns) AS [NOT] [MATERIALIZED] (query) [SEARCH ...]
    [CYCLE ...], ...` lists that have a column list: those are not function calls. Only a name in such a list
    counts (not any name after a comma that happens to be followed by AS)."""
    names: set[int] = set()
    n = len(tokens)
    for w, token in enumerate(tokens):
        if not token.word("with"):
            continue
        j = w + 1 + (w + 1 < n and tokens[w + 1].word("recursive"))
        while j < n and tokens[j].kind == "ident":
            k = j + 1
            if _is(tokens, k, "("):
                close = _matching_paren(tokens, k)
                if close is None or not (close + 1 < n and tokens[close + 1].word("as")):
                    break
                names.add(j)
                k = close + 1
            if not (k < n and tokens[k].word("as")):
                break
            k += 1
            k += k < n and tokens[k].word("not")
            k += k < n and tokens[k].word("materialized")
            if not _is(tokens, k, "("):
                break
            close = _matching_paren(tokens, k)
            if close is None:
                break
            k = close + 1
            while k < n and tokens[k].word("search", "cycle"):  # SEARCH ... SET col, CYCLE ... SET col ... USING col
                cycle = tokens[k].word("cycle")
                while k < n and not tokens[k].word("set"):
                    k += 1
                k += 2
                if cycle:
                    while k < n and not tokens[k].word("using"):
                        k += 1
                    k += 2
            if not _is(tokens, k, ","):
                break
            j = k + 1
    return names


def called_functions(statement: str) -> list[str]:
    """The names of the functions a PostgreSQL statement calls (unquoted names in lower case, quoted ones as
    written; a schema other than pg_catalog named too, "schema.name"), outside literals and comments: a name
    before "(" that is not SQL syntax, a type's modifiers (`::bit(3)`, `AS numeric(10, 2)`), an alias's column
    list (`AS t(a, b)`) or a WITH query's column list."""
    tokens = _pg_tokens(statement)
    cte_names = _cte_column_lists(tokens)
    names = []
    for i, token in enumerate(tokens):
        if token.kind != "ident" or not _is(tokens, i + 1, "(") or i in cte_names:
            continue
        start = i  # the start of a qualified name: schema.name, db.schema.name
        while start >= 2 and _is(tokens, start - 1, ".") and tokens[start - 2].kind == "ident":
            start -= 2
        previous = tokens[start - 1] if start else None
        if previous is not None and (previous.word("as", "table", "into", "references")
                                     or (previous.kind == "op" and previous.text == "::")):
            continue
        qualifier = [tokens[q].text for q in range(start, i, 2)]
        if qualifier and qualifier != ["pg_catalog"]:
            names.append(".".join([*qualifier, token.text]))
        elif token.quoted or not (token.text in _SQL_WORDS or (
                previous is not None and previous.text in _SQL_WORDS_AFTER.get(token.text, ())
                and not previous.quoted)):
            names.append(token.text)
    return names


def check_postgres_functions(statement: str) -> None:
    for name in called_functions(statement):
        if name not in POSTGRES_FUNCTIONS or name in NEVER_ALLOWED:
            raise function_refused(name)


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
                                       "-c default_transaction_read_only=on "
                                       # the lexical rules called_functions() reads the statement by
                                       "-c standard_conforming_strings=on")
    except psycopg.OperationalError as exc:
        # The message may echo the URL's host and user, never its password; keep only the first line.
        raise PluginError(f"cannot connect to PostgreSQL: {str(exc).splitlines()[0]}",
                          code="database_unreachable") from None
    conn.read_only = True
    try:
        check_postgres_role(conn)
    except psycopg.Error as exc:  # e.g. a server before PostgreSQL 11, without the pg_*_server_files roles
        conn.close()
        raise PluginError(f"cannot check the database role's privileges: {str(exc).splitlines()[0]}",
                          code="role_refused") from None
    except BaseException:
        conn.close()
        raise
    return conn


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


def _pg_chunk(psycopg: Any) -> int:
    """Rows per chunk of a streamed result: libpq 17 fetches in chunks, an older one row by row."""
    return _PG_CHUNK_ROWS if psycopg.pq.version() >= 170000 else 1


_PG_CHUNK_ROWS = 100


def postgres_run(url: str, statement: str, max_rows: int, timeout: float, max_value_bytes: int = 1_000_000,
                 max_result_bytes: int = 4_000_000) -> QueryResult:
    """max_value_bytes is not enforced per value on PostgreSQL (the result's size and statement_timeout are)."""
    psycopg = _psycopg()
    check_postgres_functions(statement)
    with _pg_connect(url, timeout) as conn:
        try:
            # Rows are fetched as they come (stream(): libpq's chunked/single-row mode), not the whole result
            # first: the size and row caps stop the query (cancelled when the stream is closed) as soon as
            # they are passed, so a large result is never held in this process's memory.
            with conn.cursor() as cur, contextlib.closing(cur.stream(statement, size=_pg_chunk(psycopg))) as rows_in:
                first = next(rows_in, None)
                if cur.description is None:
                    raise refused("the statement returns no rows")
                pending = [first] if first is not None else []
                rows = _bounded_rows(lambda: pending.pop() if pending else next(rows_in, None), max_rows,
                                     max_result_bytes)
                columns = [d.name for d in cur.description]
        except psycopg.errors.ReadOnlySqlTransaction:
            raise refused("the statement would change the database") from None
        except psycopg.errors.QueryCanceled:
            raise PluginError(f"the query took longer than {timeout:g} s", code="query_timeout") from None
        except psycopg.Error as exc:
            raise PluginError(f"SQL error: {str(exc).splitlines()[0]}", code="sql_error") from None
        finally:
            conn.rollback()
    return QueryResult(columns, rows[:max_rows], len(rows) > max_rows)
