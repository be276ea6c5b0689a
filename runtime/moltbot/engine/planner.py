"""One scheduler pass, planned: who leaves, who is admitted into which slot, which prompt tokens are prefilled in
which calls, who is stepped. A pure function of the scheduler's state and its time estimates (no runner, no
clock, no I/O), so that the policy is tested on plain data; scheduler.py carries the plan out.

The chunk policy lives here alone. Newcomers are prefilled together within a token budget; while sequences
run, a long prompt goes in one chunk a pass, a decode step of the others between its chunks (vLLM's chunked
prefill, in its simplest form), each chunk as many tokens as fit a time budget at the measured prefill rate
(Sarathi-Serve's rule: the stall is what a client sees, and the same token count costs ten times more on a small
CPU than on a GPU).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

# Most (padded) prompt tokens in one prefill call: bounds the [rows, tokens, vocab] logits a prefill makes.
# Longer prompts are prefilled alone in pieces of this size, each continuing the cache the previous one wrote.
PREFILL_TOKEN_BUDGET = 1024
# While sequences are running, a prompt longer than this is prefilled a chunk per pass, a decode step of the
# running ones between its chunks: a 1024-token newcomer no longer stalls every stream for its whole prefill.
# It is also the largest chunk.
PREFILL_CHUNK_TOKENS = 256
# The smallest chunk: below it a call's fixed cost (binding every layer, the logits) outweighs its tokens.
MIN_CHUNK_TOKENS = 16


class Planned(Protocol):
    """What the planner reads of a sequence (scheduler.Sequence; plain objects in tests)."""

    @property
    def prompt_ids(self) -> list[int]: ...
    @property
    def prefilled(self) -> int: ...  # prompt tokens in its slot so far
    @property
    def slot(self) -> int | None: ...
    @property
    def cancelled(self) -> bool: ...


S = TypeVar("S", bound=Planned)


@dataclass(frozen=True)
class Estimates:
    """The scheduler's running time estimates, in seconds (None until measured)."""

    stall_seconds: float  # the most a chunk should hold the running sequences up (MOLTBOT_PREFILL_STALL_MS)
    prefill_token_seconds: float | None = None  # a prompt token's prefill
    decode_seconds: float | None = None  # a decode call


@dataclass(frozen=True)
class PlanState(Generic[S]):
    """The scheduler's sequences at the start of a pass."""

    waiting: Sequence[S]  # in arrival order
    running: Sequence[S]  # in a slot, prompt whole
    chunking: S | None  # in a slot, its prompt going in a chunk a pass
    slots: int  # the runner's
    max_running: int


@dataclass(frozen=True)
class PrefillStep(Generic[S]):
    """Prompt tokens [start, end) of `seq` into its slot."""

    seq: S
    start: int
    end: int


@dataclass
class StepPlan(Generic[S]):
    cancelled: list[S] = field(default_factory=list)  # leave now (waiting, running or chunking)
    admitted: list[tuple[S, int]] = field(default_factory=list)  # from the queue, into these slots
    chunking: S | None = None  # the long prompt given a chunk this pass (stepped too after its last)
    calls: list[list[PrefillStep[S]]] = field(default_factory=list)  # prefill calls, run in order
    # Stepped after the prefills: the running ones and those whose prompt is whole after this pass's calls (less
    # any that finish at their first token).
    decode: list[S] = field(default_factory=list)


def chunk_tokens(estimates: Estimates) -> int:
    """The next chunk of a long prompt: as many tokens as fit the stall budget at the measured prefill rate (the
    smallest chunk until a prefill has been timed), within MIN_CHUNK_TOKENS..PREFILL_CHUNK_TOKENS.

    The budget is the stall setting or one decode step, whichever is longer: on a graph whose steps are slow
    (int4 with its block minimums, a busy machine) a 40 ms chunk is all fixed cost, and the long prompt's first
    token would wait for hundreds of tiny chunks; a chunk as long as a step at most doubles the others'
    inter-token time."""
    if estimates.prefill_token_seconds is None:
        fitting = MIN_CHUNK_TOKENS
    else:
        budget = max(estimates.stall_seconds, estimates.decode_seconds or 0.0)
        fitting = int(budget / max(estimates.prefill_token_seconds, 1e-9))
    return min(max(fitting, MIN_CHUNK_TOKENS), PREFILL_CHUNK_TOKENS)


def plan_step(state: PlanState[S], estimates: Estimates) -> StepPlan[S]:
    """The pass: cancelled sequences leave (their slots free from the next pass on); newcomers take the lowest
    free slots in arrival order, within the room under max_running; a long one arriving while others run becomes
    the one prompt in chunks (one at a time: those behind it wait their turn)."""
    plan: StepPlan[S] = StepPlan(cancelled=[s for s in [*state.waiting, *state.running] if s.cancelled])
    chunking = state.chunking
    if chunking is not None and chunking.cancelled:
        plan.cancelled.append(chunking)
    held = {s.slot for s in [*state.running, *([state.chunking] if state.chunking else [])]}
    free = [slot for slot in range(state.slots) if slot not in held]
    room = min(state.max_running - len(state.running) - (state.chunking is not None), len(free))
    whole, long = _admissible([s for s in state.waiting if not s.cancelled], room, running=bool(state.running),
                              chunking=state.chunking is not None)
    plan.admitted = list(zip([*whole, *([long] if long else [])], free, strict=False))
    plan.calls = _whole_prompt_calls(whole)
    plan.decode = [s for s in state.running if not s.cancelled] + whole
    chunking = long or (chunking if chunking is not None and not chunking.cancelled else None)
    if chunking is not None:
        start = chunking.prefilled
        end = min(start + chunk_tokens(estimates), len(chunking.prompt_ids))
        plan.calls.append([PrefillStep(chunking, start, end)])
        plan.chunking = chunking
        if end == len(chunking.prompt_ids):
            plan.decode.append(chunking)
    return plan


def _admissible(waiting: list[S], room: int, running: bool, chunking: bool) -> tuple[list[S], S | None]:
    """Newcomers for this pass, in arrival order, up to `room`: those prefilled whole (their padded prompts within
    the prefill token budget; a longer prompt goes alone), and while others run, a long prompt to go in chunks
    where none is (it ends the admissions of the pass)."""
    taken: list[S] = []
    longest = 0
    for nxt in waiting:
        length = len(nxt.prompt_ids)
        if len(taken) >= room:
            break
        if running and length > PREFILL_CHUNK_TOKENS:
            return taken, None if chunking else nxt
        if taken and (len(taken) + 1) * max(longest, length) > PREFILL_TOKEN_BUDGET:
            break
        longest = max(longest, length)
        taken.append(nxt)
    return taken, None


def _whole_prompt_calls(seqs: list[S]) -> list[list[PrefillStep[S]]]:
    """Prefill calls for prompts that go in whole this pass: one call for all of them, or for a prompt longer
    than the budget (alone, see _admissible) one call per budget's worth of tokens."""
    if len(seqs) == 1 and len(seqs[0].prompt_ids) > PREFILL_TOKEN_BUDGET:
        total = len(seqs[0].prompt_ids)
        return [[PrefillStep(seqs[0], start, min(start + PREFILL_TOKEN_BUDGET, total))]
                for start in range(0, total, PREFILL_TOKEN_BUDGET)]
    return [[PrefillStep(s, 0, len(s.prompt_ids)) for s in seqs]] if seqs else []
