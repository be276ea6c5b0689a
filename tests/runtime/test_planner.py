"""The scheduler's pass planning (engine/planner.py) on plain data: admission order and slots, room, prefill
calls within the token budget, chunks of a long prompt within their bounds, decode membership, cancellation."""

from __future__ import annotations

from dataclasses import dataclass

from moltbot.engine.planner import (
    MIN_CHUNK_TOKENS,
    PREFILL_CHUNK_TOKENS,
    PREFILL_TOKEN_BUDGET,
    Estimates,
    PlanState,
    StepPlan,
    plan_step,
)

NO_ESTIMATES = Estimates(stall_seconds=0.04)
MS_A_TOKEN = Estimates(stall_seconds=0.064, prefill_token_seconds=0.001)  # 64-token chunks


@dataclass(eq=False)
class Seq:
    prompt_ids: list[int]
    prefilled: int = 0
    slot: int | None = None
    cancelled: bool = False


def prompt(tokens: int) -> Seq:
    return Seq(list(range(tokens)))


def running(*slots: int) -> list[Seq]:
    return [Seq([1, 2], prefilled=2, slot=slot) for slot in slots]


def plan(waiting: list[Seq], run: list[Seq] | None = None, chunking: Seq | None = None, slots: int = 4,
         max_running: int = 4, estimates: Estimates = NO_ESTIMATES) -> StepPlan[Seq]:
    return plan_step(PlanState(waiting, run or [], chunking, slots, max_running), estimates)


def ranges(p: StepPlan[Seq]) -> list[list[tuple[Seq, int, int]]]:
    return [[(step.seq, step.start, step.end) for step in call] for call in p.calls]


def test_newcomers_take_the_lowest_free_slots_in_arrival_order_within_the_room():
    waiting = [prompt(5), prompt(3), prompt(8)]
    p = plan(waiting, running(0, 2))
    assert p.admitted == [(waiting[0], 1), (waiting[1], 3)]  # two free slots: the third waits
    assert ranges(p) == [[(waiting[0], 0, 5), (waiting[1], 0, 3)]]  # one call for both
    assert p.chunking is None and not p.cancelled
    # max_running bounds the room below the slot count; nothing to admit: no call
    assert plan(waiting, running(0), max_running=2).admitted == [(waiting[0], 1)]
    assert plan(waiting, running(0, 1, 2, 3)).calls == []


def test_a_prefill_call_holds_its_padded_prompts_within_the_budget():
    half = PREFILL_TOKEN_BUDGET // 2
    waiting = [prompt(10), prompt(half), prompt(10)]
    p = plan(waiting)
    # 3 rows padded to `half` would be 1.5 budgets: the third waits for the next pass, in order
    assert [s for s, _ in p.admitted] == waiting[:2] and ranges(p) == [[(waiting[0], 0, 10), (waiting[1], 0, half)]]


def test_with_nothing_running_a_long_prompt_goes_whole_alone_in_pieces_of_the_budget():
    long, short = prompt(2 * PREFILL_TOKEN_BUDGET + 5), prompt(4)
    p = plan([long, short])
    assert p.admitted == [(long, 0)] and p.chunking is None
    assert ranges(p) == [[(long, 0, PREFILL_TOKEN_BUDGET)], [(long, PREFILL_TOKEN_BUDGET, 2 * PREFILL_TOKEN_BUDGET)],
                         [(long, 2 * PREFILL_TOKEN_BUDGET, 2 * PREFILL_TOKEN_BUDGET + 5)]]
    assert p.decode == [long]  # its prompt is whole after this pass


def test_while_others_run_a_long_prompt_goes_in_chunks_sized_by_the_estimates():
    others = running(0)
    short, long, behind = prompt(4), prompt(600), prompt(3)
    p = plan([short, long, behind], others, estimates=MS_A_TOKEN)
    # the short one before it goes whole; the long one takes the next slot and its first 64 tokens; the one behind
    # waits its turn
    assert p.admitted == [(short, 1), (long, 2)] and p.chunking is long
    assert ranges(p) == [[(short, 0, 4)], [(long, 0, 64)]]
    assert p.decode == [*others, short]  # the long one is not stepped until its prompt is whole
    # before any prefill was timed, the smallest chunk
    assert ranges(plan([long], others))[0] == [(long, 0, MIN_CHUNK_TOKENS)]


def test_one_long_prompt_at_a_time_and_its_last_chunk_joins_the_decode_step():
    others = running(0)
    long = Seq(list(range(600)), prefilled=576, slot=1)
    second = prompt(300)
    p = plan([second], others, chunking=long, estimates=Estimates(10.0, 0.001))
    assert ranges(p) == [[(long, 576, 600)]]  # the rest, less than the largest chunk
    assert p.admitted == [] and p.decode == [*others, long]  # the second long one waits
    assert p.chunking is long
    # a chunk is never more than PREFILL_CHUNK_TOKENS however fast the prefill
    early = Seq(list(range(600)), prefilled=0, slot=1)
    assert ranges(plan([], others, chunking=early, estimates=Estimates(10.0, 1e-9))) == [
        [(early, 0, PREFILL_CHUNK_TOKENS)]]


def test_cancelled_sequences_leave_and_are_neither_prefilled_nor_stepped():
    others = running(0, 1)
    others[1].cancelled = True
    gone, stays = prompt(4), prompt(5)
    gone.cancelled = True
    chunked = Seq(list(range(600)), prefilled=64, slot=2, cancelled=True)
    p = plan([gone, stays], others, chunking=chunked, estimates=MS_A_TOKEN)
    assert set(map(id, p.cancelled)) == {id(gone), id(others[1]), id(chunked)}
    # the cancelled slots are freed when the plan is carried out: this pass admits into slot 3 only
    assert p.admitted == [(stays, 3)] and ranges(p) == [[(stays, 0, 5)]]
    assert p.decode == [others[0], stays] and p.chunking is None
