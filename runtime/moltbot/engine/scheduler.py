"""Continuous batching: one scheduler thread per model plans the steps its graph runner runs.

Sequences wait in a bounded queue (admission beyond it is refused with QueueFull, a 429), join the running batch
between decode steps (prefilled into free slots, a bounded number of prompt tokens at a time) and leave it as
soon as they finish or their client goes away: a cancelled sequence leaves at the next step. The runner
(runner.py) runs the graph; sampling.py picks tokens; output.py turns them into text.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from moltbot import metrics
from moltbot.engine.errors import EngineStopped, QueueFull
from moltbot.engine.output import OutputProcessor, SentLogprobs
from moltbot.engine.runner import ChunkedPrefillRunner, GraphRunner
from moltbot.engine.sampling import SamplingParams, TokenCounts, sample_batch
from moltbot.engine.tokenizer import TextTokenizer

log = logging.getLogger("moltbot.engine")

# Most (padded) prompt tokens in one prefill call: bounds the [rows, tokens, vocab] logits a prefill makes.
# Longer prompts are prefilled in chunks, each continuing the cache the previous one wrote.
PREFILL_TOKEN_BUDGET = 1024
# While sequences are running, a prompt longer than this is prefilled a chunk per pass, a decode step of the
# running ones between its chunks (where the runner can: ChunkedPrefillRunner): a 1024-token newcomer no
# longer stalls every stream for its whole prefill (vLLM's chunked prefill, in its simplest form). It is also
# the largest chunk.
PREFILL_CHUNK_TOKENS = 256
# The smallest chunk: below it a call's fixed cost (binding every layer, the logits) outweighs its tokens.
MIN_CHUNK_TOKENS = 16
# Seconds: the most a 429's Retry-After asks a client to wait. The estimate counts each running sequence to its
# max_tokens (often the whole context), so it is an upper bound; clients such as the openai SDK ignore values over
# 60 and back off on their own, others would sleep for all of it.
RETRY_AFTER_MAX = 60


@dataclass
class TokenEvent:
    """What the scheduler hands to the request's side: new text, and once, the finish reason."""

    text: str
    tokens: int
    finish_reason: str | None = None
    index: int = 0  # which of the request's n sequences
    logprobs: tuple[SentLogprobs, ...] = ()  # of the tokens whose text this event completes (where asked for)


@dataclass
class Sequence:
    prompt_ids: list[int]
    params: SamplingParams
    handle: GenerationHandle
    output: OutputProcessor
    index: int = 0
    slot: int | None = None  # the runner's slot while running (or while its prompt is prefilled in chunks)
    prefilled: int = 0  # prompt tokens in the slot so far, for a prompt prefilled in chunks between steps
    last_token: int = 0
    finish_reason: str | None = None
    cancelled: bool = False
    admitted_at: float = field(default_factory=time.monotonic)
    last_token_at: float | None = None

    def __post_init__(self) -> None:
        # Seeded: reproducible, and different for each of a request's n choices (any int64 seed is accepted).
        seed = None if self.params.seed is None else [self.params.seed & (2**64 - 1), self.index]
        self.rng = np.random.default_rng(seed)
        # Its tokens, counted as they come, where a penalty reads them (the sampling pipeline keeps them).
        self.counts = TokenCounts(self.prompt_ids) if self.params.penalised else None
        # Its place in its grammar, where constrained: each of the n choices its own.
        self.constraint = self.params.grammar.matcher() if self.params.grammar else None


