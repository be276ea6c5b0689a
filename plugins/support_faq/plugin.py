"""Customer-service answers from a Q&A file by embedding similarity, with a threshold and a fallback reply."""

from __future__ import annotations

import csv
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moltbot.plugins import BasePlugin, PluginError

HERE = Path(__file__).resolve().parent


@dataclass
class Entry:
    question: str
    answer: str
    phrasings: list[str]


def read_faq(path: Path) -> list[Entry]:
    """A JSON list of {"question", "answer", "variants": [other phrasings]}, or a CSV with question,answer columns."""
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            raw = list(csv.DictReader(handle))
    else:
        raw = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{path.name}: expected a non-empty list of question/answer entries")
    entries = []
    for number, item in enumerate(raw, 1):
        if not isinstance(item, dict) or not str(item.get("question") or "").strip() \
                or not str(item.get("answer") or "").strip():
            raise ValueError(f"{path.name}: entry {number} needs a non-empty question and answer")
        variants = item.get("variants") or []
        if not isinstance(variants, list) or not all(isinstance(v, str) for v in variants):
            raise ValueError(f"{path.name}: entry {number}: variants must be a list of strings")
        question = item["question"].strip()
        entries.append(Entry(question, item["answer"].strip(), [question, *(v.strip() for v in variants if v.strip())]))
    return entries


class SupportFaqPlugin(BasePlugin):
    def __init__(self, config):
        super().__init__(config)
        path = Path(config.get("faq_file") or "faq.json")
        self.faq_path = path if path.is_absolute() else HERE / path
        self.threshold = float(config.get("threshold", 0.45))
        self.fallback = config.get("fallback") or "Sorry, I don't know the answer to that yet."
        self.suggestions = int(config.get("suggestions", 3))
        self.embedding_model = config.get("embedding_model") or None
        read_faq(self.faq_path)  # a broken FAQ file is a load error, shown in GET /v1/plugins
        self._lock = threading.Lock()
        self._cache_key: tuple | None = None
        self._entries: list[Entry] = []
        self._matrix = np.zeros((0, 0), dtype=np.float32)
        self._owner = np.zeros(0, dtype=np.int64)

    def _embed(self, context, texts: list[str]) -> np.ndarray:
        vectors = np.asarray(context.models.embed(texts, model=self.embedding_model), dtype=np.float32)
        return vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)

    def _load(self, context) -> None:
        """Embed every phrasing once; again only when the file changes."""
        try:
            stat = self.faq_path.stat()
        except OSError as exc:
            raise PluginError(f"FAQ file {self.faq_path.name} cannot be read: {exc.strerror}",
                              code="faq_missing") from None
        key = (stat.st_mtime_ns, stat.st_size, self.embedding_model)
        if key == self._cache_key:
            return
        try:
            entries = read_faq(self.faq_path)
        except (ValueError, OSError) as exc:
            raise PluginError(f"FAQ file is invalid: {exc}", code="faq_invalid") from None
        phrasings = [(i, text) for i, entry in enumerate(entries) for text in entry.phrasings]
        self._matrix = self._embed(context, [text for _, text in phrasings])
        self._owner = np.array([i for i, _ in phrasings], dtype=np.int64)
        self._entries = entries
        self._cache_key = key
        context.logger.info("FAQ loaded: %d entries, %d phrasings", len(entries), len(phrasings))

    def execute(self, context):
        with self._lock:
            self._load(context)
            matrix, owner, entries = self._matrix, self._owner, self._entries
        question = context.input["question"]
        scores = matrix @ self._embed(context, [question])[0]
        best_per_entry = np.full(len(entries), -1.0, dtype=np.float32)
        np.maximum.at(best_per_entry, owner, scores)
        ranked = np.argsort(-best_per_entry)
        top = int(ranked[0])
        score = float(best_per_entry[top])
        matched = score >= self.threshold
        return {
            "answer": entries[top].answer if matched else self.fallback,
            "fallback": not matched,
            "matched_question": entries[top].question if matched else None,
            "score": round(score, 4),
            "threshold": self.threshold,
            "suggestions": [{"question": entries[i].question, "score": round(float(best_per_entry[i]), 4)}
                            for i in ranked[:int(context.input.get("suggestions", self.suggestions))]],
        }
