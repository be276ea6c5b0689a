"""Sentence embeddings over an exported encoder: mean pooling and L2 normalisation, as sentence-transformers
does, with dynamic batching (up to N inputs, or a few milliseconds of waiting)."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import numpy.typing as npt

from moltbot import metrics
from moltbot.engine.errors import QueueFull
from moltbot.engine.sessions import DeviceOptions, active_provider, create_session
from moltbot.engine.tokenizer import TextTokenizer

log = logging.getLogger("moltbot.engine")

Vectors = npt.NDArray[np.float32]
# What a request waits for: (vectors, each input's token count).
EmbeddingFuture = Future[tuple[Vectors, list[int]]]
Pending = tuple[list[list[int]], EmbeddingFuture]  # each input's token ids, special tokens included


class EncoderModel:
    def __init__(self, folder: Path, options: DeviceOptions, cache_dir: Path | None = None):
        folder = Path(folder)
        self.session = create_session(folder / "model.onnx", options, cache_dir)
        self.provider = active_provider(self.session)
        self.tokenizer = TextTokenizer(folder)
        self.input_names = {i.name for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        self.output = next((n for n in ("token_embeddings", "last_hidden_state") if n in outputs), outputs[0])
        st_config = folder / "sentence_bert_config.json"
        max_len = json.loads(st_config.read_text()).get("max_seq_length") if st_config.exists() else None
        self.max_length = int(max_len or self.tokenizer.max_length or 512)
        self.tokenizer.tokenizer.no_padding()
        self.tokenizer.tokenizer.no_truncation()  # an input beyond max_length is refused (or cut) by the validator

    def embed(self, texts: list[str]) -> tuple[Vectors, list[int]]:
        """L2-normalised mean-pooled embeddings of texts (cut to max_length), and each input's token count."""
        return self.embed_ids([ids[:self.max_length] for ids in self.tokenizer.encode_batch(texts)])

    def embed_ids(self, encoded: list[list[int]]) -> tuple[Vectors, list[int]]:
        """L2-normalised mean-pooled embeddings of tokenised inputs, and each input's token count."""
        length = max(len(ids) for ids in encoded)
        ids = np.zeros((len(encoded), length), dtype=np.int64)
        mask = np.zeros((len(encoded), length), dtype=np.int64)
        for row, seq in enumerate(encoded):
            ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.input_names:
            feed["token_type_ids"] = np.zeros_like(ids)
        hidden = self.session.run([self.output], feed)[0].astype(np.float32)
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        vectors = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return vectors, [len(seq) for seq in encoded]


class EmbeddingBatcher:
    """Collects embedding requests from many clients into batches on one thread, with bounded admission."""

    def __init__(self, name: str, model: EncoderModel, max_batch: int, max_wait_s: float, max_pending: int):
        self.name = name
        self.model = model
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_pending = max_pending
        self._pending = 0
        self._lock = threading.Lock()
        self._queue: queue.Queue[Pending | None] = queue.Queue()  # None: stop
        self._thread = threading.Thread(target=self._loop, name=f"embed-{name}", daemon=True)
        self._thread.start()

    def submit(self, texts: list[list[int]]) -> EmbeddingFuture:
        """A future of (vectors, token counts); QueueFull when max_pending requests are already waiting."""
        with self._lock:
            if self._pending >= self.max_pending:
                metrics.REJECTED.labels(self.name).inc()
                raise QueueFull(self.name, retry_after=1)
            self._pending += 1
        future: EmbeddingFuture = Future()
        future.add_done_callback(self._done)
        self._queue.put((texts, future))
        return future

    def _done(self, _future: EmbeddingFuture) -> None:
        with self._lock:
            self._pending -= 1

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            pending, size = [item], len(item[0])
            deadline = time.monotonic() + self.max_wait_s  # one wait per batch, however requests trickle in
            while size < self.max_batch:
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                pending.append(nxt)
                size += len(nxt[0])
            self._run(pending)

    def _run(self, pending: list[Pending]) -> None:
        live = [(texts, fut) for texts, fut in pending if fut.set_running_or_notify_cancel()]
        if not live:
            return
        texts = [t for batch, _ in live for t in batch]
        try:
            # Sort by length so that padding stays small, then restore the order.
            order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
            chunks = [order[i:i + self.max_batch] for i in range(0, len(order), self.max_batch)]
            parts, counts = {}, {}
            for chunk in chunks:
                chunk_vectors, chunk_counts = self.model.embed_ids([texts[i] for i in chunk])
                for idx, vec, count in zip(chunk, chunk_vectors, chunk_counts, strict=True):
                    parts[idx], counts[idx] = vec, count
            vectors = np.stack([parts[i] for i in range(len(texts))])
            token_counts = [counts[i] for i in range(len(texts))]
        except Exception as exc:
            log.exception("embedding failed for model %s", self.name)
            for _, fut in live:
                fut.set_exception(exc)
            return
        start = 0
        for batch, fut in live:
            fut.set_result((vectors[start:start + len(batch)], token_counts[start:start + len(batch)]))
            start += len(batch)
