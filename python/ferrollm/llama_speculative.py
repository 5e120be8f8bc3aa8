"""Draft models for speculative decoding (``Llama(draft_model=...)``), llama-cpp-python's
``llama_speculative`` interface: a draft model is called with the token ids so far (the last
one not yet evaluated) and returns the tokens it guesses come next; the model checks them all
in one evaluation (ferrollm.generate.speculative).

- ``LlamaPromptLookupDecoding``: guesses by finding the last n-gram earlier in the text and
  proposing what followed it there (prompt lookup decoding; free, good on code and edits).
- ``GGUFDraftModel``: a second, smaller GGUF with the same vocabulary guesses greedily.
"""

from __future__ import annotations

import abc
import os
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from ferrollm.llama import Llama


class LlamaDraftModel(abc.ABC):
    @abc.abstractmethod
    def __call__(self, input_ids: npt.NDArray[np.intc], /, **kwargs: Any) -> npt.NDArray[np.intc]:
        raise NotImplementedError


class LlamaPromptLookupDecoding(LlamaDraftModel):
    """For n from ``max_ngram_size`` down to 1: the first earlier occurrence of the last n
    tokens that something follows gives up to ``num_pred_tokens`` of what follows it."""

    def __init__(self, max_ngram_size: int = 2, num_pred_tokens: int = 10):
        if max_ngram_size < 1 or num_pred_tokens < 1:
            raise ValueError("max_ngram_size and num_pred_tokens must be at least 1")
        self.max_ngram_size = max_ngram_size
        self.num_pred_tokens = num_pred_tokens

    @staticmethod
    def find_candidate_pred_tokens(
        input_ids: npt.NDArray[np.intc], max_ngram_size: int, num_pred_tokens: int
    ) -> npt.NDArray[np.intc]:
        ids = np.asarray(input_ids)
        n = len(ids)
        for size in range(min(max_ngram_size, n - 1), 0, -1):
            # Positions i where ids[i:i+size] equals the last `size` tokens, earliest first;
            # the last n-gram itself (nothing after it) never qualifies.
            windows = np.lib.stride_tricks.sliding_window_view(ids[: n - 1], size)
            starts = np.flatnonzero((windows == ids[n - size :]).all(axis=1))
            if len(starts):
                begin = int(starts[0]) + size
                return ids[begin : min(begin + num_pred_tokens, n)].astype(np.intc)
        return np.array([], dtype=np.intc)

    def __call__(self, input_ids: npt.NDArray[np.intc], /, **kwargs: Any) -> npt.NDArray[np.intc]:
        return self.find_candidate_pred_tokens(input_ids, self.max_ngram_size, self.num_pred_tokens)


class GGUFDraftModel(LlamaDraftModel):
    """Greedy guesses of ``num_pred_tokens`` tokens by a smaller model: a GGUF path (opened
    with the target's context size when the target takes it, ``llama_kwargs`` passed on) or a
    ``Llama``. It keeps its own KV cache, reusing the prefix it shares with each call."""

    def __init__(self, model: str | os.PathLike | Llama, num_pred_tokens: int = 8, **llama_kwargs: Any):
        if num_pred_tokens < 1:
            raise ValueError("num_pred_tokens must be at least 1")
        self.num_pred_tokens = num_pred_tokens
        self._path = None if _is_llama(model) else os.fspath(model)
        self.llm: Llama | None = model if _is_llama(model) else None
        self._kwargs = {"verbose": False, **llama_kwargs}

    def bind(self, target: Llama) -> None:
        """Opens the draft (if given as a path) and checks that it shares ``target``'s vocabulary."""
        if self.llm is None:  # opened as the target was (its class: no import of ferrollm.llama here)
            self.llm = type(target)(self._path, **{"n_ctx": target.n_ctx(), **self._kwargs})
        if self.llm.tokenizer_.tokens != target.tokenizer_.tokens:
            raise ValueError(
                f"draft model {os.path.basename(self.llm.model_path)} has another vocabulary than "
                f"{os.path.basename(target.model_path)} ({self.llm.n_vocab()} against {target.n_vocab()} "
                "tokens, or other pieces): speculative decoding needs the same tokenizer"
            )

    def __call__(self, input_ids: npt.NDArray[np.intc], /, **kwargs: Any) -> npt.NDArray[np.intc]:
        if self.llm is None:
            raise RuntimeError("GGUFDraftModel: pass it to Llama(draft_model=...) (or call bind) first")
        llm = self.llm
        ids = [int(t) for t in input_ids]
        room = llm.n_ctx() - len(ids)
        if room <= 0 or not ids:
            return np.array([], dtype=np.intc)
        llm.session.prefill(ids)  # reuses the prefix its cache already holds
        guesses: list[int] = []
        while True:
            guesses.append(int(np.argmax(llm.last_logits())))
            if len(guesses) >= min(self.num_pred_tokens, room):
                return np.array(guesses, dtype=np.intc)
            llm.eval(guesses[-1:])


def _is_llama(model: Any) -> bool:
    return hasattr(model, "tokenizer_") and hasattr(model, "session")
