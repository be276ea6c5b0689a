"""Output processing of one sequence: tokens in, text deltas and the finish reason out.

Detokenises incrementally (a token that ends inside a UTF-8 character waits for the next), finishes on EOS,
on max_tokens, at the end of the context, or at a stop string, and holds back the last characters that could
still become the start of a stop string, so that no client ever sees part of one. A token's log probabilities go
out with the text that completes it (a token that ends inside a character, or one without text, with the text of
the token that completes it): held back with its text, never sent for a token that a stop string cut off.
"""

from __future__ import annotations

from collections import deque
from typing import Any, NamedTuple

from moltbot.engine.logprobs import Logprobs
from moltbot.engine.sampling import SamplingParams
from moltbot.engine.tokenizer import IncrementalDecoder, TextTokenizer


class SentLogprobs(NamedTuple):
    """A token's log probabilities, and where its text starts in the sequence's text."""

    offset: int
    logprobs: Logprobs


class Pushed(NamedTuple):
    text: str  # what can be sent now
    finish_reason: str | None  # when this token ends the sequence
    logprobs: tuple[SentLogprobs, ...]  # of the tokens whose text is now all sent


class OutputProcessor:
    def __init__(self, tokenizer: TextTokenizer, params: SamplingParams, prompt_tokens: int, context_length: int):
        self.params = params
        self.eos_token_ids = tokenizer.eos_token_ids
        self.decoder = IncrementalDecoder(tokenizer)
        self.generated: list[int] = []
        self.room = context_length - prompt_tokens  # tokens that still fit the context
        self.emitted_chars = 0  # how much of decoder.text has been sent
        self.holdback = max((len(s) for s in params.stop), default=1) - 1
        # Tokens whose log probabilities wait for their text to go out: [start, end of their text (None until a
        # token adds text), their log probabilities].
        self._unsent: deque[list[Any]] = deque()

    def push(self, token: int, logprobs: Logprobs | None = None, complete: bool = False) -> Pushed:
        """The text that can be sent now, the finish reason when this token ends the sequence, and the log
        probabilities of the tokens that text completes (where the token came with them). `complete`: the
        sequence's grammar is complete with this token, which ends it ("stop") unless max_tokens does."""
        finish = None
        if token in self.eos_token_ids and not self.params.ignore_eos:
            finish = "stop"  # the end of the sequence is no text: its log probabilities are not reported
        else:
            self.generated.append(token)
            start = len(self.decoder.text)
            self.decoder.push(token)
            if logprobs is not None:
                self._wait_for_text(start, logprobs)
            if complete:
                finish = "stop"
            elif len(self.generated) >= min(self.params.max_tokens, self.room):
                finish = "length"
        text = self.decoder.text
        stop_at = find_stop(text, self.params.stop, self.emitted_chars)
        if stop_at is not None:
            text, finish = text[:stop_at], "stop"
        safe_end = len(text) if finish else max(self.emitted_chars, len(text) - self.holdback)
        delta = text[self.emitted_chars:safe_end]
        self.emitted_chars = safe_end
        return Pushed(delta, finish, self._sent_logprobs(finish is not None, cut=stop_at is not None))

    def _wait_for_text(self, start: int, logprobs: Logprobs) -> None:
        """A token's log probabilities wait for its text. One that adds no text (it ends inside a character, or is
        a special token) takes its end from the next token that adds some: they go out with that text."""
        end = len(self.decoder.text)
        if end > start:
            for waiting in reversed(self._unsent):
                if waiting[1] is not None:
                    break
                waiting[1] = end
        self._unsent.append([start, end if end > start else None, logprobs])

    def _sent_logprobs(self, finished: bool, cut: bool) -> tuple[SentLogprobs, ...]:
        """The waiting log probabilities whose token's text is now all out. At the end, every token's that is
        left (the last ones may end inside a character that never came); where a stop string cut the text, only
        those whose text starts in what was sent (a token the cut went through sent part of its text)."""
        sent = []
        while self._unsent:
            start, end, logprobs = self._unsent[0]
            if finished and cut:
                if start >= self.emitted_chars:
                    break
            elif not finished and (end is None or end > self.emitted_chars):
                break
            self._unsent.popleft()
            sent.append(SentLogprobs(start, logprobs))
        if finished:
            self._unsent.clear()
        return tuple(sent)


def find_stop(text: str, stops: tuple[str, ...], emitted: int) -> int | None:
    """Where the first stop string starts in `text`, looking only where one can start past what was sent."""
    if not stops:
        return None
    search_from = max(0, emitted - max(len(s) for s in stops))
    found = [i for i in (text.find(s, search_from) for s in stops) if i >= 0]
    return min(found) if found else None
