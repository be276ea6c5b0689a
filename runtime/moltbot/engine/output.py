"""Output processing of one sequence: tokens in, text deltas and the finish reason out.

Detokenises incrementally (a token that ends inside a UTF-8 character waits for the next), finishes on EOS,
on max_tokens, at the end of the context, or at a stop string, and holds back the last characters that could
still become the start of a stop string, so that no client ever sees part of one.
"""

from __future__ import annotations

from moltbot.engine.sampling import SamplingParams
from moltbot.engine.tokenizer import IncrementalDecoder, TextTokenizer


class OutputProcessor:
    def __init__(self, tokenizer: TextTokenizer, params: SamplingParams, prompt_tokens: int, context_length: int):
        self.params = params
        self.eos_token_ids = tokenizer.eos_token_ids
        self.decoder = IncrementalDecoder(tokenizer)
        self.generated: list[int] = []
        self.room = context_length - prompt_tokens  # tokens that still fit the context
        self.emitted_chars = 0  # how much of decoder.text has been sent
        self.holdback = max((len(s) for s in params.stop), default=1) - 1

    def push(self, token: int) -> tuple[str, str | None]:
        """The text that can be sent now, and the finish reason when this token ends the sequence."""
        finish = None
        if token in self.eos_token_ids and not self.params.ignore_eos:
            finish = "stop"
        else:
            self.generated.append(token)
            self.decoder.push(token)
            if len(self.generated) >= min(self.params.max_tokens, self.room):
                finish = "length"
        text = self.decoder.text
        stop_at = find_stop(text, self.params.stop, self.emitted_chars)
        if stop_at is not None:
            text, finish = text[:stop_at], "stop"
        safe_end = len(text) if finish else max(self.emitted_chars, len(text) - self.holdback)
        delta = text[self.emitted_chars:safe_end]
        self.emitted_chars = safe_end
        return delta, finish


def find_stop(text: str, stops: tuple[str, ...], emitted: int) -> int | None:
    """Where the first stop string starts in `text`, looking only where one can start past what was sent."""
    if not stops:
        return None
    search_from = max(0, emitted - max(len(s) for s in stops))
    found = [i for i in (text.find(s, search_from) for s in stops) if i >= 0]
    return min(found) if found else None
