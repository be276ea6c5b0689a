"""sql_assistant's memory bounds (issue #22, item 1): a result row is bounded before it reaches this process.

Each query runs in a child process so that its peak RSS (ru_maxrss) is its own, measured from after a warm-up
query (libraries loaded) to the end; the child's address space is capped at 3 GiB so that an unbounded query
fails there instead of pressing on the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from plugin_helpers import BUILTIN_PLUGINS, make_app
from test_plugin_sql_limits import sql  # noqa: F401 (the fixture)

pytestmark = pytest.mark.anyio

_CHILD = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from sql_assistant import guard
run = getattr(guard, sys.argv[2])
target, statement, kwargs = sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
target = Path(target) if run is guard.sqlite_run else target
run(target, "SELECT 1", 10, 5.0, **kwargs)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    run(target, statement, 1000, 10.0, **kwargs)
    code = None
except guard.PluginError as exc:
    code = exc.code
except MemoryError:
    code = "MemoryError"
print(json.dumps({"code": code, "growth_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024}))
"""


def run_measured(function: str, target: str, statement: str, **kwargs) -> dict:
    """The error code (or None) of guard.<function>(target, statement) and the RSS growth it caused, in MB."""
    child = subprocess.run([sys.executable, "-c", _CHILD, str(BUILTIN_PLUGINS), function, target, statement,
                            json.dumps(kwargs)], capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr[-2000:]
    return json.loads(child.stdout.splitlines()[-1])


def wide(columns: int) -> str:
    """The issue's query: a ~1 MB string (under the 1 000 000-byte value cap) selected `columns` times."""
    return ("WITH RECURSIVE d(v, n) AS (SELECT 'x', 0 UNION ALL SELECT v || v, n + 1 FROM d WHERE n < 19), "
            "big(s) AS (SELECT v || substr(v, 1, 465712) FROM d WHERE n = 19) "
            f"SELECT {', '.join(['s'] * columns)} FROM big")


async def test_the_400_column_query_is_refused_before_any_row_is_built(sql):  # noqa: F811
    manager, database = sql
    measured = run_measured("sqlite_run", str(database), wide(400))
    # Unbounded, this row alone is 400 MB in SQLite and as much again in Python (1.14 GB measured in the issue).
    assert measured["code"] == "too_many_columns" and measured["growth_mb"] < 50, measured
    _, reply = await make_app(manager).asgi_client.post("/v1/plugins/sql_assistant/execute",
                                                        json={"sql": wide(400)})
    assert reply.status == 422 and reply.json["error"]["code"] == "too_many_columns"
    assert "more than 100 columns" in reply.json["error"]["message"]


async def test_a_row_at_the_column_limit_stays_within_columns_times_the_value_cap(sql):  # noqa: F811
    """The worst row the limits allow: 100 columns of 990 000 bytes. SQLite builds it whole before handing it
    over (its registers, then Python's tuple, then its JSON): measured 238 MB here, against 1.09 GB for the
    400-column row before SQLITE_LIMIT_COLUMN. The stated bound: 3 x max_columns x max_value_bytes."""
    manager, database = sql
    measured = run_measured("sqlite_run", str(database), wide(100), max_result_bytes=20_000)
    assert measured["code"] == "result_too_large" and measured["growth_mb"] < 3 * 100, measured
