"""`make eval`'s harness (bench/eval) runs end to end and counts right: a scripted chat model answers some questions
right and some wrong in known ways; embeddings, plugins and the sample shop are the real ones."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from typing import Any

import pytest

from bench.eval.harness import DATA, Questions, build_shop, evaluate, table
from moltbot.engine.registry import ModelRegistry
from moltbot.settings import Settings

SQL = json.loads((DATA / "sql.json").read_text())[:3]
KB = json.loads((DATA / "knowledge_base.json").read_text())[:3]
FAQ = [{"question": "How long does delivery take?", "expected": "How long does delivery take?"},  # right
       {"question": "How much does shipping cost?", "expected": "Do you ship internationally?"},  # labelled wrong
       {"question": "What is the capital of Australia?", "expected": None}]  # the fallback, right


class ScriptedModels:
    """The real embeddings; a chat model that answers the first question of each plugin right and the others
    wrong (SQL: rows that differ, then no SQL at all; knowledge base: the right passage without the fact, then the
    fact citing a passage never sent)."""

    def __init__(self, registry: ModelRegistry):
        self.registry = registry
        self.calls: list[dict[str, Any]] = []

    def model_names(self, task: str | None = None) -> list[str]:
        return self.registry.model_names(task)

    async def embed(self, texts: list[str], *, model: str | None = None) -> list[list[float]]:
        return await self.registry.embed(texts, model=model)

    async def chat(self, messages: list[dict[str, Any]], **options: Any) -> dict[str, Any]:
        self.calls.append({"system": messages[0]["content"], **options})
        prompt = messages[-1]["content"]
        content = self._sql(prompt) if "into SQL" in messages[0]["content"] else self._answer(prompt)
        return {"content": content, "finish_reason": "stop", "model": "scripted", "usage": {}, "tool_calls": None}

    @staticmethod
    def _sql(question: str) -> str:
        index = [q["question"] for q in SQL].index(question)
        return [f"```sql\n{SQL[0]['sql']}\n```", "```sql\nSELECT name FROM products\n```", "I cannot say."][index]

    @staticmethod
    def _answer(prompt: str) -> str:
        question = prompt.rsplit("Question: ", 1)[1]
        index = [q["question"] for q in KB].index(question)
        item = KB[index]
        sent = dict(re.findall(r"^\[(\d+)\] \(source: ([^,)]+)", prompt, re.M))
        ref = next(n for n, source in sent.items() if source == item["source"])
        return [f"It is {item['fact']} [{ref}].", f"See the policy [{ref}].", f"It is {item['fact']} [9]."][index]


@pytest.fixture(scope="module")
def registry(tmp_path_factory, defaults_dir):
    models = tmp_path_factory.mktemp("models")
    registry = ModelRegistry(Settings(models_dir=models, defaults_dir=defaults_dir, default_models="on",
                                      plugins_dir=models).validate())
    registry.load_all()
    yield registry
    asyncio.run(registry.close())


def test_the_harness_counts_right_and_wrong_answers_both_ways(tmp_path, registry):
    models = ScriptedModels(registry)
    scores = asyncio.run(evaluate(models, tmp_path, Questions(SQL, KB, FAQ)))
    got = {(s.plugin, s.metric, s.constrained): (s.hits, s.total) for s in scores}
    for constrained in (False, True):
        assert got["sql_assistant", "execution accuracy", constrained] == (1, 3)
        assert got["sql_assistant", "query ran", constrained] == (2, 3)
        assert got["knowledge_base", "cited and fact", constrained] == (1, 3)
        assert got["knowledge_base", "expected source cited", constrained] == (2, 3)
        assert got["knowledge_base", "key fact present", constrained] == (2, 3)
        assert got["knowledge_base", "cites only passages sent", constrained] == (2, 3)
        assert got["support_faq", "expected answer chosen", constrained] == (2, 3)
    assert len(got) == 14
    # The constrained run asked under the plugins' grammars, the other not.
    sql_calls = [c for c in models.calls if "into SQL" in c["system"]]
    kb_calls = [c for c in models.calls if "into SQL" not in c["system"]]
    assert len(sql_calls) == len(kb_calls) == 6
    assert ["structured_outputs" in c for c in sql_calls] == [False] * 3 + [True] * 3
    assert ["structured_outputs" in c for c in kb_calls] == [False] * 3 + [True] * 3
    assert "| sql_assistant | execution accuracy | 1/3 (33%) | 1/3 (33%) |" in table(scores)


def test_the_gold_queries_run_on_the_sample_shop(tmp_path):
    database = sqlite3.connect(build_shop(tmp_path / "shop.sqlite3"))
    for item in json.loads((DATA / "sql.json").read_text()):
        assert database.execute(item["sql"]).fetchall(), item["question"]  # every question has an answer
    database.close()
