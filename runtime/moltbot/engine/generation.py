"""Text generation over an Optimum-exported decoder (past key/values in, present out), with continuous batching.

One scheduler thread per model owns the ONNX Runtime session. Sequences wait in a bounded queue, join the
running batch between decode steps (their prompt is prefilled, then their KV cache is merged into the batch's,
left-padded to a common length) and leave it as soon as they finish or their client goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from moltbot import metrics
from moltbot.engine.errors import EngineStopped, QueueFull
from moltbot.engine.sampling import SamplingParams, sample
from moltbot.engine.sessions import DeviceOptions, active_provider, create_session
from moltbot.engine.tokenizer import IncrementalDecoder, TextTokenizer

log = logging.getLogger("moltbot.engine")

# Most (padded) prompt tokens in one ONNX Runtime prefill call: bounds the [rows, tokens, vocab] logits a
# prefill makes. Longer prompts are prefilled in chunks, feeding each chunk's KV cache to the next.
PREFILL_TOKEN_BUDGET = 1024

# One tensor per past key/value input: numpy arrays on the host, OrtValues where the cache stays on a device.
KVCache = list[Any]


@dataclass
class TokenEvent:
    """What the scheduler hands to the request's side: new text, and once, the finish reason."""

    text: str
    tokens: int
    finish_reason: str | None = None
    index: int = 0  # which of the request's n sequences


@dataclass
class Sequence:
    prompt_ids: list[int]
    params: SamplingParams
    emit: Callable[[TokenEvent], None]
    tokenizer: TextTokenizer
    index: int = 0
    generated: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    cancelled: bool = False
    admitted_at: float = field(default_factory=time.monotonic)
    last_token_at: float | None = None

    def __post_init__(self) -> None:
        # Seeded: reproducible, and different for each of a request's n choices (any int64 seed is accepted).
        seed = None if self.params.seed is None else [self.params.seed & (2**64 - 1), self.index]
        self.rng = np.random.default_rng(seed)
        self.decoder = IncrementalDecoder(self.tokenizer)
        self.emitted_chars = 0  # how much of decoder.text has been sent
        self.holdback = max((len(s) for s in self.params.stop), default=1) - 1


