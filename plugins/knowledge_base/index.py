"""The persistent index: one SQLite file with the files seen (hash, size, mtime) and their embedded chunks."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    chunks INTEGER NOT NULL,
    ingested_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL REFERENCES files(path) ON DELETE CASCADE,
    ordinal INTEGER NOT NULL,
    location TEXT,
    text TEXT NOT NULL,
    embedding BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_by_path ON chunks(path);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass
class FileState:
    sha256: str
    size: int
    mtime_ns: int


@dataclass
class Hit:
    source: str
    location: str | None
    chunk: int
    score: float
    text: str


class Index:
    """Thread-safe: each operation opens its own connection; queries use an in-memory matrix of all
    embeddings, rebuilt when the index's generation counter has moved."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._cache_lock = threading.Lock()
        self._cached_generation: int | None = None
        self._matrix = np.zeros((0, 0), dtype=np.float32)
        self._rows: list[tuple[str, str | None, int, str]] = []
        with self._connect() as db:
            db.executescript(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA foreign_keys=ON")
            with db:
                yield db
        finally:
            db.close()

    def meta(self, key: str) -> str | None:
        with self._connect() as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def files(self) -> dict[str, FileState]:
        with self._connect() as db:
            rows = db.execute("SELECT path, sha256, size, mtime_ns FROM files").fetchall()
        return {path: FileState(sha, size, mtime) for path, sha, size, mtime in rows}

    def touch(self, path: str, state: FileState) -> None:
        """Same content, new mtime: remember the new stat so the next ingest does not hash it again."""
        with self._connect() as db:
            db.execute("UPDATE files SET size = ?, mtime_ns = ? WHERE path = ?", (state.size, state.mtime_ns, path))

    def replace(self, path: str, state: FileState, chunks: list[tuple[str | None, str]], vectors: np.ndarray) -> None:
        """Swap a file's chunks for new ones in one transaction."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        with self._connect() as db:
            db.execute("DELETE FROM chunks WHERE path = ?", (path,))
            db.execute("INSERT OR REPLACE INTO files(path, sha256, size, mtime_ns, chunks, ingested_at) "
                       "VALUES (?, ?, ?, ?, ?, ?)", (path, state.sha256, state.size, state.mtime_ns, len(chunks),
                                                     time.time()))
            db.executemany("INSERT INTO chunks(path, ordinal, location, text, embedding) VALUES (?, ?, ?, ?, ?)",
                           [(path, i, loc, text, vectors[i].tobytes()) for i, (loc, text) in enumerate(chunks)])
            self._bump(db)

    def remove(self, paths: list[str]) -> None:
        if not paths:
            return
        with self._connect() as db:
            db.executemany("DELETE FROM chunks WHERE path = ?", [(p,) for p in paths])
            db.executemany("DELETE FROM files WHERE path = ?", [(p,) for p in paths])
            self._bump(db)

    def clear(self) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM chunks")
            db.execute("DELETE FROM files")
            self._bump(db)

    @staticmethod
    def _bump(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO meta(key, value) VALUES ('generation', '1') "
                   "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1")

    def stats(self) -> dict[str, int]:
        with self._connect() as db:
            files, chunks = db.execute("SELECT (SELECT COUNT(*) FROM files), (SELECT COUNT(*) FROM chunks)").fetchone()
        return {"files": files, "chunks": chunks}

    def _load(self) -> None:
        generation = int(self.meta("generation") or 0)
        if generation == self._cached_generation:
            return
        with self._connect() as db:
            rows = db.execute("SELECT path, location, ordinal, text, embedding FROM chunks ORDER BY id").fetchall()
        self._rows = [(path, loc, ordinal, text) for path, loc, ordinal, text, _ in rows]
        self._matrix = (np.stack([np.frombuffer(r[4], dtype=np.float32) for r in rows])
                        if rows else np.zeros((0, 0), dtype=np.float32))
        self._cached_generation = generation

    def search(self, vector: np.ndarray, top_k: int) -> list[Hit]:
        with self._cache_lock:
            self._load()
            matrix, rows = self._matrix, self._rows
        if not rows:
            return []
        scores = matrix @ np.asarray(vector, dtype=np.float32)
        k = min(top_k, len(rows))
        best = np.argpartition(-scores, k - 1)[:k]
        best = best[np.argsort(-scores[best])]
        return [Hit(rows[i][0], rows[i][1], rows[i][2], float(scores[i]), rows[i][3]) for i in best]
