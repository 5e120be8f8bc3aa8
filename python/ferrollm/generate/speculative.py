"""Speculative decoding: the token loop of ``Llama.generate`` when a draft model is set.

Each step feeds the sampled token and the draft's guesses after it to the engine (logits for
every row, as many rows per call as the engine evaluates exactly), then samples row by row: a guess is kept while it
equals what the sampler picks from the row before it; the first disagreement (or, every guess
kept, the row after the last) gives the next token, and the rejected positions are cut from
the KV cache. The sampler is called on exactly the rows, histories and in the order that
decoding without a draft would use, so the output is the same, greedy or seeded, as long as
the engine gives a row the same logits in a batch as alone (see ROWS_PER_EVAL).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ferrollm.llama import Llama
    from ferrollm.llama_speculative import LlamaDraftModel

# Rows per engine call; None takes the engine's `exact_batch_rows`: the most rows for which
# each row's logits are the bits it gets alone (the per-row and multi-token dot products; the
# narrow and panel products of larger batches round otherwise, up to ~0.1 in the logits on the
# demo model's MoE, which changes greedy text where two tokens nearly tie). That keeps the
# output identical to decoding without a draft: 2 rows for Q4_0/Q8_0 (the demo model), 3 for
# the K-quants, 8 for the IQ types. A number overrides it (benches/bench_speculative.py).
ROWS_PER_EVAL: int | None = None
# Rows per call at most, whatever the engine allows (float weights take any number exactly).
MAX_ROWS_PER_EVAL = 16

# sample(logits of one position, tokens up to and including it) -> next token
SampleFn = Callable[[np.ndarray, Sequence[int]], int]


def attach(draft: LlamaDraftModel | None, target: Llama) -> LlamaDraftModel | None:
    if draft is None:
        return None
    if not callable(draft):
        raise TypeError(
            f"draft_model must be a LlamaDraftModel (callable on token ids), not {type(draft).__name__}"
        )
    bind = getattr(draft, "bind", None)
    if bind is not None:
        bind(target)
    return draft


def generate(llm: Llama, sample: SampleFn, draft: LlamaDraftModel) -> Iterator[int]:
    """Yields tokens after ``llm``'s prefilled prompt until the context is full."""
    n_ctx, n_vocab = llm.n_ctx(), llm.n_vocab()
    token = sample(llm.last_logits(), llm.input_ids)
    while True:
        yield token
        if llm.n_tokens >= n_ctx:
            return
        room = n_ctx - llm.n_tokens - 1
        guesses = []
        if room > 0:
            proposed = draft(np.array([*llm.input_ids, token], dtype=np.intc))
            guesses = [int(t) for t in np.asarray(proposed).reshape(-1)[:room]]
            if any(not 0 <= t < n_vocab for t in guesses):
                raise ValueError(f"the draft model proposed token ids outside the vocabulary of {n_vocab}")
        sampled, rows = verify(llm, sample, [token, *guesses])
        token = sampled.pop()  # the first token the draft did not guess, not yet evaluated
        yield from llm.session.replay(sampled, rows)


def verify(llm: Llama, sample: SampleFn, pending: list[int]) -> tuple[list[int], np.ndarray]:
    """Evaluates ``pending`` (a sampled token, then guesses), ``per_call`` rows per engine
    call, while the sampler agrees with the guesses; returns the tokens sampled (the guesses
    kept, then the next token) and the logits they were sampled from, and leaves the cache
    holding ``pending`` up to the last guess kept."""
    session = llm.session
    base = len(session.tokens)
    per_call = ROWS_PER_EVAL or min(session.engine.exact_batch_rows, MAX_ROWS_PER_EVAL)
    sampled: list[int] = []
    rows: list[np.ndarray] = []
    agreed = True
    while agreed:
        rows.append(session.evaluate(pending[len(sampled) : len(sampled) + per_call]))
        for row in rows[-1]:
            position = len(sampled)  # of the token whose logits `row` holds
            sampled.append(sample(row, session.tokens[: base + 1 + position]))
            guess = pending[position + 1] if position + 1 < len(pending) else None
            agreed = sampled[-1] == guess
            if not agreed:
                break
    session.truncate(base + len(sampled))  # rejected guesses out of the cache
    return sampled, np.concatenate(rows)[: len(sampled)]
