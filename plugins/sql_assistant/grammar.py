"""A Lark grammar (llguidance's dialect) of the read-only SELECTs a model may write over one database's own tables.

The chat model generates under it, so what it writes is a SELECT naming only tables and columns that exist and
calling only listed aggregates: every admitted query parses. The guard still checks and runs it as any query.
The subset: one table, or two joined on a column each; rows (the columns or *, DISTINCT, ORDER BY, LIMIT), totals
(COUNT/SUM/AVG/MIN/MAX), or totals per value of one column (GROUP BY, HAVING, ORDER BY, LIMIT); WHERE conditions
joined by AND/OR; in the ```sql fenced block the prompt asks for. Aggregates stand only where both SQLite and
PostgreSQL accept them (a selected column beside them is the one grouped by). Lengths are bounded, so a query
always ends within a few hundred tokens.
"""

from __future__ import annotations

import json
import re
from functools import cache, lru_cache

# Tables are (qualifier or None, name, (columns, ...)); the qualifier is a PostgreSQL schema other than public.
Table = tuple[str | None, str, tuple[str, ...]]

# SQLite's keywords that PostgreSQL's parser takes as names (its own keywords come from pglast).
SQLITE_KEYWORDS = frozenset({
    "abort", "action", "after", "analyze", "attach", "autoincrement", "before", "begin", "by", "cascade", "cast",
    "conflict", "database", "deferred", "detach", "each", "exclusive", "explain", "fail", "filter", "glob",
    "ignore", "immediate", "indexed", "instead", "isnull", "key", "match", "no", "notnull", "of", "offset", "plan",
    "pragma", "query", "raise", "recursive", "regexp", "reindex", "release", "rename", "replace", "restrict",
    "row", "rows", "savepoint", "temp", "temporary", "trigger", "vacuum", "view", "virtual", "without"})
# Joins are offered between every two tables of a database of at most this many (the grammar grows as its square),
# and only while the grammar stays under MAX_GRAMMAR_CHARS; a schema too large for it even without joins gets
# none. llguidance compiles such a grammar in about 0.3 s (it refuses one past 65,000 symbols).
MAX_JOIN_TABLES = 12
MAX_GRAMMAR_CHARS = 200_000

# Strings hold no quote, backslash or control character (PostgreSQL's parser ends the text at a NUL). A clause
# starts on a new line or after a space, as the model likes. An alias (of an aggregate) has an underscore: no
# keyword SQLite refuses there has one, and PostgreSQL takes any word after AS.
COMMON = r"""
value: NUMBER | STRING
NUMBER: /-?[0-9]{1,9}(\.[0-9]{1,4})?/
STRING: /'[^'\\\x00-\x1f\x7f]{0,40}'/
LIMIT: /[1-9][0-9]{0,3}/
CMP: " = " | " <> " | " < " | " <= " | " > " | " >= "
AGG: "SUM(" | "AVG(" | "MIN(" | "MAX(" | "COUNT(" | "COUNT(DISTINCT "
DIR: " ASC" | " DESC"
SEP: " " | "\n"
ALIAS: /[a-z][a-z0-9]{0,15}(_[a-z0-9]{1,15}){1,3}/
"""


@cache
def _keywords() -> frozenset[str] | None:
    """Words written quoted as names: PostgreSQL's reserved, type/function and column-name keywords and SQLite's;
    None without pglast (then every name is quoted, which both databases read alike)."""
    try:
        from pglast.keywords import COL_NAME_KEYWORDS, RESERVED_KEYWORDS, TYPE_FUNC_NAME_KEYWORDS
    except ImportError:
        return None
    return frozenset(RESERVED_KEYWORDS | COL_NAME_KEYWORDS | TYPE_FUNC_NAME_KEYWORDS) | SQLITE_KEYWORDS


def quote_name(name: str) -> str:
    """The name as SQL writes it: bare when it is a plain lower-case word that is no keyword, else double-quoted."""
    keywords = _keywords()
    if keywords is not None and re.fullmatch(r"[a-z_][a-z0-9_]*", name) and name not in keywords:
        return name
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _alternatives(texts: list[str]) -> str:
    return " | ".join(_literal(text) for text in texts)


