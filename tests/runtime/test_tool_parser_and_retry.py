"""In process: the streaming tool-call parser on malformed model output, and Retry-After's step rate and cap."""

from __future__ import annotations

import time

from moltbot.engine import scheduler as scheduler_module
from moltbot.engine.tool_calls import FORMATS


def _stream(text: str, size: int) -> tuple[str, list]:
    parser = FORMATS["hermes"].stream()
    content, pieces = "", []
    for start in range(0, len(text), size):
        more, got = parser.push(text[start: start + size])
        content, pieces = content + more, pieces + got
    more, got = parser.finish()
    return content + more, pieces + got


def test_a_tool_name_that_is_no_json_string_does_not_end_the_stream():
    """A raw newline or a bad escape in the name (model output) used to raise in the parser, which ended every
    choice of the stream with an error event; the block is now handled whole at its close, like the
    non-streamed path."""
    for name in ('f\nx', 'f\\qx'):
        text = '<tool_call>\n{"name": "' + name + '", "arguments": {"a": 1}}\n</tool_call>'
        for size in (1, 3, 1000):
            content, pieces = _stream(text, size)  # raised JSONDecodeError before
            assert not any(piece.name == name for piece in pieces)
            assert content or pieces


def test_a_good_name_still_streams_its_call_name_first():
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    _, pieces = _stream(text, 2)
    assert pieces[0].name == "get_weather" and pieces[0].index == 0


class _Seq:
    def __init__(self, remaining: int):
        self.remaining = remaining


def _bare_scheduler(step_seconds: float, running: int, remaining: int) -> scheduler_module.GenerationScheduler:
    """A scheduler's Retry-After state without its thread or runner."""
    sched = object.__new__(scheduler_module.GenerationScheduler)
    sched._step_seconds = step_seconds
    sched._last_step_at = None
    sched.max_running = running
    sched._running, sched._admitting, sched._chunking = [_Seq(remaining) for _ in range(running)], [], []
    sched._waiting = []
    return sched


def test_retry_after_is_capped_at_a_minute(monkeypatch):
    monkeypatch.setattr(scheduler_module.GenerationScheduler, "_remaining_steps", staticmethod(lambda s: s.remaining))
    slow = _bare_scheduler(step_seconds=2.0, running=1, remaining=2000)  # 4000 s of work ahead
    assert slow._retry_after(1) == scheduler_module.RETRY_AFTER_MAX == 60
    quick = _bare_scheduler(step_seconds=0.05, running=1, remaining=100)
    assert quick._retry_after(1) == 5


def test_steps_slower_than_a_second_count_in_the_step_rate():
    """A big model on the CPU steps in more than a second: its steps must move the estimate (they were taken for
    idle gaps and ignored, leaving Retry-After at the 0.05 s default); an idle wait is not a step."""
    sched = _bare_scheduler(step_seconds=0.05, running=0, remaining=0)
    sched._time_step()
    sched._last_step_at -= 2.0  # the next step came 2 s later
    sched._time_step()
    assert sched._step_seconds > 0.2
    before = sched._step_seconds
    sched._last_step_at = None  # what the loop sets while it waits idle
    time.sleep(0.01)
    sched._time_step()
    assert sched._step_seconds == before
