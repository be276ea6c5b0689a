"""Continuous batching: one scheduler thread per model plans the steps its graph runner runs.

Sequences wait in a bounded queue (admission beyond it is refused with QueueFull, a 429), join the running batch
between decode steps (prefilled into free slots, a bounded number of prompt tokens at a time) and leave it as
soon as they finish or their client goes away: a cancelled sequence leaves at the next step. Each pass is
planned by planner.py (a pure function of the sequences and the time estimates) and carried out here: the plan's
prefill calls and decode step on the runner (runner.py), sampling.py picks tokens, output.py turns them into text.
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
from moltbot.engine.planner import Estimates, PlanState, PrefillStep, StepPlan, chunk_tokens, plan_step
from moltbot.engine.prefill import PrefillChunk
from moltbot.engine.runner import GraphRunner
from moltbot.engine.sampling import SamplingParams, TokenCounts, sample_batch
from moltbot.engine.tokenizer import TextTokenizer

log = logging.getLogger("moltbot.engine")

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
        self._admitting: list[Sequence] = []  # taken from the queue, being prefilled whole this pass
        self._chunking: Sequence | None = None  # its prompt prefilled a chunk a pass, between steps
        self._cond = threading.Condition()
        self._stopping = False
        self._step_seconds = 0.05  # running estimate, for Retry-After
        # A chunk's size comes from a time budget, not a token count: the same count costs 10x more on a small CPU
        # than on a GPU, and the stall is what a client sees (Sarathi-Serve sizes chunks by the same rule).
        self.prefill_stall_seconds = prefill_stall_seconds
        self._prefill_token_seconds: float | None = None  # running estimate of a prompt token's prefill time
        self._decode_seconds: float | None = None  # running estimate of a decode call's time (the graph alone)
        self._last_step_at: float | None = None
        self._pass_started: float | None = None  # when the pass under way began; None between passes
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
            in_system = len(self._waiting) + len(self._admitting) + len(self._held())
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
        slots = [self._remaining_steps(s) for s in [*self._admitting, *self._held()]]
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

    def stalled_seconds(self) -> float:
        """How long the pass under way has run (0 between passes). A pass is one plan and its graph calls: at most
        seconds, even for a large prompt on a CPU; one that never ends is a wedged graph call, or a thread that
        died in it (the start is never cleared), and only a new process recovers from either."""
        started = self._pass_started
        return 0.0 if started is None else time.monotonic() - started

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            for seq in [*self._waiting, *self._admitting, *self._held()]:
                seq.cancelled = True
            self._cond.notify()
        self._thread.join(timeout=10)

    def _held(self) -> list[Sequence]:
        """The sequences that hold a slot: running, and the one whose prompt goes in chunks."""
        return [*self._running, *([self._chunking] if self._chunking else [])]

    # ---- scheduler thread ----------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            try:
                with self._cond:
                    while not self._waiting and not self._held() and not self._stopping:
                        self._last_step_at = None  # the idle time is no step
                        self._cond.wait()
                    if self._stopping and not self._waiting and not self._held():
                        return
                    plan = plan_step(PlanState(self._waiting, self._running, self._chunking, self.runner.slots,
                                               self.max_running), self.estimates())
                    self._take(plan)
                    self._pass_started = time.monotonic()
                self._execute(plan)
            except Exception as exc:  # a failing model must not leave clients waiting forever
                log.exception("generation failed for model %s", self.name)
                self._fail_all(f"generation failed: {type(exc).__name__}: {exc}")
            self._flush()
            with self._cond:
                self._admitting = []
                self._pass_started = None
                metrics.QUEUED.labels(self.name).set(len(self._waiting))
                metrics.RUNNING.labels(self.name).set(len(self._running))

    def _take(self, plan: StepPlan[Sequence]) -> None:
        """Under the lock: the plan's cancelled and admitted sequences leave the queue, each admitted one with its
        slot, into `admitting` or (the long one) `chunking`; submit() counts every sequence once throughout."""
        gone = {id(s) for s in plan.cancelled} | {id(s) for s, _ in plan.admitted}
        self._waiting = deque(s for s in self._waiting if id(s) not in gone)
        for seq, slot in plan.admitted:
            seq.slot = slot
            if seq is plan.chunking:
                self._chunking = seq
            else:
                self._admitting.append(seq)

    def _execute(self, plan: StepPlan[Sequence]) -> None:
        """Carry the plan out: the cancelled leave, the prefill calls run in order (a sequence whose prompt is whole
        samples its first token, out at once), then one decode step of those still running."""
        for seq in plan.cancelled:
            self._emit(seq, TokenEvent("", 0, "cancelled", seq.index))
            if seq.slot is not None:
                self._finish(seq, "cancelled")
            else:
                seq.finish_reason = "cancelled"
        for call in plan.calls:
            self._prefill(call)
        running = [s for s in plan.decode if not s.finish_reason and s.slot is not None]
        if running:
            self._time_step()
            started = time.monotonic()
            logits = self.runner.decode([s.slot for s in running if s.slot is not None],
                                        [s.last_token for s in running])
            self._time_decode(time.monotonic() - started)
            self._advance(running, logits)

    def _prefill(self, call: list[PrefillStep[Sequence]]) -> None:
        """One prefill call; the sequences whose prompt it completes join the batch with their first token. A
        failure fails this call's sequences only (the runner frees their slots)."""
        steps = [step for step in call if not step.seq.finish_reason]  # an earlier piece of it may have failed
        if not steps:
            return
        started = time.monotonic()
        try:
            logits = self.runner.prefill([_chunk(step) for step in steps])
        except Exception as exc:
            log.exception("prefill failed for model %s", self.name)
            seqs = [s.seq for s in steps]
            with self._cond:
                for seq in seqs:
                    seq.slot = None
                    self._leave(seq)
            self._fail(seqs, f"prefill failed: {type(exc).__name__}: {exc}")
            return
        self._time_prefill(sum(s.end - s.start for s in steps), time.monotonic() - started)
        whole: list[int] = []
        with self._cond:  # sequences leave admitting or chunking as they join the batch: never counted twice
            for row, step in enumerate(steps):
                step.seq.prefilled = step.end
                if step.end == len(step.seq.prompt_ids):
                    self._leave(step.seq)
                    self._running.append(step.seq)
                    whole.append(row)
        if whole:
            self._advance([steps[row].seq for row in whole], logits[whole])
            self._flush()  # first tokens out now, not after the decode step

    def _leave(self, seq: Sequence) -> None:
        """(Under the lock.) The sequence is no longer being admitted, chunked or run."""
        if seq in self._admitting:
            self._admitting.remove(seq)
        if seq is self._chunking:
            self._chunking = None
        if seq in self._running:
            self._running.remove(seq)

    def _time_step(self) -> None:
        """The time from one decode step to the next while the batch runs (decode, sampling, output, admissions:
        the rate at which a sequence's tokens come), averaged, for Retry-After."""
        now = time.monotonic()
        if self._last_step_at is not None:  # None after an idle wait (see _loop): a slow model's steps count too
            self._step_seconds = 0.9 * self._step_seconds + 0.1 * (now - self._last_step_at)
        self._last_step_at = now

    def estimates(self) -> Estimates:
        return Estimates(self.prefill_stall_seconds, self._prefill_token_seconds, self._decode_seconds)

    def chunk_tokens(self) -> int:
        """The size of the next chunk of a long prompt (planner.chunk_tokens) at the current estimates."""
        return chunk_tokens(self.estimates())

    def _time_decode(self, seconds: float) -> None:
        self._decode_seconds = _running(self._decode_seconds, seconds)

    def _time_prefill(self, tokens: int, seconds: float) -> None:
        """Fold a prefill call's seconds per token into the running estimate (it rises with the cache's length as
        attention grows, and with the machine's load)."""
        self._prefill_token_seconds = _running(self._prefill_token_seconds, seconds / max(tokens, 1))

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
            self._leave(seq)
        if seq.slot is not None:
            slot, seq.slot = seq.slot, None
            self.runner.release(slot)

    def _fail_all(self, message: str) -> None:
        """After a failure of the runner or of this thread: every unfinished sequence in the batch or being admitted
        gets an error, and the runner starts again empty."""
        with self._cond:
            victims = [s for s in [*self._admitting, *self._held()] if not s.finish_reason]
            self._running = []
            self._admitting = []
            self._chunking = None
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


def _chunk(step: PrefillStep[Sequence]) -> PrefillChunk:
    """A planned step as the runner takes it (a planned sequence has its slot: _take gave it)."""
    assert step.seq.slot is not None
    return PrefillChunk(step.seq.slot, step.seq.prompt_ids[step.start: step.end], step.start)


def _running(previous: float | None, value: float) -> float:
    """A running estimate that follows a measured time within a few calls (30% of each new figure)."""
    return value if previous is None else 0.7 * previous + 0.3 * value


def _deliver(items: list[tuple[GenerationHandle, TokenEvent]]) -> None:
    for handle, event in items:
        handle.deliver(event)
