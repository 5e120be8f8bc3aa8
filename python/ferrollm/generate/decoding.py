"""From the model's logits to the next token: llama-cpp-python's hooks (``logits_processor``,
``stopping_criteria``), a grammar constraint, then the sampler.

A grammar is checked on the token the sampler drew; only when the grammar refuses it is the full
token mask computed and the token drawn again from the allowed ones. This is llama.cpp's order
(common_sampler_sample): it costs one cheap check per token while the model follows the grammar
by itself, and greedy decoding gives exactly the token that masking first would give. Where the
grammar forces the next bytes (a JSON key, punctuation), the refused token is replaced by the
forced ones without a mask: llguidance's fast-forward tokens. With ``fast_forward``, all of them
are taken at once, also after a token the model chose, and left in ``forced_tail`` for the
caller to evaluate as one batch: a run of forced tokens costs one forward pass, not one each.
Otherwise the first alone replaces a refused token.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ferrollm.generate.grammar import Constraint
from ferrollm.generate.sampler import Sampler

LogitsProcessor = Callable[[np.ndarray, np.ndarray], np.ndarray]
StoppingCriteria = Callable[[np.ndarray, np.ndarray], bool]


class LogitsProcessorList(list[LogitsProcessor]):
    """Processors run in order, each given (input_ids, scores) and returning new scores."""

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        for processor in self:
            scores = processor(input_ids, scores)
        return scores


class StoppingCriteriaList(list[StoppingCriteria]):
    """Generation ends (finish_reason "stop") as soon as one criterion returns True."""

    def __call__(self, input_ids: np.ndarray, logits: np.ndarray) -> bool:
        results = [criterion(input_ids, logits) for criterion in self]  # every one sees every token
        return any(results)


class MinTokensLogitsProcessor:
    """Forbids EOS until ``min_tokens`` tokens have been generated (llama-cpp-python's)."""

    def __init__(self, min_tokens: int, token_eos: int):
        self.min_tokens = min_tokens
        self.token_eos = token_eos
        self.prompt_tokens: int | None = None

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if self.prompt_tokens is None:
            self.prompt_tokens = len(input_ids)
        if len(input_ids) - self.prompt_tokens < self.min_tokens:
            scores[self.token_eos] = -np.inf
        return scores


class TokenChooser:
    def __init__(
        self,
        sampler: Sampler,
        logits_processor: LogitsProcessor | None = None,
        constraint: Constraint | None = None,
        stopping_criteria: StoppingCriteria | None = None,
    ):
        self.sampler = sampler
        self.logits_processor = logits_processor
        self.constraint = constraint
        self.stopping_criteria = stopping_criteria
        self.stopped = False  # a stopping criterion ended the generation
        # Take every token the grammar forces at once (the caller evaluates `forced_tail`).
        # Off where each token must come from this call: a stopping criterion sees every one,
        # and speculative decoding verifies its guesses row by row.
        self.fast_forward = False
        self.max_forced: int | None = None  # the longest `forced_tail` (a caller's batch size)
        self.forced_tail: list[int] = []  # forced tokens after the one returned, already taken

    def __call__(self, logits: np.ndarray, history: Sequence[int]) -> int | None:
        """The next token, or None when a stopping criterion ends the generation. ``logits``
        is left untouched (log-probabilities are reported from it)."""
        ids = None
        scores = logits
        self.forced_tail = []
        if self.logits_processor is not None:
            ids = np.asarray(history, dtype=np.intc)
            scores = self.logits_processor(ids, np.array(logits, dtype=np.float32))
        if self.constraint is None:
            token = self.sampler.sample(scores, history)
        else:
            token = self._constrained(self.constraint, scores, history)
        if self.stopping_criteria is not None:
            ids = np.asarray(history, dtype=np.intc) if ids is None else ids
            if self.stopping_criteria(ids, logits):
                self.stopped = True
                return None
        return token

    def _constrained(self, constraint: Constraint, scores: np.ndarray, history: Sequence[int]) -> int:
        greedy = self.sampler.params.temperature <= 0
        if greedy:  # Sampler.sample's greedy choice, with the penalized scores kept for a retry
            z = self.sampler.greedy_scores(scores, history)
            token = int(np.argmax(z))
        else:
            token = self.sampler.sample(scores, history)
        batch = self.fast_forward and self.stopping_criteria is None
        if not constraint.take(token):
            limit = (None if self.max_forced is None else self.max_forced + 1) if batch else 1
            forced = constraint.forced(limit)
            if forced:
                self.forced_tail = forced[1:]
                return forced[0]
            token = (
                int(np.argmax(constraint.mask(z)))
                if greedy
                else self.sampler.sample(constraint.mask(scores), history)
            )
            constraint.accept(token)
        if batch:  # the bytes after a token of the model's own choice may be forced too
            self.forced_tail = constraint.forced(self.max_forced)
        return token
