"""SQL assistant: a question in plain language becomes one read-only SELECT, run with row and time limits."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from moltbot.plugins import BasePlugin, PluginError

from .grammar import sql_grammar
from .guard import extract_sql, postgres_run, postgres_schema, postgres_tables, sqlite_run, sqlite_schema, sqlite_tables

SYSTEM_PROMPT = """You translate questions into SQL for a {dialect} database.
Write exactly one read-only SELECT statement (a WITH ... SELECT is fine). Never modify data.
Use only these tables and columns:

{schema}

Reply with the SQL only, in a ```sql fenced block."""


def grammar_refused(exc: PluginError) -> bool:
    """Whether the model refused structured_outputs (a service model); the error names the field only in its
    text (context.models keeps no param)."""
    return exc.code == "model_error" and "structured_outputs is not supported" in str(exc)


class SqlAssistantPlugin(BasePlugin):
    def __init__(self, config):
        super().__init__(config)
        self.database = str(config.get("database") or "")
        self.max_rows = int(config.get("max_rows", 200))
        self.timeout = float(config.get("timeout_seconds", 5))
        self.chat_model = config.get("chat_model") or None
        self.max_tokens = int(config.get("max_tokens", 256))
        self.schema_max_chars = int(config.get("schema_max_chars", 6000))
        self.max_value_bytes = int(config.get("max_value_bytes", 1_000_000))
        self.max_result_bytes = int(config.get("max_result_bytes", 4_000_000))
        self.max_columns = int(config.get("max_columns", 100))
        self.work_mem = str(config.get("work_mem", "16MB"))
        self.temp_file_limit = str(config.get("temp_file_limit", "256MB"))
        # The model writes under a grammar of SELECTs over the database's own tables (grammar.py); off: free text.
        self.constrained = config.get("constrained", True)
        if not isinstance(self.constrained, bool):
            raise ValueError("constrained must be true or false")
        if self.max_rows < 1 or self.timeout <= 0:
            raise ValueError("max_rows must be at least 1 and timeout_seconds above 0")
        if self.max_value_bytes < 1000 or self.max_result_bytes < 1000:
            raise ValueError("max_value_bytes and max_result_bytes must be at least 1000")
        if not 1 <= self.max_columns <= 2000:
            raise ValueError("max_columns must be 1-2000")
        # Passed to the server as connection options: a size and nothing else.
        if not all(re.fullmatch(r"\d+(kB|MB|GB)?", v) for v in (self.work_mem, self.temp_file_limit)):
            raise ValueError("work_mem and temp_file_limit must be sizes such as 16MB")

    def _target(self, context) -> tuple[str, Any]:
        """('postgresql', url) or ('sqlite', path); a relative SQLite path is in the plugin's data folder."""
        database = self.database
        if not database:
            raise PluginError("no database configured: set settings.database in the plugin's config.json "
                              "(or the SQL_ASSISTANT_DATABASE environment variable)", code="database_missing")
        if database.startswith(("postgresql://", "postgres://")):
            return "postgresql", database
        path = Path(database.removeprefix("sqlite:///") if database.startswith("sqlite:///") else
                    database.removeprefix("sqlite:"))
        return "sqlite", path if path.is_absolute() else context.data_dir / path

    def schema(self, context) -> tuple[str, str]:
        dialect, target = self._target(context)
        text = sqlite_schema(target, self.schema_max_chars) if dialect == "sqlite" else \
            postgres_schema(target, self.schema_max_chars)
        return ("SQLite" if dialect == "sqlite" else "PostgreSQL"), text

    def grammar_options(self, context) -> dict[str, Any]:
        """The chat options that hold the model to the database's grammar, or none when unconstrained."""
        if not self.constrained:
            return {}
        dialect, target = self._target(context)
        tables = sqlite_tables(target) if dialect == "sqlite" else postgres_tables(target)
        try:
            grammar = sql_grammar(tables)
        except ValueError as exc:
            raise PluginError(f"cannot ask for SQL: {exc}", code="database_empty") from None
        if grammar is None:
            context.logger.info("the schema is too large for a grammar; asking the model without one")
            return {}
        return {"structured_outputs": {"grammar": grammar}}

    def _ask(self, context, messages: list[dict[str, str]]) -> dict[str, Any]:
        """The model's reply, under the grammar where the model takes one; a service model refuses
        structured_outputs (its upstream would not honour it), so it is asked again without."""
        options = self.grammar_options(context)
        try:
            return context.models.chat(messages, model=self.chat_model, max_tokens=self.max_tokens,
                                       temperature=0.0, **options)
        except PluginError as exc:
            if not options or not grammar_refused(exc):
                raise
            context.logger.info("the chat model takes no grammar; asking it without one")
            return context.models.chat(messages, model=self.chat_model, max_tokens=self.max_tokens,
                                       temperature=0.0)

    def execute(self, context):
        request = context.input
        max_rows = min(int(request.get("max_rows") or self.max_rows), self.max_rows)
        result: dict[str, Any] = {}
        if "question" in request:
            dialect, schema = self.schema(context)
            messages = [{"role": "system", "content": SYSTEM_PROMPT.format(dialect=dialect, schema=schema)},
                        {"role": "user", "content": request["question"]}]
            reply = self._ask(context, messages)
            text = reply.get("content") or ""
            sql = extract_sql(text)
            if sql is None:
                raise PluginError(f"the model did not write a SELECT statement; it replied: {text[:300]!r}",
                                  code="no_sql")
            result.update(question=request["question"], model=reply.get("model"))
            if context.log_prompts:
                context.logger.info("model wrote SQL: %s", sql)
        else:
            sql = request["sql"]
        dialect, target = self._target(context)
        started = time.perf_counter()
        timeout = min(self.timeout, max(context.time_left(), 0.1))
        bounds = {"max_value_bytes": self.max_value_bytes, "max_result_bytes": self.max_result_bytes}
        rows = sqlite_run(target, sql, max_rows, timeout, max_columns=self.max_columns, **bounds) \
            if dialect == "sqlite" else \
            postgres_run(target, sql, max_rows, timeout, work_mem=self.work_mem,
                         temp_file_limit=self.temp_file_limit, **bounds)
        # The statement that ran: on PostgreSQL the one re-printed from its parse tree, not the text as given.
        result.update(sql=rows.statement, columns=rows.columns, rows=rows.rows, row_count=len(rows.rows),
                      truncated=rows.truncated, elapsed_ms=round((time.perf_counter() - started) * 1000, 2))
        return result
