"""Several tokens in one engine call, handed on one at a time: speculative decoding's
verifications and the runs of tokens a grammar forces. ``evaluate`` runs them (the logits of
every row, or of the last one only), ``replay`` yields them with the logits each was sampled
from as the last ones, as decoding one token at a time shows them, and ``record`` keeps rows
of logits as ``Llama.eval`` keeps them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ferrollm.llama import Llama


def evaluate(llm: Llama, tokens: list[int], every_row: bool = True) -> np.ndarray:
    """Runs ``tokens`` after the cache in one engine call; logits of every row, or of the
    last one only."""
    engine = llm._engine()
    with llm._exclusive():
        try:
            rows = engine.eval(tokens, logits_all=every_row)
            llm.input_ids.extend(tokens)
        except BaseException:
            if engine.n_past > len(llm.input_ids):  # interrupted after the engine ran
                engine.truncate(len(llm.input_ids))
            raise
    return rows


def record(llm: Llama, rows: np.ndarray) -> None:
    """Logits rows as ``Llama.eval`` records them: all kept with ``logits_all``, else the last."""
    if len(rows) == 0:
        return
    if llm.logits_all:
        llm._scores.append(rows)
    else:
        llm._scores = [rows[-1:]]


def replay(llm: Llama, tokens: list[int], rows: np.ndarray) -> Iterator[int]:
    """Yields ``tokens``, already in the cache, each with the logits it was sampled from
    (``rows[i]``) as the last ones, as decoding one token at a time shows them (logprobs read
    them); the logits end with the rows after the last token. ``rows`` may also be that last
    row alone (nobody reads the others): the tokens then go by without logits of their own."""
    if len(rows) == 1:
        record(llm, rows)
        yield from tokens
        return
    shown = 0
    try:
        for shown, kept in enumerate(tokens, 1):
            record(llm, rows[shown - 1 : shown])
            yield kept  # the cache holds it: no context check needed between
    finally:
        record(llm, rows[shown:])