def _queries(key: str, source: str, columns: list[str]) -> list[str]:
    """The queries over one FROM (`source`, a rule) and its columns (`columns`: literals or rules), named by key:
    rows (optionally DISTINCT, or ordered), totals (aggregates only), or totals grouped by one column that is also
    selected, so that SQLite and PostgreSQL both accept every aggregate where it stands."""
    c, agg, named, where = f"c_{key}", f"agg_{key}", f"named_{key}", f"where_{key}"
    grouped = " | ".join(f'"SELECT " {x} ", " totals_{key} SEP "GROUP BY " {x} group_{key}' for x in columns)
    return [
        f"{c}: {' | '.join(columns)}",
        f'{agg}: AGG {c} ")" | "COUNT(*)"',
        f'{named}: {agg} (" AS " ALIAS)?',
        f'{where}: (SEP "WHERE " cond_{key} ((" AND " | " OR ") cond_{key}){{0,2}})?',
        f'cond_{key}: {c} CMP (value | {c}) | {c} " IS NULL" | {c} " IS NOT NULL" | {c} " LIKE " STRING '
        f'| {c} " BETWEEN " value " AND " value | {c} " IN (" value (", " value){{0,3}} ")"',
        f'rows_{key}: "SELECT " ("*" | {c} (", " {c}){{0,4}}) {source} {where} '
        f'(SEP "ORDER BY " {c} DIR? (", " {c} DIR?){{0,1}})? (SEP "LIMIT " LIMIT)? '
        f'| "SELECT DISTINCT " {c} (", " {c}){{0,2}} {source} {where}',
        # What follows "SELECT " in a query of totals, up to its WHERE: the grouped queries share it.
        f'totals_{key}: {named} (", " {named}){{0,2}} {source} {where}',
        f"grouped_{key}: {grouped}",
        f'group_{key}: (SEP "HAVING " {agg} CMP value)? (SEP "ORDER BY " {agg} DIR?)? (SEP "LIMIT " LIMIT)?',
        f'query_{key}: rows_{key} | "SELECT " totals_{key} | grouped_{key}',
    ]


def _written(table: Table) -> str:
    qualifier, name, _ = table
    return (quote_name(qualifier) + "." if qualifier else "") + quote_name(name)


def _table_rules(i: int, table: Table) -> list[str]:
    """A query over one table alone, its columns written bare; and each column written qualified (q{i}_{n}),
    for the joins."""
    return [f'from_{i}: SEP "FROM " {_literal(_written(table))}',
            *(f"q{i}_{n}: {_literal(f'{_written(table)}.{quote_name(c)}')}" for n, c in enumerate(table[2])),
            *_queries(str(i), f"from_{i}", [_literal(quote_name(c)) for c in table[2]])]


def _join_rules(i: int, a: Table, j: int, b: Table) -> list[str]:
    """A query over table a joined to table b on one column of each, its columns written qualified."""
    key = f"{i}_{j}"
    left, right = [f"q{i}_{n}" for n in range(len(a[2]))], [f"q{j}_{n}" for n in range(len(b[2]))]
    return [f'from_{key}: SEP "FROM " {_literal(_written(a))} SEP "JOIN " {_literal(_written(b))} '
            f'" ON " ({" | ".join(left)}) " = " ({" | ".join(right)})',
            *_queries(key, f"from_{key}", left + right)]


@lru_cache(maxsize=32)
def sql_grammar(tables: tuple[Table, ...]) -> str | None:
    """The grammar for a database with these tables, or None where it would pass MAX_GRAMMAR_CHARS (cached: the
    plugin builds it once per schema)."""
    tables = tuple(t for t in tables if t[2])
    if not tables:
        raise ValueError("the database has no tables with columns")
    singles = [rule for i, table in enumerate(tables) for rule in _table_rules(i, table)]
    joins: list[str] = []
    if len(tables) <= MAX_JOIN_TABLES:
        joins = [rule for i in range(len(tables)) for j in range(i + 1, len(tables))
                 for rule in _join_rules(i, tables[i], j, tables[j])]
    for extra in (joins, []):
        queries = [f"query_{i}" for i in range(len(tables))] + [r.split(":", 1)[0] for r in extra
                                                                 if r.startswith("query_")]
        start = ['start: "```sql\\n" query ";"? "\\n```"', "query: " + " | ".join(queries)]
        grammar = "\n".join(start + singles + extra) + COMMON
        if len(grammar) <= MAX_GRAMMAR_CHARS:
            return grammar
    return None
