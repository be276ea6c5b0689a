"""The built-in plugins asked a small fixed question set each, with their model constraints on and off, and scored.

sql_assistant: execution accuracy (the rows of the query the model wrote against the rows of a gold query, on the
sample shop of data/shop.sql). knowledge_base answer: the expected document cited and its key fact in the answer,
over the documents of tests/plugins/data/knowledge_base/docs. support_faq: the expected entry chosen (or the
fallback where none should be); it asks no chat model, so its score is the same both ways. A score is a figure to
read, not a threshold: nothing here passes or fails.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moltbot.plugins.errors import PluginError
from moltbot.plugins.manager import PluginManager
from moltbot.settings import Settings

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parent / "data"
DOCUMENTS = REPO / "tests" / "plugins" / "data" / "knowledge_base" / "docs"
PLUGINS = ("sql_assistant", "knowledge_base", "support_faq")


@dataclass
class Questions:
    """The question sets; each item as in data/*.json."""

    sql: list[dict[str, Any]]
    knowledge_base: list[dict[str, Any]]
    support_faq: list[dict[str, Any]]

    @classmethod
    def shipped(cls) -> Questions:
        return cls(*(json.loads((DATA / f"{name}.json").read_text()) for name in ("sql", "knowledge_base",
                                                                                     "support_faq")))


@dataclass
class Score:
    """One metric of one plugin in one mode: how many of the questions met it."""

    plugin: str
    metric: str
    constrained: bool
    hits: int
    total: int
    answers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.hits / self.total if self.total else 0.0


def build_shop(path: Path) -> Path:
    """The sample shop database from data/shop.sql, made afresh."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    db = sqlite3.connect(path)
    db.executescript((DATA / "shop.sql").read_text())
    db.commit()
    db.close()
    return path


def _rows(rows: list[Any], ordered: bool) -> list[tuple[Any, ...]]:
    """Rows compared as values: floats to 2 places, in order only where the question asks for one."""
    values = [tuple(round(v, 2) if isinstance(v, float) else v for v in row) for row in rows]
    return values if ordered else sorted(values, key=repr)


def plugins_folder(root: Path, database: Path, constrained: bool) -> Path:
    """A copy of the built-in plugins with their constraint set and sql_assistant on the sample shop."""
    shutil.rmtree(root, ignore_errors=True)
    for name in PLUGINS:
        shutil.copytree(REPO / "plugins" / name, root / name)
        config_path = root / name / "config.json"
        config = json.loads(config_path.read_text())
        config["settings"].update({"constrained": constrained} if name != "support_faq" else {})
        if name == "sql_assistant":
            config["settings"]["database"] = f"sqlite:///{database}"
        config_path.write_text(json.dumps(config))
    return root


async def _ask(manager: PluginManager, plugin: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The plugin's result, or {"error": code and message} for a failure the plugin reports."""
    try:
        return await manager.execute(plugin, payload, request_id=f"eval-{plugin}")
    except PluginError as exc:
        return {"error": f"{exc.code}: {str(exc)[:300]}"}


async def score_sql(manager: PluginManager, questions: list[dict[str, Any]], database: Path,
                    constrained: bool) -> list[Score]:
    """Execution accuracy, and how many queries ran at all (parsed, passed the guard, no error)."""
    gold = sqlite3.connect(database)
    ran = Score("sql_assistant", "query ran", constrained, 0, len(questions))
    right = Score("sql_assistant", "execution accuracy", constrained, 0, len(questions))
    try:
        for item in questions:
            result = await _ask(manager, "sql_assistant", {"question": item["question"]})
            ordered = bool(item.get("ordered"))
            ok = "error" not in result and \
                _rows(result["rows"], ordered) == _rows(gold.execute(item["sql"]).fetchall(), ordered)
            ran.hits += "error" not in result
            right.hits += ok
            right.answers.append({"question": item["question"], "correct": ok,
                                  "got": result.get("sql") or result.get("error"), "rows": result.get("rows")})
    finally:
        gold.close()
    return [right, ran]


def _citations(result: dict[str, Any]) -> tuple[set[str], bool]:
    """The sources the answer cites, and whether every bracketed number in it is a passage that was sent."""
    sent = len(result["citations"])
    numbers = [int(n) for n in re.findall(r"\[(\d+)\]", result["answer"])]
    cited = {result["citations"][n - 1]["source"] for n in numbers if 1 <= n <= sent}
    return cited, all(1 <= n <= sent for n in numbers) and "[" not in re.sub(r"\[\d+\]", "", result["answer"])


async def score_knowledge_base(manager: PluginManager, questions: list[dict[str, Any]],
                               constrained: bool) -> list[Score]:
    """The expected source cited and the key fact present (both, and each alone), and answers citing only
    passages sent."""
    names = ("cited and fact", "expected source cited", "key fact present", "cites only passages sent")
    scores = {name: Score("knowledge_base", name, constrained, 0, len(questions)) for name in names}
    for item in questions:
        result = await _ask(manager, "knowledge_base", {"action": "answer", "query": item["question"]})
        cited, only_sent = _citations(result) if "error" not in result else (set(), False)
        fact = "error" not in result and item["fact"].lower() in result["answer"].lower()
        met = {"expected source cited": item["source"] in cited, "key fact present": fact,
               "cites only passages sent": only_sent}
        met["cited and fact"] = met["expected source cited"] and fact
        for name, ok in met.items():
            scores[name].hits += ok
        scores["cited and fact"].answers.append({"question": item["question"], "correct": met["cited and fact"],
                                                 "got": result.get("answer") or result.get("error"),
                                                 "cited": sorted(cited)})
    return list(scores.values())


async def score_support_faq(manager: PluginManager, questions: list[dict[str, Any]],
                            constrained: bool) -> list[Score]:
    """The expected FAQ entry chosen (None: the fallback)."""
    score = Score("support_faq", "expected answer chosen", constrained, 0, len(questions))
    for item in questions:
        result = await _ask(manager, "support_faq", {"question": item["question"]})
        ok = "error" not in result and result["matched_question"] == item["expected"]
        score.hits += ok
        score.answers.append({"question": item["question"], "correct": ok,
                              "got": result.get("matched_question") or result.get("error")})
    return [score]


async def evaluate(models: Any, work: Path, questions: Questions,
                   log: Callable[[str], None] = lambda _: None) -> list[Score]:
    """Every score, unconstrained then constrained; the plugins' data (the knowledge base index) is shared by
    both runs under work/cache."""
    database = build_shop(work / "shop.sqlite3")
    scores: list[Score] = []
    for constrained in (False, True):
        root = plugins_folder(work / ("plugins-constrained" if constrained else "plugins-free"), database,
                              constrained)
        manager = PluginManager(Settings(plugins_dir=root, cache_dir=work / "cache", plugin_isolation="thread",
                                         plugin_timeout=600).validate(), models=models)
        await manager.load_all()
        try:
            documents = manager.data_root() / "knowledge_base" / "documents"
            shutil.rmtree(documents, ignore_errors=True)
            shutil.copytree(DOCUMENTS, documents)
            await manager.execute("knowledge_base", {"action": "ingest"}, request_id="eval-ingest")
            mode = "constrained" if constrained else "unconstrained"
            log(f"sql_assistant, {mode}")
            scores += await score_sql(manager, questions.sql, database, constrained)
            log(f"knowledge_base, {mode}")
            scores += await score_knowledge_base(manager, questions.knowledge_base, constrained)
            log(f"support_faq, {mode}")
            scores += await score_support_faq(manager, questions.support_faq, constrained)
        finally:
            await manager.close()
    return scores


def table(scores: list[Score]) -> str:
    """A markdown table: one row per plugin and metric, unconstrained and constrained side by side."""
    lines = ["| plugin | metric | unconstrained | constrained |", "|---|---|---|---|"]
    by_key = {(s.plugin, s.metric, s.constrained): s for s in scores}
    for plugin, metric in dict.fromkeys((s.plugin, s.metric) for s in scores):
        cells = [f"{s.hits}/{s.total} ({s.rate:.0%})" for s in (by_key[plugin, metric, False],
                                                              by_key[plugin, metric, True])]
        lines.append(f"| {plugin} | {metric} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)
