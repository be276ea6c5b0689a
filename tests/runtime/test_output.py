"""Output processing in-process (engine/output.py): text deltas, stop strings with holdback, finish reasons."""

from __future__ import annotations

import pytest

from moltbot.engine.logprobs import Logprobs
from moltbot.engine.output import OutputProcessor, find_stop
from moltbot.engine.sampling import SamplingParams
from moltbot.engine.tokenizer import TextTokenizer


@pytest.fixture(scope="module")
def tokenizer(defaults_dir):
    return TextTokenizer(defaults_dir / "tiny-chat")


def feed(tokenizer, text: str, **params):
    """Push `text` token by token; the deltas a client would see and the finish reason."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    output = OutputProcessor(tokenizer, SamplingParams(max_tokens=100, **params), prompt_tokens=0,
                             context_length=1000)
    deltas, finish = [], None
    for token in ids:
        delta, finish, _ = output.push(token)
        deltas.append(delta)
        if finish:
            break
    return deltas, finish, output


def test_without_stop_strings_every_token_is_sent_at_once(tokenizer):
    deltas, finish, _ = feed(tokenizer, "Hello world, how are you?")
    assert "".join(deltas) == "Hello world, how are you?" and finish is None
    assert all(d for d in deltas)  # nothing held back


def test_a_stop_string_ends_the_text_before_it_and_no_part_of_it_is_ever_sent(tokenizer):
    deltas, finish, _ = feed(tokenizer, "Hello world, how are you?", stop=("how are",))
    # Deltas are never taken back: that they add up to the text before the stop string means that no part of
    # it ("h", "how", ...) was sent while it was forming.
    assert finish == "stop" and "".join(deltas) == "Hello world, "


def test_held_back_text_that_turns_out_not_to_be_a_stop_string_is_sent_later(tokenizer):
    deltas, finish, output = feed(tokenizer, "Hello world, how is it?", stop=("how are",))
    assert finish is None
    sent = "".join(deltas)
    assert "Hello world, how is it?".startswith(sent) and len(sent) >= len("Hello world, how is it?") - 6
    assert output.holdback == len("how are") - 1


def test_eos_max_tokens_and_the_end_of_the_context_finish_the_sequence(tokenizer):
    eos = next(iter(tokenizer.eos_token_ids))
    output = OutputProcessor(tokenizer, SamplingParams(max_tokens=10), prompt_tokens=0, context_length=100)
    assert output.push(eos) == ("", "stop", ()) and output.generated == []
    ignoring = OutputProcessor(tokenizer, SamplingParams(max_tokens=10, ignore_eos=True), prompt_tokens=0,
                               context_length=100)
    assert ignoring.push(eos)[1] is None and ignoring.generated == [eos]
    ids = tokenizer.encode("one two three four", add_special_tokens=False)
    limited = OutputProcessor(tokenizer, SamplingParams(max_tokens=2), prompt_tokens=0, context_length=100)
    assert [limited.push(t)[1] for t in ids[:2]] == [None, "length"]
    # 98 prompt tokens in a 100-token context: room for 2 generated tokens whatever max_tokens says.
    full = OutputProcessor(tokenizer, SamplingParams(max_tokens=50), prompt_tokens=98, context_length=100)
    assert [full.push(t)[1] for t in ids[:2]] == [None, "length"]


def test_find_stop_looks_only_where_a_stop_string_can_still_start():
    assert find_stop("abc STOP", ("STOP",), emitted=0) == 4
    assert find_stop("abc", ("STOP",), emitted=0) is None
    assert find_stop("STOP then more", ("STOP",), emitted=10) is None  # already sent: cannot be a new stop
    assert find_stop("xx ab", ("ab", "b"), emitted=0) == 3


def with_logprobs(tokenizer, text: str, **params):
    """Push `text` token by token, each with made-up log probabilities: per push, (text, tokens reported)."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    output = OutputProcessor(tokenizer, SamplingParams(max_tokens=100, **params), prompt_tokens=0,
                             context_length=1000)
    steps = []
    for position, token in enumerate(ids):
        delta, finish, sent = output.push(token, Logprobs(token, -float(position)))
        steps.append((delta, [(s.offset, s.logprobs.token) for s in sent]))
        if finish:
            break
    return ids, steps


def test_each_tokens_logprobs_go_out_with_its_text_and_say_where_it_starts(tokenizer):
    text = "Hello world, how are you?"
    ids, steps = with_logprobs(tokenizer, text)
    assert [tokens for _, tokens in steps] == [[(len(tokenizer.decode(ids[:i])), t)] for i, t in enumerate(ids)]
    assert all(delta for delta, _ in steps)


def test_logprobs_are_held_back_with_their_text_and_none_are_sent_for_a_stop_string(tokenizer):
    text = "Hello world, how are you?"
    ids, steps = with_logprobs(tokenizer, text, stop=("how are",))
    sent_text = "".join(delta for delta, _ in steps)
    reported = [token for _, tokens in steps for _, token in tokens]
    assert sent_text == "Hello world, "
    # every token whose text starts before the stop string, in order; not one of the stop string's own
    starts = [len(tokenizer.decode(ids[:i])) for i in range(len(ids))]
    assert reported == [t for t, start in zip(ids, starts, strict=False) if start < len(sent_text)]
    for delta, tokens in steps:  # a held-back token is reported when its text goes out, not before
        if not delta:
            assert not tokens


def test_a_token_that_ends_inside_a_character_goes_out_with_the_text_that_completes_it(tokenizer):
    text = "a 😀 b é"
    ids, steps = with_logprobs(tokenizer, text)
    assert any(not delta for delta, _ in steps)  # the emoji's first bytes add no text: a partial token
    assert [token for _, tokens in steps for _, token in tokens] == ids  # all of them, in order
    for delta, tokens in steps:  # each step's tokens are the bytes of exactly its text
        assert b"".join(tokenizer.token_bytes(token) for _, token in tokens) == delta.encode()
    assert "".join(delta for delta, _ in steps) == text