class GenerationHandle:
    """The asyncio side of one request: an async iterator of TokenEvents, cancellable."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._queue: asyncio.Queue[TokenEvent] = asyncio.Queue()
        self.sequences: list[Sequence] = []

    def emit(self, event: TokenEvent) -> None:  # called from the scheduler thread
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening any more
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)

    async def next_event(self) -> TokenEvent:
        return await self._queue.get()

    def cancel(self) -> None:
        for seq in self.sequences:
            seq.cancelled = True


class DecoderModel:
    """The ONNX decoder with its KV cache layout, run one step at a time."""

    def __init__(self, folder: Path, options: DeviceOptions, cache_dir: Path | None = None):
        self.folder = Path(folder)
        self.session = create_session(self.folder / "model.onnx", options, cache_dir)
        self.provider = active_provider(self.session)
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.past_names = sorted((n for n in inputs if n.startswith("past_key_values.")),
                                 key=lambda n: (int(n.split(".")[1]), n.endswith("value")))
        if not self.past_names:
            raise ValueError(f"{folder}: model.onnx has no past_key_values inputs; export it with "
                             "task text-generation-with-past (moltbot models export)")
        self.present_names = [n.replace("past_key_values.", "present.") for n in self.past_names]
        first = inputs[self.past_names[0]]
        self.kv_heads, self.head_dim = int(first.shape[1]), int(first.shape[3])
        self.kv_dtype = np.float16 if "float16" in first.type else np.float32
        self.has_position_ids = "position_ids" in inputs
        self.output_names = ["logits", *self.present_names]
        # Where the KV cache lives between steps. On the CPU: our own reusable host buffers, bound with IO
        # binding. On CUDA: OrtValues on the device (ORT allocates the presents there, they are bound back as
        # the next step's past), so only token ids go in and logits come out each step.
        self.binds_host_buffers = self.provider == "CPUExecutionProvider"
        self.device = ("cuda", options.cuda_device_id) if self.provider == "CUDAExecutionProvider" else ("cpu", 0)

    def empty_past(self, batch: int) -> list[np.ndarray]:
        shape = (batch, self.kv_heads, 0, self.head_dim)
        return [np.zeros(shape, dtype=self.kv_dtype) for _ in self.past_names]

    def _feed(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray
              ) -> dict[str, np.ndarray]:
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.has_position_ids:
            feed["position_ids"] = position_ids
        return feed

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray,
            past: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        feed = self._feed(input_ids, attention_mask, position_ids)
        feed.update(zip(self.past_names, past, strict=True))
        logits, *present = self.session.run(self.output_names, feed)
        return logits, present

    def run_into(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray,
                 past: list[np.ndarray], present: list[np.ndarray]) -> np.ndarray:
        """One step with the new KV cache written into `present` (preallocated, contiguous); returns logits."""
        binding = self.session.io_binding()
        for name, value in self._feed(input_ids, attention_mask, position_ids).items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name, array in zip(self.past_names, past, strict=True):
            binding.bind_input(name, "cpu", 0, array.dtype, array.shape, array.ctypes.data)
        binding.bind_output("logits", "cpu")  # first: get_outputs() follows the binding order
        for name, array in zip(self.present_names, present, strict=True):
            binding.bind_output(name, "cpu", 0, array.dtype, array.shape, array.ctypes.data)
        self.session.run_with_iobinding(binding)
        logits: np.ndarray = binding.get_outputs()[0].numpy()
        return logits

    def run_resident(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray,
                     past: KVCache) -> tuple[np.ndarray, KVCache]:
        """One step with the KV cache as OrtValues on self.device; the presents stay there too."""
        binding = self.session.io_binding()
        for name, value in self._feed(input_ids, attention_mask, position_ids).items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name, value in zip(self.past_names, self.to_device(past), strict=True):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")
        for name in self.present_names:
            binding.bind_output(name, *self.device)
        self.session.run_with_iobinding(binding)
        logits, *present = binding.get_outputs()
        return logits.numpy(), present

    def to_device(self, values: KVCache) -> KVCache:
        return [v if isinstance(v, ort.OrtValue) else ort.OrtValue.ortvalue_from_numpy(
            np.ascontiguousarray(v), *self.device) for v in values]

    @staticmethod
    def to_host(values: KVCache) -> list[np.ndarray]:
        return [v.numpy() if isinstance(v, ort.OrtValue) else v for v in values]


class KVBuffers:
    """Two sets of flat buffers, one per past tensor: a step reads the KV cache from one set and writes the
    grown cache into the other. Reusing warm memory avoids allocating (and page-faulting) ~100 MB per step."""

    def __init__(self, model: DecoderModel):
        self.model = model
        self.sets: list[list[np.ndarray]] = [[], []]
        self.current = 0

    def views(self, which: int, batch: int, length: int) -> list[np.ndarray]:
        shape = (batch, self.model.kv_heads, length, self.model.head_dim)
        needed = int(np.prod(shape))
        buffers = self.sets[which]
        if not buffers or buffers[0].size < needed:
            size = max(needed, int(1.5 * buffers[0].size) if buffers else needed)
            buffers = self.sets[which] = [np.empty(size, dtype=self.model.kv_dtype) for _ in self.model.past_names]
        return [b[:needed].reshape(shape) for b in buffers]


@dataclass
class Prefilled:
    """Newcomers after their prefill, row for row: their KV cache, attention mask and first tokens."""

    rows: list[Sequence]
    past: list[np.ndarray]
    mask: np.ndarray
    tokens: np.ndarray

    def alive(self) -> Prefilled | None:
        """Without the rows that finished with their first token (None when none is left)."""
        alive = [i for i, seq in enumerate(self.rows) if not seq.finish_reason]
        if len(alive) == len(self.rows):
            return self
        if not alive:
            return None
        return Prefilled([self.rows[i] for i in alive], [p[alive] for p in self.past], self.mask[alive],
                         self.tokens[alive])


class Batch:
    """The running sequences and their KV cache, left-padded to one length.

    Rows that finish stay until the next rebuild (a cheap wasted row beats a copy of the whole cache per
    finished sequence); `rebuild` drops them and adds newly prefilled rows in one copy into the idle buffers.
    """

    def __init__(self, model: DecoderModel):
        self.model = model
        self.rows: list[Sequence] = []
        self.buffers = KVBuffers(model)
        self.past: KVCache = model.empty_past(0)
        self.mask = np.zeros((0, 0), dtype=np.int64)
        self.positions = np.zeros((0,), dtype=np.int64)
        self.last_tokens = np.zeros((0,), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def live(self) -> int:
        return sum(1 for s in self.rows if not s.finish_reason)

    def rebuild(self, keep: list[int], new: Prefilled | None) -> None:
        """Keep rows `keep`, append the `new` rows, trim the columns that no row attends to any more."""
        kept_mask = self.mask[keep]
        start = int(np.argmax(kept_mask.any(axis=0))) if len(keep) and kept_mask.any() else kept_mask.shape[1]
        kept_len = kept_mask.shape[1] - start
        new_len = new.mask.shape[1] if new else 0
        length = max(kept_len, new_len)
        rows = len(keep) + (len(new.rows) if new else 0)
        idle = 1 - self.buffers.current
        target = self.buffers.views(idle, rows, length) if self.model.binds_host_buffers else [
            np.empty((rows, self.model.kv_heads, length, self.model.head_dim), self.model.kv_dtype)
            for _ in self.model.past_names]
        mask = np.zeros((rows, length), dtype=np.int64)
        for dst, src in zip(target, self.model.to_host(self.past), strict=True):
            dst[:, :, : length - kept_len].fill(0)  # padding: masked out, but must not hold NaN garbage
            for out_row, row in enumerate(keep):
                dst[out_row, :, length - kept_len:] = src[row, :, start:]
        mask[: len(keep), length - kept_len:] = kept_mask[:, start:]
        if new:
            offset = len(keep)
            for dst, src in zip(target, new.past, strict=True):
                dst[offset:, :, : length - new_len].fill(0)
                dst[offset:, :, length - new_len:] = src
            mask[offset:, length - new_len:] = new.mask
        self.buffers.current = idle
        self.past = target if self.model.binds_host_buffers else self.model.to_device(target)
        self.mask = mask
        self.rows = [self.rows[i] for i in keep] + (new.rows if new else [])
        keep_index = np.asarray(keep, dtype=np.int64)
        self.positions = np.concatenate([self.positions[keep_index], new.mask.sum(axis=1) if new else []]
                                        ).astype(np.int64)
        self.last_tokens = np.concatenate([self.last_tokens[keep_index],
                                           new.tokens if new else []]).astype(np.int64)

    def step(self) -> np.ndarray:
        """One decode step for every row; returns the last-position logits [rows, vocab]."""
        rows, length = self.mask.shape
        mask = np.concatenate([self.mask, np.ones((rows, 1), dtype=np.int64)], axis=1)
        if self.model.binds_host_buffers:
            idle = 1 - self.buffers.current
            present = self.buffers.views(idle, rows, length + 1)
            logits = self.model.run_into(self.last_tokens[:, None], mask, self.positions[:, None], self.past,
                                         present)
            self.buffers.current = idle
        else:
            logits, present = self.model.run_resident(self.last_tokens[:, None], mask, self.positions[:, None],
                                                      self.past)
        self.past, self.mask = present, mask
        self.positions = self.positions + 1
        return logits[:, -1, :]


class GenerationScheduler:
    """Owns one decoder session; admits, batches and steps sequences on its own thread."""

    def __init__(self, name: str, model: DecoderModel, tokenizer: TextTokenizer, context_length: int,
                 max_running: int, max_queued: int):
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.max_running = max_running
        self.max_queued = max_queued
        self._waiting: deque[Sequence] = deque()
        self._batch = Batch(model)
        self._admitting = 0  # taken from the queue, being prefilled
        self._cond = threading.Condition()
        self._stopping = False
        self._step_seconds = 0.05  # running estimate, for Retry-After
        self._thread = threading.Thread(target=self._loop, name=f"generate-{name}", daemon=True)
        metrics.MAX_RUNNING.labels(name).set(max_running)
        metrics.MAX_QUEUED.labels(name).set(max_queued)
        metrics.QUEUED.labels(name).set(0)
        metrics.RUNNING.labels(name).set(0)
        self._thread.start()

    # ---- request side (any thread) -------------------------------------------------------------
    def submit(self, prompt_ids: list[int], params: SamplingParams, n: int, loop: asyncio.AbstractEventLoop,
               handle: GenerationHandle | None = None) -> GenerationHandle:
        """Queue n sequences of one prompt. Passing an earlier handle adds them to it (indexes run on)."""
        handle = handle or GenerationHandle(loop)
        with self._cond:
            if self._stopping:
                raise EngineStopped(self.name)
            in_system = len(self._waiting) + self._admitting + self._batch.live()
            if in_system + n > self.max_running + self.max_queued:
                metrics.REJECTED.labels(self.name).inc()
                raise QueueFull(self.name, retry_after=self._retry_after())
            first = len(handle.sequences)
            for index in range(first, first + n):
                seq = Sequence(prompt_ids=prompt_ids, params=params, emit=handle.emit, tokenizer=self.tokenizer,
                               index=index)
                handle.sequences.append(seq)
                self._waiting.append(seq)
            metrics.QUEUED.labels(self.name).set(len(self._waiting))
            metrics.PROMPT_TOKENS.labels(self.name).inc(len(prompt_ids) * n)
            self._cond.notify()
        return handle

    def _retry_after(self) -> int:
        queued_steps = (len(self._waiting) / max(self.max_running, 1) + 1) * 64
        return max(1, min(60, int(queued_steps * self._step_seconds) + 1))

    def load(self) -> tuple[int, int]:
        """(running, queued) sequences."""
        with self._cond:
            return self._batch.live(), len(self._waiting)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            for seq in list(self._waiting) + self._batch.rows:
                seq.cancelled = True
            self._cond.notify()
        self._thread.join(timeout=10)

    # ---- scheduler thread ----------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._batch.live() and not self._stopping:
                    self._cond.wait()
                if self._stopping and not self._waiting and not self._batch.live():
                    return
                self._drop_cancelled_waiting()
                admitted = self._take_admissible()
                self._admitting = len(admitted)
            try:
                self._mark_cancelled()
                try:
                    self._rebuild_if_due(admitted)
                except Exception as exc:  # e.g. out of memory on a long prompt: only the newcomers fail
                    log.exception("prefill failed for model %s", self.name)
                    self._fail(admitted, f"prefill failed: {type(exc).__name__}: {exc}")
                with self._cond:
                    self._admitting = 0
                if self._batch.live():
                    started = time.monotonic()
                    logits = self._batch.step()
                    self._step_seconds = 0.8 * self._step_seconds + 0.2 * (time.monotonic() - started)
                    self._batch.last_tokens = self._advance(self._batch.rows, logits, self._batch.last_tokens)
            except Exception as exc:  # a failing model must not leave clients waiting forever
                log.exception("generation failed for model %s", self.name)
                self._fail_all(f"generation failed: {type(exc).__name__}: {exc}")
            with self._cond:
                self._admitting = 0
                metrics.QUEUED.labels(self.name).set(len(self._waiting))
                metrics.RUNNING.labels(self.name).set(self._batch.live())

    def _drop_cancelled_waiting(self) -> None:
        kept = deque(s for s in self._waiting if not s.cancelled)
        for seq in self._waiting:
            if seq.cancelled:
                seq.emit(TokenEvent("", 0, "cancelled", seq.index))
        self._waiting = kept

    def _take_admissible(self) -> list[Sequence]:
        room = self.max_running - self._batch.live()
        taken: list[Sequence] = []
        longest = 0
        while self._waiting and len(taken) < room:
            nxt = self._waiting[0]
            padded = (len(taken) + 1) * max(longest, len(nxt.prompt_ids))
            if taken and padded > PREFILL_TOKEN_BUDGET:
                break  # the next prefill takes it
            longest = max(longest, len(nxt.prompt_ids))
            taken.append(self._waiting.popleft())
        return taken

    def _mark_cancelled(self) -> None:
        """A client that went away frees its row now: it is no longer stepped, and leaves at the next rebuild."""
        for seq in self._batch.rows:
            if seq.cancelled and not seq.finish_reason:
                seq.finish_reason = "cancelled"
                seq.emit(TokenEvent("", 0, "cancelled", seq.index))

    def _rebuild_if_due(self, admitted: list[Sequence]) -> None:
        """Prefill newcomers and, when worth a copy of the cache, drop finished rows (one copy for both)."""
        finished = len(self._batch) - self._batch.live()
        if not admitted and not (finished and finished * 4 >= len(self._batch)):
            return
        keep = [i for i, seq in enumerate(self._batch.rows) if not seq.finish_reason]
        new = self._prefill(admitted).alive() if admitted else None
        with self._cond:  # newcomers leave `admitting` as they join the batch: submit() never counts them twice
            self._batch.rebuild(keep, new)
            self._admitting = 0

    def _prefill(self, seqs: list[Sequence]) -> Prefilled:
        """Run the prompts (left-padded, together) and sample each one's first token."""
        length = max(len(s.prompt_ids) for s in seqs)
        ids = np.full((len(seqs), length), self.tokenizer.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(seqs), length), dtype=np.int64)
        for row, seq in enumerate(seqs):
            ids[row, length - len(seq.prompt_ids):] = seq.prompt_ids
            mask[row, length - len(seq.prompt_ids):] = 1
        positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
        chunk = max(1, PREFILL_TOKEN_BUDGET // len(seqs))
        present = self.model.empty_past(len(seqs))
        for start in range(0, length, chunk):
            end = min(start + chunk, length)
            logits, present = self.model.run(ids[:, start:end], mask[:, :end], positions[:, start:end], present)
        tokens = self._advance(seqs, logits[:, -1, :], np.zeros(len(seqs), dtype=np.int64))
        return Prefilled(seqs, present, mask, tokens)

    def _advance(self, rows: list[Sequence], logits: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Sample the next token of each live row, emit its text, mark finished rows; returns the tokens."""
        tokens = tokens.copy()
        now = time.monotonic()
        for i, seq in enumerate(rows):
            if seq.finish_reason:
                continue
            token = sample(logits[i], seq.params, seq.rng)
            tokens[i] = token
            if seq.last_token_at is None:
                metrics.TIME_TO_FIRST_TOKEN.labels(self.name).observe(now - seq.admitted_at)
            else:
                metrics.INTER_TOKEN_LATENCY.labels(self.name).observe(now - seq.last_token_at)
            seq.last_token_at = now
            metrics.GENERATION_TOKENS.labels(self.name).inc()
            finish = None
            if token in self.tokenizer.eos_token_ids and not seq.params.ignore_eos:
                finish = "stop"
            else:
                seq.generated.append(token)
                seq.decoder.push(token)
                context_full = len(seq.prompt_ids) + len(seq.generated) >= self.context_length
                if len(seq.generated) >= seq.params.max_tokens or context_full:
                    finish = "length"
            text = seq.decoder.text
            stop_at = _find_stop(text, seq.params.stop, seq.emitted_chars)
            if stop_at is not None:
                text, finish = text[:stop_at], "stop"
            safe_end = len(text) if finish else max(seq.emitted_chars, len(text) - seq.holdback)
            delta = text[seq.emitted_chars:safe_end]
            seq.emitted_chars = safe_end
            seq.finish_reason = finish
            seq.emit(TokenEvent(delta, 1, finish, seq.index))
        return tokens

    def _fail_all(self, message: str) -> None:
        with self._cond:
            victims = list(self._batch.rows)
            self._batch = Batch(self.model)
            self._admitting = 0
        self._fail(victims, message)

    @staticmethod
    def _fail(seqs: list[Sequence], message: str) -> None:
        for seq in seqs:
            if not seq.finish_reason:
                seq.finish_reason = "error"
                seq.emit(TokenEvent(message, 0, "error", seq.index))


def _find_stop(text: str, stops: tuple[str, ...], emitted: int) -> int | None:
    if not stops:
        return None
    search_from = max(0, emitted - max(len(s) for s in stops))
    found = [i for i in (text.find(s, search_from) for s in stops) if i >= 0]
    return min(found) if found else None
