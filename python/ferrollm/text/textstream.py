"""Generated tokens to text pieces that are safe to send: stop strings end the text, and text
that could be the start of a stop string is held back until it cannot be (shared by
``Llama``'s completions and the server)."""

from __future__ import annotations

from collections.abc import Sequence

from ferrollm.text.tokenizer import StreamDecoder


class TextStream:
    def __init__(self, decoder: StreamDecoder, stops: Sequence[str]):
        self._decoder = decoder
        self._stops = [s for s in stops if s]
        self._text = ""
        self._sent = 0

    @property
    def sent(self) -> int:
        """Characters handed out so far."""
        return self._sent

    def push(self, token: int) -> tuple[str, bool]:
        """(text now safe to send, whether a stop string ended the text)."""
        text = self._text = self._text + self._decoder.push(token)
        # A stop string cannot start in text already sent: that text was never held.
        hit = min((i for i in (text.find(s, self._sent) for s in self._stops) if i >= 0), default=-1)
        if hit >= 0:
            self._text = text[:hit]
            return "", True
        hold = max((k for s in self._stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        end = len(text) - hold
        if end <= self._sent:
            return "", False
        piece, self._sent = text[self._sent : end], end
        return piece, False

    def rest(self, flush: bool) -> str:
        """The held text; ``flush`` adds the decoder's incomplete bytes (generation was cut by
        length, not ended by the model)."""
        if flush:
            self._text += self._decoder.flush()
        piece, self._sent = self._text[self._sent :], len(self._text)
        return piece


class Completion:
    """The end of a generation, one rule for ``Llama`` and the server: sampled tokens go in,
    text safe to send comes out, until the end-of-sequence token, a stop string or the token
    budget ends it."""

    def __init__(self, decoder: StreamDecoder, stops: Sequence[str], eos: int, budget: int):
        self.stream = TextStream(decoder, stops)
        self.eos = eos
        self.budget = budget
        self.n_out = 0  # completion tokens taken

    def take(self, tokens: Sequence[int]) -> tuple[str, str | None]:
        """(text now safe to send, the finish reason or None): ``tokens`` is a sampled token
        and those a grammar forced after it. An end-of-sequence token is not counted."""
        if tokens[0] == self.eos:
            return self.stream.rest(flush=False), "stop"
        text = ""
        for t in tokens:
            self.n_out += 1
            piece, stopped = self.stream.push(t)
            text += piece
            if stopped:
                return text + self.stream.rest(flush=False), "stop"
            if self.n_out >= self.budget:
                return text + self.stream.rest(flush=True), "length"
        return text, None

    def end(self, finish: str) -> str:
        """The held text when the generation ended otherwise (a stopping criterion: "stop")."""
        return self.stream.rest(flush=finish == "length")
