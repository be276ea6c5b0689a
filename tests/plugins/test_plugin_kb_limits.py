"""knowledge_base ingest bounds (issue #22, item 14): links out of the folder, bytes, pages, time per page."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from moltbot.plugins.manager import PluginManager
from plugin_helpers import BUILTIN_PLUGINS, make_settings, write_pdf
from test_plugin_knowledge_base import copy_documents, kb, run  # noqa: F401 (kb: the fixture)

pytestmark = pytest.mark.anyio


async def test_links_that_leave_the_documents_folder_are_skipped(kb, tmp_path):  # noqa: F811
    manager, documents = kb
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("The database password is hunter2 and the vault code is 4711.")
    (documents / "leak.txt").symlink_to(secret)
    (documents / "it" / "leak.md").symlink_to(secret.parent / ".." / "outside" / "secret.txt")
    (documents / "again.txt").symlink_to(documents / "office_coffee_machine.txt")  # inside: allowed
    report = await run(manager, action="ingest")
    assert report["added"] == 11, report
    assert sorted((e["source"], e["error"]) for e in report["errors"]) == [
        ("it/leak.md", "a link to outside the documents folder; not indexed"),
        ("leak.txt", "a link to outside the documents folder; not indexed")]
    hits = (await run(manager, action="query", query="database password vault code", top_k=50))["results"]
    assert not any("hunter2" in h["text"] for h in hits)
    assert "again.txt" in {h["source"] for h in hits}


async def capped_manager(tmp_path, models, **settings) -> tuple[PluginManager, Path]:
    """The plugin with small caps (a 10 s call) over a documents folder holding one small file."""
    root = tmp_path / "plugins"
    shutil.copytree(BUILTIN_PLUGINS / "knowledge_base", root / "knowledge_base")
    config_path = root / "knowledge_base" / "config.json"
    config = json.loads(config_path.read_text())
    config["timeout"] = 10
    config["settings"].update(settings)
    config_path.write_text(json.dumps(config))
    manager = PluginManager(make_settings(root, tmp_path), models=models)
    await manager.load_all()
    documents = manager.data_root() / "knowledge_base" / "documents"
    documents.mkdir(parents=True)
    (documents / "small.txt").write_text("The office opens at eight in the morning.")
    return manager, documents


async def test_files_over_the_byte_or_page_cap_are_reported_not_read(tmp_path, models):
    manager, documents = await capped_manager(tmp_path, models, max_file_bytes=20_000, max_pages=3)
    (documents / "huge.txt").write_text("word " * 5000)  # 25 000 bytes
    write_pdf(documents / "long.pdf", [f"Page {n} of the long manual." for n in range(1, 6)])
    write_pdf(documents / "short.pdf", ["Page one.", "Page two."])
    try:
        report = await run(manager, action="ingest")
    finally:
        await manager.close()
    assert report["added"] == 2 and report["total"]["files"] == 2
    errors = {e["source"]: e["error"] for e in report["errors"]}
    assert errors == {"huge.txt": "25000 bytes, more than max_file_bytes (20000); not indexed",
                      "long.pdf": "5 pages, more than max_pages (3); not indexed"}


async def test_a_slow_pdf_is_given_up_between_pages_within_its_time(tmp_path, models):
    """600 pages of about 5 ms each (about 3 s in all) against max_seconds_per_file 1 s: the reader stops
    between pages after 1 s, the file is reported, the others are indexed, and the call returns within its
    10 s timeout (a 504 would fail the test); before, the whole file was read on an unkillable thread."""
    manager, documents = await capped_manager(tmp_path, models, max_seconds_per_file=1)
    text = " ".join(f"word{i} lorem ipsum dolor sit amet" for i in range(150))
    write_pdf(documents / "manual.pdf", [text] * 600)
    started = time.monotonic()
    try:
        report = await run(manager, action="ingest")
    finally:
        await manager.close()
    print(f"\nknowledge_base: a 600-page PDF given up after {time.monotonic() - started:.2f} s")
    assert report["added"] == 1 and "stopped_early" not in report
    assert report["errors"] == [{"source": "manual.pdf", "error": "reading took longer than "
                                 "max_seconds_per_file (1 s); not indexed"}]
