"""knowledge_base with the real all-MiniLM-L6-v2 embeddings over a small labelled document set."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from moltbot.plugins.errors import PluginError
from moltbot.plugins.manager import PluginManager
from plugin_helpers import BUILTIN_PLUGINS, make_app, make_settings, write_pdf
from plugin_models import RecordingModels

pytestmark = pytest.mark.anyio
DATA = Path(__file__).parent / "data" / "knowledge_base"


def copy_documents(target: Path) -> Path:
    shutil.copytree(DATA / "docs", target)
    pdf = json.loads((DATA / "product_pricing_pages.json").read_text())
    write_pdf(target / pdf["file"], pdf["pages"])
    return target


@pytest.fixture
async def kb(tmp_path, models):
    """The shipped knowledge_base plugin with its shipped config, documents in its data folder."""
    settings = make_settings(BUILTIN_PLUGINS, tmp_path, plugin_timeout=120)
    manager = PluginManager(settings, models=models)
    await manager.reload(["knowledge_base"])
    documents = copy_documents(manager.data_root() / "knowledge_base" / "documents")
    yield manager, documents
    await manager.close()


async def run(manager: PluginManager, **payload):
    return await manager.execute("knowledge_base", payload, request_id="test")


async def test_ingest_recall_and_incremental_reingest(kb, models):
    manager, documents = kb
    report = await run(manager, action="ingest")
    files = sorted(p.relative_to(documents).as_posix() for p in documents.rglob("*") if p.is_file())
    assert report["added"] == len(files) == 10 and report["errors"] == []
    assert report["total"] == {"files": 10, "chunks": report["chunks"]} and report["chunks"] >= 10
    print(f"\nknowledge_base ingest: {report['chunks']} chunks from {len(files)} files in {report['seconds']} s "
          f"= {report['chunks_per_second']} chunks/s (embedding {report['embed_seconds']} s)")

    questions = json.loads((DATA / "questions.json").read_text())
    hits_at_5 = hits_at_1 = 0
    reciprocal_ranks = []
    for item in questions:
        result = await run(manager, action="query", query=item["question"], top_k=5)
        sources = [r["source"] for r in result["results"]]
        scores = [r["score"] for r in result["results"]]
        assert len(sources) == 5 and scores == sorted(scores, reverse=True)
        hits_at_5 += item["source"] in sources
        hits_at_1 += sources[0] == item["source"]
        reciprocal_ranks.append(1 / (sources.index(item["source"]) + 1) if item["source"] in sources else 0.0)
    recall_at_5 = hits_at_5 / len(questions)
    print(f"knowledge_base retrieval on {len(questions)} labelled questions: recall@5 {recall_at_5:.2f}, "
          f"recall@1 {hits_at_1 / len(questions):.2f}, MRR {sum(reciprocal_ranks) / len(questions):.2f}")
    assert recall_at_5 >= 0.9

    pdf_hit = (await run(manager, action="query", query="price of the Pro plan per user", top_k=1))["results"][0]
    assert pdf_hit["source"] == "sales/product_pricing.pdf" and pdf_hit["location"] == "page 1"
    assert "25 euros" in pdf_hit["text"]
    html_texts = [r["text"] for r in (await run(manager, action="query", query="analytics console log",
                                                    top_k=50))["results"]]
    assert not any("console.log" in t or "font-family" in t for t in html_texts)  # scripts and styles skipped

    # Nothing changed: nothing is read again or embedded.
    embedded_before = models.embedded_texts
    again = await run(manager, action="ingest")
    assert (again["added"], again["updated"], again["unchanged"], again["chunks"]) == (0, 0, 10, 0)
    assert models.embedded_texts == embedded_before

    # A new mtime with the same bytes is not a change either.
    coffee = documents / "office_coffee_machine.txt"
    os.utime(coffee, ns=(time.time_ns(), time.time_ns() + 5_000_000_000))
    assert (await run(manager, action="ingest"))["unchanged"] == 10
    assert models.embedded_texts == embedded_before

    # One file edited, one deleted, one added: only those are processed.
    coffee.write_text("The kitchen now has a tea station with twelve kinds of loose-leaf tea next to the kettle.\n")
    (documents / "parking.html").unlink()
    (documents / "policies" / "pets.md").write_text("# Dogs at work\nWell-behaved dogs may come to the office on "
                                                     "Tuesdays if the whole team agrees.\n")
    changed = await run(manager, action="ingest")
    assert (changed["added"], changed["updated"], changed["removed"], changed["unchanged"]) == (1, 1, 1, 8)
    assert models.embedded_texts - embedded_before == changed["chunks"] == 2
    top = (await run(manager, action="query", query="Can I bring my dog to the office?"))["results"][0]
    assert top["source"] == "policies/pets.md"
    sources = {r["source"] for r in (await run(manager, action="query", query="parking permit", top_k=50))["results"]}
    assert "parking.html" not in sources
    tea = (await run(manager, action="query", query="what tea is there in the kitchen", top_k=1))["results"][0]
    assert tea["source"] == "office_coffee_machine.txt" and "tea station" in tea["text"]

    # The index is on disk: a fresh plugin instance (a reload) finds it without ingesting again.
    await manager.reload(["knowledge_base"])
    stats = await run(manager, action="stats")
    assert stats["files"] == 10 and stats["embedding_model"] == "all-minilm-l6-v2"


async def test_bad_files_and_paths_are_reported(kb):
    manager, documents = kb
    (documents / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    report = await run(manager, action="ingest")
    assert report["added"] == 10
    assert [e["source"] for e in report["errors"]] == ["broken.pdf"]
    with pytest.raises(PluginError, match="inside the documents folder"):
        await run(manager, action="ingest", path="../../..")
    partial = await run(manager, action="ingest", path="it")
    assert partial["unchanged"] == 3 and partial["removed"] == 0


async def test_answer_grounds_the_chat_model_on_cited_passages(kb, models):
    manager, _ = kb
    app = make_app(manager)
    _, reply = await app.asgi_client.post("/v1/plugins/knowledge_base/execute", json={"action": "answer"})
    assert reply.status == 400 and reply.json["error"]["param"] == "query"
    _, reply = await app.asgi_client.post("/v1/plugins/knowledge_base/execute",
                                          json={"action": "answer", "query": "What does the Pro plan cost?"})
    assert reply.status == 422 and reply.json["error"]["code"] == "empty_index"
    assert models.chat_calls == []

    await run(manager, action="ingest")
    _, reply = await app.asgi_client.post("/v1/plugins/knowledge_base/execute",
                                          json={"action": "answer", "query": "What does the Pro plan cost?",
                                                "top_k": 3, "max_tokens": 1000})
    assert reply.status == 200, reply.body
    result = reply.json["result"]
    [call] = models.chat_calls
    system, user = call["messages"]
    assert system["role"] == "system" and "Cite" in system["content"]
    assert user["content"].startswith("Sources:\n[1] (source: sales/product_pricing.pdf, page 1)")
    assert "25 euros per user" in user["content"] and user["content"].endswith("Question: What does the Pro plan cost?")
    assert "[3]" in user["content"] and "[4]" not in user["content"]
    assert call["temperature"] == 0.0 and call["max_tokens"] == 256  # capped by max_answer_tokens
    assert result["answer"] == models.chat_replies[0]["content"]
    assert [c["ref"] for c in result["citations"]] == [1, 2, 3]
    assert result["citations"][0]["source"] == "sales/product_pricing.pdf"
    assert all(1 <= n <= 3 for n in result["cited"]) and result["model"] == models.chat_replies[0]["model"]

    # More passages than the model's context holds (tiny-chat: 2048 tokens): fewer are sent, not an error.
    wide = await run(manager, action="answer", query="What does the Pro plan cost?", top_k=12, max_tokens=16)
    attempts = models.chat_calls[1:]
    assert len(attempts) >= 2 and "[12]" in attempts[0]["messages"][1]["content"]
    assert len(wide["citations"]) < 12 and wide["answer"] == models.chat_replies[-1]["content"]


async def test_ingest_speed_on_a_larger_folder(kb):
    """Reported, not asserted against a clock: 4 copies of the set, every chunk embedded by the real model."""
    manager, documents = kb
    for copy in range(4):
        copy_documents(documents / "bulk" / f"copy_{copy}")
    report = await run(manager, action="ingest")
    assert report["added"] == 50 and report["errors"] == []
    assert report["chunks"] == report["total"]["chunks"] >= 50
    print(f"\nknowledge_base bulk ingest: {report['chunks']} chunks from {report['added']} files in "
          f"{report['seconds']} s = {report['chunks_per_second']} chunks/s (embedding {report['embed_seconds']} s)")


class SlowEmbeddings(RecordingModels):
    """The real embeddings, each call made 0.4 s slower, so that an ingest outlasts its timeout on any machine."""

    async def embed(self, texts, *, model=None):
        await asyncio.sleep(0.4)
        return await super().embed(texts, model=model)


async def test_an_ingest_out_of_time_stops_cleanly_and_the_next_one_continues(tmp_path, registry):
    root = tmp_path / "plugins"
    shutil.copytree(BUILTIN_PLUGINS / "knowledge_base", root / "knowledge_base")
    config = json.loads((root / "knowledge_base" / "config.json").read_text())
    config["timeout"] = 5
    config["settings"]["embed_batch"] = 4
    (root / "knowledge_base" / "config.json").write_text(json.dumps(config))
    manager = PluginManager(make_settings(root, tmp_path), models=SlowEmbeddings(registry))
    await manager.load_all()
    documents = manager.data_root() / "knowledge_base" / "documents"
    for copy in range(3):
        copy_documents(documents / f"copy_{copy}")
    runs = []
    for _ in range(25):
        report = await run(manager, action="ingest")  # a timeout (504) here would fail the test
        runs.append(report)
        if "stopped_early" not in report:
            break
    assert "stopped_early" in runs[0] and 0 < runs[0]["added"] < 30
    assert "stopped_early" not in runs[-1] and sum(r["added"] for r in runs) == 30
    assert runs[-1]["total"]["files"] == 30 and sum(r["chunks"] for r in runs) == runs[-1]["total"]["chunks"]
    print(f"\nknowledge_base: 30 files ingested in {len(runs)} calls of at most 5 s")
    await manager.close()