class GenerationHandle:
    """The asyncio side of one request: an async iterator of TokenEvents, cancellable."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._queue: asyncio.Queue[TokenEvent] = asyncio.Queue()
        self.sequences: list[Sequence] = []

    def deliver(self, event: TokenEvent) -> None:  # on the handle's loop
        self._queue.put_nowait(event)

    async def next_event(self) -> TokenEvent:
        return await self._queue.get()

    def cancel(self) -> None:
        for seq in self.sequences:
            seq.cancelled = True


class GenerationScheduler:
    """Owns one graph runner; admits, batches and steps sequences on its own thread."""

    def __init__(self, name: str, runner: GraphRunner, tokenizer: TextTokenizer, context_length: int,
                 max_running: int, max_queued: int, prefill_stall_seconds: float = 0.04):
        self.name = name
        self.runner = runner
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.max_running = max_running
        self.max_queued = max_queued
        self._waiting: deque[Sequence] = deque()
        self._running: list[Sequence] = []  # in a slot; changed under the lock, read by submit()
        self._admitting: list[Sequence] = []  # taken from the queue, being prefilled
        self._chunking: list[Sequence] = []  # at most one: its prompt prefilled a chunk a pass, between steps
        self._cond = threading.Condition()
        self._stopping = False
        self._step_seconds = 0.05  # running estimate, for Retry-After
        # A chunk's size comes from a time budget, not a token count: the same count costs 10x more on a small CPU
        # than on a GPU, and the stall is what a client sees (Sarathi-Serve sizes chunks by the same rule).
        self.prefill_stall_seconds = prefill_stall_seconds
        self._prefill_token_seconds: float | None = None  # running estimate of a prompt token's prefill time
        self._decode_seconds: float | None = None  # running estimate of a decode call's time (the graph alone)
        self._last_step_at: float | None = None
        # Events of one scheduler pass, handed to each event loop in one call: one wake-up of the loop per step
        # rather than one per sequence (with 32 streams, per-sequence wake-ups crowd out /health and the rest).
        self._outbox: list[tuple[GenerationHandle, TokenEvent]] = []
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
            in_system = len(self._waiting) + len(self._admitting) + len(self._chunking) + len(self._running)
            if in_system + n > self.max_running + self.max_queued:
                metrics.REJECTED.labels(self.name).inc()
                raise QueueFull(self.name, retry_after=self._retry_after(in_system + n - self.max_running
                                                                         - self.max_queued))
            first = len(handle.sequences)
            for index in range(first, first + n):
                output = OutputProcessor(self.tokenizer, params, len(prompt_ids), self.context_length)
                seq = Sequence(prompt_ids=prompt_ids, params=params, handle=handle, output=output, index=index)
                handle.sequences.append(seq)
                self._waiting.append(seq)
            metrics.QUEUED.labels(self.name).set(len(self._waiting))
            metrics.PROMPT_TOKENS.labels(self.name).inc(len(prompt_ids) * n)
            self._cond.notify()
        return handle

    def _retry_after(self, excess: int) -> int:
        """Seconds until `excess` more sequences have left, so that a request refused now would be admitted (at
        least 1): the work ahead, in steps, at the measured step rate. A running sequence leaves when it has
        generated the rest of its max_tokens (an upper bound: EOS may come sooner); queued ones take the slots
        as they free, in order, and leave as long after."""
        slots = [self._remaining_steps(s) for s in [*self._running, *self._admitting, *self._chunking]]
        leaving = list(slots)
        slots += [0] * max(0, self.max_running - len(slots))
        heapq.heapify(slots)
        for seq in self._waiting:
            end = slots[0] + self._remaining_steps(seq)
            heapq.heapreplace(slots, end)
            leaving.append(end)
        leaving.sort()
        steps = leaving[min(max(excess, 1), len(leaving)) - 1] if leaving else 0
        return max(1, min(RETRY_AFTER_MAX, math.ceil(steps * self._step_seconds)))

    @staticmethod
    def _remaining_steps(seq: Sequence) -> int:
        return max(0, min(seq.params.max_tokens, seq.output.room) - len(seq.output.generated))

    def load(self) -> tuple[int, int]:
        """(running, queued) sequences."""
        with self._cond:
            return len(self._running), len(self._waiting)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            for seq in [*self._waiting, *self._admitting, *self._chunking, *self._running]:
                seq.cancelled = True
            self._cond.notify()
        self._thread.join(timeout=10)

    # ---- scheduler thread ----------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            admitted: list[Sequence] = []
            try:
                with self._cond:
                    while not self._waiting and not self._running and not self._chunking and not self._stopping:
                        self._last_step_at = None  # the idle time is no step
                        self._cond.wait()
                    if self._stopping and not self._waiting and not self._running and not self._chunking:
                        return
                    self._drop_cancelled_waiting()
                    admitted = self._admitting = self._take_admissible()
                self._release_cancelled()
                if admitted:
                    self._admit(admitted)
                    self._flush()  # first tokens out now, not after the next decode step
                if self._chunking:
                    self._prefill_chunk(self._chunking[0])
                running = [s for s in self._running if s.slot is not None]  # all of them: admitted with a slot
                if running:
                    self._time_step()
                    started = time.monotonic()
                    logits = self.runner.decode([s.slot for s in running if s.slot is not None],
                                                [s.last_token for s in running])
                    self._time_decode(time.monotonic() - started)
                    self._advance(running, logits)
            except Exception as exc:  # a failing model must not leave clients waiting forever
                log.exception("generation failed for model %s", self.name)
                self._fail_all(admitted, f"generation failed: {type(exc).__name__}: {exc}")
            self._flush()
            with self._cond:
                self._admitting = []
                metrics.QUEUED.labels(self.name).set(len(self._waiting))
                metrics.RUNNING.labels(self.name).set(len(self._running))

    def _time_step(self) -> None:
        """The time from one decode step to the next while the batch runs (decode, sampling, output, admissions:
        the rate at which a sequence's tokens come), averaged, for Retry-After."""
        now = time.monotonic()
        if self._last_step_at is not None:  # None after an idle wait (see _loop): a slow model's steps count too
            self._step_seconds = 0.9 * self._step_seconds + 0.1 * (now - self._last_step_at)
        self._last_step_at = now

    def _drop_cancelled_waiting(self) -> None:
        kept = deque(s for s in self._waiting if not s.cancelled)
        for seq in self._waiting:
            if seq.cancelled:
                self._emit(seq, TokenEvent("", 0, "cancelled", seq.index))
        self._waiting = kept

    def _take_admissible(self) -> list[Sequence]:
        """Newcomers for the next prefill: as many as there are free slots, up to the prefill token budget
        (a prompt longer than the budget goes alone, in chunks)."""
        room = min(self.max_running - len(self._running) - len(self._chunking), self.runner.free_slots())
        taken: list[Sequence] = []
        longest = 0
        while self._waiting and len(taken) < room:
            nxt = self._waiting[0]
            if self._running and len(nxt.prompt_ids) > PREFILL_CHUNK_TOKENS and isinstance(
                    self.runner, ChunkedPrefillRunner):
                if not self._chunking:  # one long prompt at a time; those behind it wait their turn
                    self._chunking.append(self._waiting.popleft())
                break
            padded = (len(taken) + 1) * max(longest, len(nxt.prompt_ids))
            if taken and padded > PREFILL_TOKEN_BUDGET:
                break  # the next prefill takes it
            longest = max(longest, len(nxt.prompt_ids))
            taken.append(self._waiting.popleft())
        return taken

    def _release_cancelled(self) -> None:
        """A client that went away frees its slot now: it is not stepped again."""
        for seq in [*self._running, *self._chunking]:
            if seq.cancelled and not seq.finish_reason:
                self._emit(seq, TokenEvent("", 0, "cancelled", seq.index))
                self._finish(seq, "cancelled")

    def _prefill_chunk(self, seq: Sequence) -> None:
        """The next chunk of a long prompt into its slot; after the last, the sequence joins the batch with its
        first token. A failure fails this sequence only (the runner frees its slot)."""
        assert isinstance(self.runner, ChunkedPrefillRunner)
        chunk = seq.prompt_ids[seq.prefilled: seq.prefilled + self.chunk_tokens()]
        started = time.monotonic()
        try:
            seq.slot, logits = self.runner.prefill_chunk(seq.slot, chunk)
        except Exception as exc:
            log.exception("prefill failed for model %s", self.name)
            self._finish(seq, "error")
            self._fail([seq], f"prefill failed: {type(exc).__name__}: {exc}")
            return
        self._time_prefill(len(chunk), time.monotonic() - started)
        seq.prefilled += len(chunk)
        if seq.prefilled == len(seq.prompt_ids):
            with self._cond:
                self._chunking.remove(seq)
                self._running.append(seq)
            self._advance([seq], logits[None])

    def chunk_tokens(self) -> int:
        """The next chunk of a long prompt: as many tokens as fit the stall budget at the measured prefill rate
        (the smallest chunk until a prefill has been timed), within MIN_CHUNK_TOKENS..PREFILL_CHUNK_TOKENS.

        The budget is the stall setting or one decode step, whichever is longer: on a graph whose steps are slow
        (int4 with its block minimums, a busy machine) a 40 ms chunk is all fixed cost, and the long prompt's
        first token would wait for hundreds of tiny chunks; a chunk as long as a step at most doubles the others'
        inter-token time."""
        if self._prefill_token_seconds is None:
            fitting = MIN_CHUNK_TOKENS
        else:
            budget = max(self.prefill_stall_seconds, self._decode_seconds or 0.0)
            fitting = int(budget / max(self._prefill_token_seconds, 1e-9))
        return min(max(fitting, MIN_CHUNK_TOKENS), PREFILL_CHUNK_TOKENS)

    def _time_decode(self, seconds: float) -> None:
        self._decode_seconds = _running(self._decode_seconds, seconds)

    def _time_prefill(self, tokens: int, seconds: float) -> None:
        """Fold a prefill call's seconds per token into the running estimate (it rises with the cache's length as
        attention grows, and with the machine's load)."""
        self._prefill_token_seconds = _running(self._prefill_token_seconds, seconds / max(tokens, 1))

    def _admit(self, admitted: list[Sequence]) -> None:
        """Prefill the newcomers into free slots and sample their first tokens. A failed prefill (e.g. out of memory
        on a long prompt) fails only the newcomers: the runner frees the slots it had given them."""
        started = time.monotonic()
        try:
            slots, logits = self.runner.prefill([s.prompt_ids for s in admitted], PREFILL_TOKEN_BUDGET)
        except Exception as exc:
            log.exception("prefill failed for model %s", self.name)
            with self._cond:
                self._admitting = []
            self._fail(admitted, f"prefill failed: {type(exc).__name__}: {exc}")
            return
        self._time_prefill(sum(len(s.prompt_ids) for s in admitted), time.monotonic() - started)
        with self._cond:  # newcomers leave `admitting` as they join the batch: submit() never counts them twice
            for seq, slot in zip(admitted, slots, strict=True):
                seq.slot = slot
            self._running.extend(admitted)
            self._admitting = []
        self._advance(admitted, logits)

    def _advance(self, seqs: list[Sequence], logits: np.ndarray) -> None:
        """Sample the sequences' next tokens from their rows of logits (one pass of the sampling pipeline over the
        step), emit their text, finish where they end. A row that cannot be sampled (NaN scores) fails its own
        sequence only."""
        now = time.monotonic()
        rows: list[Sequence | None] = []
        for seq in seqs:
            gone = seq.cancelled and not seq.finish_reason  # went away during this step: not sampled
            if gone:
                self._emit(seq, TokenEvent("", 0, "cancelled", seq.index))
                self._finish(seq, "cancelled")
            rows.append(None if gone else seq)
        for seq, sampled in zip(seqs, sample_batch(logits, rows), strict=True):
            if sampled is None:
                continue
            if sampled.error is not None:
                self._emit(seq, TokenEvent(f"sampling failed: {sampled.error}", 0, "error", seq.index))
                self._finish(seq, "error")
                continue
            token = seq.last_token = sampled.token
            if seq.last_token_at is None:
                metrics.TIME_TO_FIRST_TOKEN.labels(self.name).observe(now - seq.admitted_at)
            else:
                metrics.INTER_TOKEN_LATENCY.labels(self.name).observe(now - seq.last_token_at)
            seq.last_token_at = now
            metrics.GENERATION_TOKENS.labels(self.name).inc()
            # A grammar that is complete ends the sequence (the mask allows nothing but EOS after it).
            complete = seq.constraint is not None and seq.constraint.done
            delta, finish, logprobs = seq.output.push(token, sampled.logprobs, complete=complete)
            self._emit(seq, TokenEvent(delta, 1, finish, seq.index, logprobs))
            if finish:
                self._finish(seq, finish)

    def _finish(self, seq: Sequence, reason: str) -> None:
        """The sequence leaves the batch (its final event is already emitted) and its slot is freed."""
        seq.finish_reason = reason
        with self._cond:
            if seq in self._running:
                self._running.remove(seq)
            if seq in self._chunking:
                self._chunking.remove(seq)
        if seq.slot is not None:
            slot, seq.slot = seq.slot, None
            self.runner.release(slot)

    def _fail_all(self, admitted: list[Sequence], message: str) -> None:
        """After a failure of the runner or of this thread: every unfinished sequence in the batch or being admitted
        gets an error, and the runner starts again empty."""
        with self._cond:
            victims = [s for s in [*self._running, *self._chunking, *admitted] if not s.finish_reason]
            self._running = []
            self._admitting = []
            self._chunking = []
        for seq in victims:
            seq.slot = None
        with contextlib.suppress(Exception):  # the runner that failed may fail again: its state is dropped anyway
            self.runner.reset()
        self._fail(victims, message)

    def _fail(self, seqs: list[Sequence], message: str) -> None:
        for seq in seqs:
            seq.finish_reason = "error"
            self._emit(seq, TokenEvent(message, 0, "error", seq.index))

    def _emit(self, seq: Sequence, event: TokenEvent) -> None:
        self._outbox.append((seq.handle, event))

    def _flush(self) -> None:
        """Hand this pass's events to their loops, one call per loop."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[GenerationHandle, TokenEvent]]] = {}
        for handle, event in self._outbox:
            by_loop.setdefault(handle.loop, []).append((handle, event))
        self._outbox = []
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening any more
                loop.call_soon_threadsafe(_deliver, items)


def _running(previous: float | None, value: float) -> float:
    """A running estimate that follows a measured time within a few calls (30% of each new figure)."""
    return value if previous is None else 0.7 * previous + 0.3 * value


def _deliver(items: list[tuple[GenerationHandle, TokenEvent]]) -> None:
    for handle, event in items:
        handle.deliver(event)
