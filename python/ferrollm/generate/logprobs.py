"""Log-probabilities of tokens, in the shapes of both APIs: the completions' (``tokens``,
``token_logprobs``, ``top_logprobs``, ``text_offset``) and the chat's (``content`` entries with
``top_logprobs`` lists). Shared by ``Llama`` and the server.

A token's log-probability is taken from the model's logits before any sampling step (penalties,
truncations, grammar masks), as OpenAI and llama.cpp report it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ferrollm.text.tokenizer import Tokenizer


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float64 log-probabilities of one row of logits."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max()
    return z - np.log(np.exp(z).sum())


@dataclass
class TokenLogprob:
    """One position: the token, its log-probability (None for the first prompt token, which
    nothing predicts) and the ``top`` most likely alternatives, most likely first."""

    token: int
    text: str
    logprob: float | None
    top: list[tuple[str, float]] | None

    @property
    def bytes(self) -> list[int]:
        return list(self.text.encode("utf-8"))


def _piece(tokenizer: Tokenizer, token: int) -> str:
    return tokenizer.token_bytes(token).decode("utf-8", "replace")


def token_logprob(tokenizer: Tokenizer, logits: np.ndarray, token: int, top: int) -> TokenLogprob:
    """``token`` scored under ``logits``, with the ``top`` most likely alternatives."""
    logp = log_softmax(logits)
    if 0 < top < len(logp):
        best = np.argpartition(-logp, top)[:top]
    else:
        best = np.arange(len(logp))[: max(top, 0)]
    best = best[np.lexsort((best, -logp[best]))]  # most likely first, ties by id
    alternatives = [(_piece(tokenizer, int(t)), float(logp[t])) for t in best]
    return TokenLogprob(token, _piece(tokenizer, token), float(logp[token]), alternatives)


def prompt_logprobs(
    tokenizer: Tokenizer, rows: np.ndarray, tokens: Sequence[int], top: int
) -> list[TokenLogprob]:
    """Entries for the prompt ``tokens`` (BOS left out) given ``rows[i]``, the logits after
    ``tokens[i]``. The first entry has no log-probability (OpenAI's and llama.cpp's echo)."""
    out = []
    for i, token in enumerate(tokens):
        if token == tokenizer.bos_id:
            continue
        if not out:
            out.append(TokenLogprob(token, _piece(tokenizer, token), None, None))
        else:
            out.append(token_logprob(tokenizer, rows[i - 1], token, top))
    return out


def completion_shape(entries: Sequence[TokenLogprob], offset: int) -> dict:
    """The completions API's ``logprobs``: ``top_logprobs`` maps each alternative's text to its
    log-probability and always includes the chosen token (OpenAI: up to ``logprobs + 1``
    entries). ``offset`` is the text position of the first token."""
    offsets, pos = [], offset
    for e in entries:
        offsets.append(pos)
        pos += len(e.text)
    top: list[dict[str, float] | None] = []
    for e in entries:
        if e.top is None:
            top.append(None)
        else:
            top.append({**dict(e.top), e.text: e.logprob})
    return {
        "tokens": [e.text for e in entries],
        "text_offset": offsets,
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": top,
    }


def chat_shape(entries: Sequence[TokenLogprob]) -> dict:
    """The chat API's ``logprobs`` (OpenAI's ``ChoiceLogprobs``)."""
    return {
        "content": [
            {
                "token": e.text,
                "logprob": e.logprob,
                "bytes": e.bytes,
                "top_logprobs": [
                    {"token": t, "logprob": lp, "bytes": list(t.encode("utf-8"))} for t, lp in e.top or []
                ],
            }
            for e in entries
        ],
        "refusal": None,
    }
