"""Knowledge base: ingest a folder of documents, search it by meaning, answer questions citing the passages."""

from __future__ import annotations

import hashlib
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from moltbot.plugins import BasePlugin, PluginError

from .extract import SUPPORTED, NotIndexed, chunk_text, read_sections
from .index import FileState, Index

ANSWER_SYSTEM_PROMPT = (
    "You answer questions using only the numbered sources given. Cite the sources you use like [1] or [2]. "
    "If the sources do not contain the answer, say that you do not know."
)


def citation_grammar(count: int) -> str:
    """A Lark grammar (llguidance's) of an answer whose only bracketed text is a citation [1]..[count]: the model
    can cite no passage it was not given."""
    ids = " | ".join(f'"{n}"' for n in range(1, count + 1))
    return f'start: (TEXT | "[" ID "]")+\nID: {ids}\nTEXT: /[^\\[\\]]+/\n'


class _OutOfTime(Exception):
    """The ingest call's time is up in the middle of a file."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class KnowledgeBasePlugin(BasePlugin):
    def __init__(self, config):
        super().__init__(config)
        self.chunk_chars = int(config.get("chunk_chars", 800))
        self.chunk_overlap = int(config.get("chunk_overlap", 120))
        if not 100 <= self.chunk_chars <= 20000 or not 0 <= self.chunk_overlap < self.chunk_chars // 2:
            raise ValueError("chunk_chars must be 100-20000 and chunk_overlap under half of it")
        self.embed_batch = int(config.get("embed_batch", 32))
        self.top_k = int(config.get("top_k", 5))
        self.embedding_model = config.get("embedding_model") or None
        self.chat_model = config.get("chat_model") or None
        self.max_answer_tokens = int(config.get("max_answer_tokens", 256))
        # answer's citations held to the passages sent (citation_grammar); off: the model writes freely.
        self.constrained = config.get("constrained", True)
        if not isinstance(self.constrained, bool):
            raise ValueError("constrained must be true or false")
        # Bounds on one file: its bytes, a PDF's pages, and the seconds spent reading it (checked per page).
        self.max_file_bytes = int(config.get("max_file_bytes", 50_000_000))
        self.max_pages = int(config.get("max_pages", 1000))
        self.max_seconds_per_file = float(config.get("max_seconds_per_file", 60))
        if self.max_file_bytes < 1 or self.max_pages < 1 or self.max_seconds_per_file <= 0:
            raise ValueError("max_file_bytes and max_pages must be at least 1, max_seconds_per_file above 0")
        self._ingest_lock = threading.Lock()
        self._index: Index | None = None
        self._index_lock = threading.Lock()

    # Paths in the settings may be relative: to the plugin's data folder.
    def _path(self, context, key: str, default: str) -> Path:
        path = Path(self.config.get(key) or default)
        return path if path.is_absolute() else context.data_dir / path

    def _documents(self, context) -> Path:
        return self._path(context, "documents_dir", "documents")

    def _open_index(self, context) -> Index:
        with self._index_lock:
            path = self._path(context, "index_file", "index.sqlite3")
            if self._index is None or self._index.path != path:
                self._index = Index(path)
            return self._index

    def execute(self, context):
        action = context.input["action"]
        if action == "ingest":
            return self.ingest(context)
        if action == "query":
            return self.query(context)
        if action == "answer":
            return self.answer(context)
        index = self._open_index(context)
        return {"documents_dir": str(self._documents(context)), **index.stats(),
                "embedding_model": index.meta("embedding_model")}

    # ---- ingest

    def _embed(self, context, texts: list[str]) -> np.ndarray:
        vectors = np.asarray(context.models.embed(texts, model=self.embedding_model), dtype=np.float32)
        return vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)

    def ingest(self, context) -> dict[str, Any]:
        root = self._documents(context)
        scope = root
        if context.input.get("path"):
            scope = (root / context.input["path"]).resolve()
            if root.resolve() not in (scope, *scope.parents):
                raise PluginError("path must be inside the documents folder", code="path_outside_documents")
        if not scope.is_dir():
            raise PluginError(f"documents folder {scope} does not exist; put the documents there or set "
                              "documents_dir in the plugin's config.json", code="documents_missing")
        if not self._ingest_lock.acquire(blocking=False):
            raise PluginError("an ingest is already running", code="ingest_running")
        try:
            return self._ingest(context, root, scope)
        finally:
            self._ingest_lock.release()

    def _ingest(self, context, root: Path, scope: Path) -> dict[str, Any]:
        index = self._open_index(context)
        model = self.embedding_model or (context.models.names("embeddings") or [None])[0]
        if index.meta("embedding_model") not in (None, str(model)):
            context.logger.info("embedding model changed to %s: indexing everything again", model)
            index.clear()
        index.set_meta("embedding_model", str(model))
        known = index.files()
        report = {"added": 0, "updated": 0, "unchanged": 0, "removed": 0, "chunks": 0, "errors": []}
        on_disk = self._files(root, scope, report["errors"])
        seen: set[str] = set()
        started = time.perf_counter()
        timing = {"embed": 0.0, "slowest_batch": 0.0}
        # Chunks of several small files are embedded together: one model call per embed_batch chunks.
        pending: list[tuple[str, FileState, bool, list[tuple[str | None, str]]]] = []

        def out_of_time() -> bool:
            """Stop while there is time to store what is done; the next ingest continues from there."""
            return context.time_left() < 1.0 + 2 * timing["slowest_batch"]

        def flush() -> None:
            """Embed the pending files' chunks and store every file whose chunks all got embedded."""
            texts = [text for *_, chunks in pending for _, text in chunks]
            parts = []
            for i in range(0, len(texts), self.embed_batch):
                if out_of_time():
                    report["stopped_early"] = "out of time; run ingest again to continue where it stopped"
                    break
                began = time.perf_counter()
                parts.append(self._embed(context, texts[i:i + self.embed_batch]))
                took = time.perf_counter() - began
                timing["embed"] += took
                timing["slowest_batch"] = max(timing["slowest_batch"], took)
            vectors = np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)
            offset = 0
            for relative, state, is_update, chunks in pending:
                if offset + len(chunks) > len(vectors):
                    break  # not embedded in time: left for the next ingest
                index.replace(relative, state, chunks, vectors[offset:offset + len(chunks)])
                offset += len(chunks)
                report["updated" if is_update else "added"] += 1
                report["chunks"] += len(chunks)
            pending.clear()

        for path in on_disk:
            if "stopped_early" in report or out_of_time():
                report["stopped_early"] = "out of time; run ingest again to continue where it stopped"
                break
            relative = path.relative_to(root).as_posix()
            seen.add(relative)
            stat = path.stat()
            if stat.st_size > self.max_file_bytes:
                report["errors"].append({"source": relative, "error": f"{stat.st_size} bytes, more than "
                                         f"max_file_bytes ({self.max_file_bytes}); not indexed"})
                continue
            previous = known.get(relative)
            if previous and previous.size == stat.st_size and previous.mtime_ns == stat.st_mtime_ns:
                report["unchanged"] += 1
                continue
            state = FileState(_sha256(path), stat.st_size, stat.st_mtime_ns)
            if previous and previous.sha256 == state.sha256:
                index.touch(relative, state)
                report["unchanged"] += 1
                continue
            try:
                sections = read_sections(path, self.max_pages, self._page_clock(out_of_time))
                chunks = [(section.location, text) for section in sections
                          for text in chunk_text(section.text, self.chunk_chars, self.chunk_overlap)]
            except _OutOfTime:
                report["stopped_early"] = "out of time; run ingest again to continue where it stopped"
                break
            except NotIndexed as exc:
                report["errors"].append({"source": relative, "error": str(exc)})
                continue
            except Exception as exc:  # a corrupt file is reported and skipped, the others go on
                report["errors"].append({"source": relative, "error": f"{type(exc).__name__}: {exc}"})
                continue
            pending.append((relative, state, previous is not None, chunks))
            if sum(len(p[3]) for p in pending) >= self.embed_batch:
                flush()
        flush()
        if "stopped_early" not in report:
            scope_prefix = "" if scope == root else scope.relative_to(root).as_posix() + "/"
            gone = [p for p in known if p.startswith(scope_prefix) and p not in seen]
            index.remove(gone)
            report["removed"] = len(gone)
        seconds = time.perf_counter() - started
        report.update(seconds=round(seconds, 3), chunks_per_second=round(report["chunks"] / seconds, 1)
                      if report["chunks"] and seconds > 0 else 0.0, embed_seconds=round(timing["embed"], 3),
                      total=index.stats())
        context.logger.info("ingest: %d added, %d updated, %d unchanged, %d removed, %d chunks in %.2f s",
                            report["added"], report["updated"], report["unchanged"], report["removed"],
                            report["chunks"], seconds)
        return report

    @staticmethod
    def _files(root: Path, scope: Path, errors: list[dict[str, str]]) -> list[Path]:
        """The supported, not hidden files under scope; a link that leaves the documents folder is reported and
        skipped (its target could be any file the runtime can read)."""
        inside = root.resolve()
        files = []
        for path in sorted(scope.rglob("*")):
            relative = path.relative_to(root)
            if path.suffix.lower() not in SUPPORTED or any(part.startswith(".") for part in relative.parts):
                continue
            if inside not in path.resolve().parents:
                if path.is_file() or path.is_symlink():
                    errors.append({"source": relative.as_posix(),
                                   "error": "a link to outside the documents folder; not indexed"})
                continue
            if path.is_file():
                files.append(path)
        return files

    def _page_clock(self, out_of_time) -> Any:
        """Called before each page of a PDF: stops the ingest when the call's time is up (the file is read again
        next time), and gives up on a file that has taken max_seconds_per_file."""
        deadline = time.monotonic() + self.max_seconds_per_file

        def before_page() -> None:
            if out_of_time():
                raise _OutOfTime
            if time.monotonic() > deadline:
                raise NotIndexed(f"reading took longer than max_seconds_per_file ({self.max_seconds_per_file:g} s); "
                                 "not indexed")

        return before_page

    # ---- search and answer

    def _search(self, context) -> list[dict[str, Any]]:
        index = self._open_index(context)
        top_k = int(context.input.get("top_k") or self.top_k)
        vector = self._embed(context, [context.input["query"]])[0]
        return [{"source": h.source, "location": h.location, "chunk": h.chunk, "score": round(h.score, 4),
                 "text": h.text} for h in index.search(vector, top_k)]

    def query(self, context) -> dict[str, Any]:
        return {"query": context.input["query"], "results": self._search(context)}

    def answer(self, context) -> dict[str, Any]:
        passages = self._search(context)
        if not passages:
            raise PluginError("the knowledge base is empty: run the ingest action first", code="empty_index")
        constrained = self.constrained
        while True:
            sources = "\n\n".join(
                f"[{n}] (source: {p['source']}{', ' + p['location'] if p['location'] else ''})\n{p['text']}"
                for n, p in enumerate(passages, 1))
            messages = [
                {"role": "system", "content": ANSWER_SYSTEM_PROMPT},
                {"role": "user", "content": f"Sources:\n{sources}\n\nQuestion: {context.input['query']}"},
            ]
            try:
                max_tokens = min(context.input.get("max_tokens", self.max_answer_tokens), self.max_answer_tokens)
                grammar = {"structured_outputs": {"grammar": citation_grammar(len(passages))}} \
                    if constrained else {}
                reply = context.models.chat(messages, model=self.chat_model, max_tokens=max_tokens, temperature=0.0,
                                            **grammar)
                break
            except PluginError as exc:
                # A service model takes no grammar (its upstream would not honour one; the error names the
                # field only in its text): asked again without.
                if constrained and exc.code == "model_error" and "structured_outputs is not supported" in str(exc):
                    context.logger.info("the chat model takes no grammar; asking it without one")
                    constrained = False
                    continue
                # A prompt too long for the model's context: fewer passages, down to one.
                if exc.code != "model_error" or len(passages) == 1:
                    raise
                context.logger.info("prompt too long with %d passages; trying %d", len(passages),
                                    len(passages) // 2)
                passages = passages[:len(passages) // 2]
        text = reply.get("content") or ""
        cited = sorted({int(n) for n in re.findall(r"\[(\d+)\]", text) if 1 <= int(n) <= len(passages)})
        return {
            "answer": text,
            "citations": [{"ref": n, "source": p["source"], "location": p["location"], "score": p["score"]}
                          for n, p in enumerate(passages, 1)],
            "cited": cited,
            "model": reply.get("model"),
            "usage": reply.get("usage"),
        }
