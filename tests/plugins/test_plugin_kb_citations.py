"""knowledge_base's answer cites only the passages it retrieved: the citation grammar sampled on the random test
model (tiny-chat: any token is possible, so the mask does all the work), and the plugin asking under it."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from moltbot.plugins.manager import PluginManager
from plugin_helpers import BUILTIN_PLUGINS, make_settings, plugin_module

pytestmark = pytest.mark.anyio
SAMPLES = 60
DOCUMENTS = {
    "refunds.md": "Refunds are paid back to the original card within 14 days of the return arriving.",
    "shipping.txt": "Parcels to Switzerland take five working days and cost 12 euros.",
    "support.md": "Support answers the phone from 8 to 18 on working days.",
}


async def load(tmp_path, models, **settings) -> PluginManager:
    root = tmp_path / "plugins"
    shutil.copytree(BUILTIN_PLUGINS / "knowledge_base", root / "knowledge_base")
    config_path = root / "knowledge_base" / "config.json"
    config = json.loads(config_path.read_text())
    config["settings"].update(settings)
    config_path.write_text(json.dumps(config))
    manager = PluginManager(make_settings(root, tmp_path, plugin_timeout=120), models=models)
    await manager.load_all()
    documents = manager.data_root() / "knowledge_base" / "documents"
    documents.mkdir(parents=True)
    for name, text in DOCUMENTS.items():
        (documents / name).write_text(text)
    await manager.execute("knowledge_base", {"action": "ingest"}, request_id="t")
    return manager


def stray_brackets(text: str, count: int, finish_reason: str) -> str:
    """What is left of the text's brackets once the citations [1]..[count] are taken out (a citation the
    length limit cut short at the very end aside)."""
    if finish_reason == "length":
        text = re.sub(r"\[\d*$", "", text)
    valid = "|".join(str(n) for n in range(1, count + 1))
    return re.sub(rf"[^\[\]]", "", re.sub(rf"\[({valid})\]", "", text))


async def test_every_sampled_citation_is_of_a_passage_sent(tmp_path, models, registry):
    manager = await load(tmp_path, models)
    try:
        grammar = plugin_module(manager, "knowledge_base", "plugin").citation_grammar(3)
        cited = 0
        for seed in range(SAMPLES):
            messages = [{"role": "user", "content": f"Sources: [1] a [2] b [3] c. Question {seed}?"}]
            reply = await registry.chat(messages, max_tokens=48, temperature=2.0, seed=seed,
                                        structured_outputs={"grammar": grammar})
            text = reply["content"]
            assert stray_brackets(text, 3, reply["finish_reason"]) == "", text
            cited += len(re.findall(r"\[[123]\]", text))
        assert cited >= 3  # the model did cite under the grammar, not only avoid brackets
    finally:
        await manager.close()


async def test_answer_asks_under_the_grammar_of_the_passages_it_sends_unless_turned_off(tmp_path, models):
    manager = await load(tmp_path, models)
    try:
        result = await manager.execute("knowledge_base", {"action": "answer", "query": "How long do refunds take?",
                                                          "top_k": 2}, request_id="t")
        assert len(result["citations"]) == 2
        assert models.chat_calls[-1]["structured_outputs"]["grammar"].splitlines()[1] == 'ID: "1" | "2"'
        assert stray_brackets(result["answer"], 2, "length") == ""
        assert set(result["cited"]) <= {1, 2}
    finally:
        await manager.close()
    (tmp_path / "off").mkdir()
    manager = await load(tmp_path / "off", models, constrained=False)
    try:
        await manager.execute("knowledge_base", {"action": "answer", "query": "How long do refunds take?"},
                              request_id="t")
        assert "structured_outputs" not in models.chat_calls[-1]
    finally:
        await manager.close()
