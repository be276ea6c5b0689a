"""support_faq with the real embeddings and a labelled question set; code_assistant's prompt wiring."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from moltbot.plugins.manager import PluginManager
from plugin_helpers import BUILTIN_PLUGINS, make_app, make_settings

pytestmark = pytest.mark.anyio
DATA = Path(__file__).parent / "data"


@pytest.fixture
async def builtins(tmp_path, models):
    manager = PluginManager(make_settings(BUILTIN_PLUGINS, tmp_path), models=models)
    await manager.reload(["support_faq", "code_assistant"])
    yield manager
    await manager.close()


async def test_support_faq_answers_paraphrases_and_falls_back_off_topic(builtins, models):
    labelled = json.loads((DATA / "support_faq_questions.json").read_text())
    faq = {e["question"]: e["answer"] for e in json.loads((BUILTIN_PLUGINS / "support_faq" / "faq.json").read_text())}
    correct = answered = 0
    for item in labelled["answerable"]:
        result = await builtins.execute("support_faq", {"question": item["question"]}, request_id="t")
        assert len(result["suggestions"]) == 3
        correct += result["suggestions"][0]["question"] == item["expected"]
        if not result["fallback"]:
            answered += 1
            assert result["answer"] == faq[result["matched_question"]]
            assert result["score"] >= result["threshold"] == 0.45
    for question in labelled["unanswerable"]:
        result = await builtins.execute("support_faq", {"question": question, "suggestions": 1}, request_id="t")
        assert result["fallback"] is True and result["matched_question"] is None
        assert result["answer"].startswith("Sorry, I don't have an answer") and result["score"] < 0.45
    total = len(labelled["answerable"])
    print(f"\nsupport_faq: top-1 {correct}/{total} paraphrases matched, {answered}/{total} answered above the "
          f"threshold, {len(labelled['unanswerable'])}/{len(labelled['unanswerable'])} off-topic questions "
          "got the fallback")
    assert correct / total >= 0.8 and answered / total >= 0.75

    # The phrasings are embedded once, not on every question.
    before = models.embedded_texts
    await builtins.execute("support_faq", {"question": "Is delivery free?"}, request_id="t")
    assert models.embedded_texts == before + 1


async def test_support_faq_reads_a_changed_file_and_rejects_a_broken_one(tmp_path, models):
    root = tmp_path / "plugins"
    shutil.copytree(BUILTIN_PLUGINS / "support_faq", root / "support_faq")
    faq_file = root / "support_faq" / "faq.json"
    manager = PluginManager(make_settings(root, tmp_path), models=models)
    await manager.load_all()
    first = await manager.execute("support_faq", {"question": "Do you have a shop in Berlin?"}, request_id="t")
    assert first["fallback"] is True

    faq_file.write_text(json.dumps([{"question": "Do you have a physical store?",
                                     "answer": "Our only store is at Alexanderplatz 1, Berlin."}]))
    second = await manager.execute("support_faq", {"question": "Do you have a shop in Berlin?"}, request_id="t")
    assert second["fallback"] is False and "Alexanderplatz" in second["answer"]

    faq_file.write_text(json.dumps([{"question": "no answer here"}]))
    await manager.reload()
    [status] = manager.describe()
    assert status["status"] == "loaded" and "entry 1 needs a non-empty question and answer" in status["error"]
    await manager.close()


async def test_code_assistant_uses_the_template_of_each_task(builtins, models):
    app = make_app(builtins)
    code = "def add(a, b):\n    return a + b\n"
    expected = {"explain": "Explain what the following python code does",
                "tests": "Write unit tests for the following python code using pytest",
                "review": "Review the following python code as in a pull request"}
    for task, opening in expected.items():
        _, reply = await app.asgi_client.post("/v1/plugins/code_assistant/execute",
                                              json={"task": task, "code": code, "focus": "integer overflow",
                                                    "max_tokens": 24})
        assert reply.status == 200, reply.body
        call = models.chat_calls[-1]
        system, user = call["messages"]
        assert system["role"] == "system" and user["content"].startswith(opening)
        assert "```python\ndef add(a, b):\n    return a + b\n```" in user["content"]
        assert "Pay special attention to: integer overflow." in user["content"]
        result = reply.json["result"]
        assert result["task"] == task and result["language"] == "python"
        assert result["text"] == models.chat_replies[-1]["content"]
        assert call["max_tokens"] == 24 and call["temperature"] == 0.2
    assert len(models.chat_calls) == 3

    go = 'package main\nfunc main() {\n    x := 1\n}\n'
    await builtins.execute("code_assistant", {"task": "tests", "code": go, "max_tokens": 8}, request_id="t")
    assert "go code using the testing package" in models.chat_calls[-1]["messages"][1]["content"]
    await builtins.execute("code_assistant", {"task": "tests", "code": "foo bar", "language": "Elixir",
                                              "framework": "ExUnit", "max_tokens": 8}, request_id="t")
    assert "elixir code using ExUnit" in models.chat_calls[-1]["messages"][1]["content"]

    _, reply = await app.asgi_client.post("/v1/plugins/code_assistant/execute", json={"task": "golf", "code": "x"})
    assert reply.status == 400 and reply.json["error"]["param"] == "task"


async def test_a_model_the_service_does_not_serve_is_a_clear_error(tmp_path, models):
    root = tmp_path / "plugins"
    shutil.copytree(BUILTIN_PLUGINS / "code_assistant", root / "code_assistant")
    config = json.loads((root / "code_assistant" / "config.json").read_text())
    config["settings"]["chat_model"] = "llama-70b-not-here"
    (root / "code_assistant" / "config.json").write_text(json.dumps(config))
    manager = PluginManager(make_settings(root, tmp_path), models=models)
    await manager.load_all()
    _, reply = await make_app(manager).asgi_client.post("/v1/plugins/code_assistant/execute",
                                                        json={"task": "explain", "code": "x = 1", "max_tokens": 4000})
    assert models.chat_calls[-1]["max_tokens"] == 512  # capped by the plugin's own max_tokens
    assert reply.status == 422
    assert reply.json["error"]["code"] == "model_not_found" and "llama-70b-not-here" in reply.json["error"]["message"]
    await manager.close()
