"""One sequence on one engine: the KV cache (in Rust), the tokens it holds and the logits kept.

A :class:`Session` is what ``Llama`` evaluates through, and what its saved states, prompt
caches, speculative decoding and embeddings use; the server's slots share its prefix rule
(:func:`common_prefix`) and the model factory (:func:`open_engine`). The token history always
equals what the cache holds: a batch interrupted after the engine ran it is forgotten by both.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ferrollm import _core

# llama-cpp-python passes cache types as ggml type ids.
_GGML_TYPE_IDS = {0: "F32", 1: "F16", 2: "Q4_0", 8: "Q8_0"}


def kv_type(value: int | str | None) -> str:
    """A KV cache type as the engine names it, from llama-cpp-python's id or a name."""
    if value is None:
        return "F16"
    if isinstance(value, int):
        if value not in _GGML_TYPE_IDS:
            raise ValueError(f"KV cache type id {value} is not supported (f16=1, q8_0=8, q4_0=2)")
        return _GGML_TYPE_IDS[value]
    return str(value).upper()


def override_triples(
    kv_overrides: Mapping[str, bool | int | float | str] | None,
) -> list[tuple[str, str, Any]]:
    out = []
    for key, value in (kv_overrides or {}).items():
        kind = {bool: "bool", int: "int", float: "float", str: "str"}.get(type(value))
        if kind is None:
            raise TypeError(f"override {key}: value {value!r} is not a bool, int, float or str")
        out.append((key, kind, value))
    return out


def parse_override(text: str) -> tuple[str, bool | int | float | str]:
    """llama.cpp's ``--override-kv KEY=TYPE:VALUE`` (TYPE: int, float, bool, str)."""
    key, eq, rest = text.partition("=")
    kind, colon, value = rest.partition(":")
    if not (eq and colon and key):
        raise ValueError(f"override {text!r} is not KEY=TYPE:VALUE (e.g. llama.expert_used_count=int:3)")
    try:
        if kind == "int":
            return key, int(value)
        if kind == "float":
            return key, float(value)
        if kind == "bool":
            if value.lower() not in ("true", "false"):
                raise ValueError(value)
            return key, value.lower() == "true"
        if kind == "str":
            return key, value
    except ValueError:
        raise ValueError(f"override {text!r}: {value!r} is not a valid {kind}") from None
    raise ValueError(f"override {text!r}: unknown type {kind!r} (int, float, bool, str)")


def open_engine(
    path: str | os.PathLike,
    *,
    n_ctx: int,
    n_threads: int | None = None,
    n_batch: int = 512,
    n_seq: int = 1,
    type_k: int | str | None = None,
    type_v: int | str | None = None,
    kv_overrides: Mapping[str, bool | int | float | str] | None = None,
    check_tensors: bool = False,
) -> _core.Model:
    """The engine for ``Llama`` and for the server: weights mapped, a KV cache of ``n_seq``
    sequences of ``n_ctx`` positions each."""
    return _core.Model(
        os.fspath(path),
        n_ctx=n_ctx,
        n_seq=n_seq,
        n_threads=n_threads,
        n_batch=n_batch,
        type_k=kv_type(type_k),
        type_v=kv_type(type_v),
        overrides=override_triples(kv_overrides),
        check_tensors=check_tensors,
    )


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def context_error(n_tokens: int, n_ctx: int) -> ValueError:
    return ValueError(f"Requested tokens ({n_tokens}) exceed context window of {n_ctx}")


class Session:
    """The tokens an engine's cache holds for one sequence (``tokens``), the logits kept of them
    (one row per token with ``logits_all``, else the last row) and the lock of one evaluation at
    a time. ``Llama`` evaluates through its own (sequence 0); the server's slots are sessions on
    one engine of several sequences, run together by ``Model.eval_batch`` (see :meth:`ran`)."""

    def __init__(
        self, engine: _core.Model, n_vocab: int, *, n_batch: int = 512, logits_all: bool = False, seq: int = 0
    ):
        self.engine = engine
        self.seq = seq
        self.n_vocab = n_vocab
        self.n_batch = max(1, n_batch)
        self.logits_all = logits_all
        self.tokens: list[int] = []
        self.rows: list[np.ndarray] = []
        # One evaluation at a time: the engine refuses overlapping calls anyway, and the token
        # history must change in step with its cache.
        self._busy = threading.RLock()

    @property
    def n_ctx(self) -> int:
        return self.engine.n_ctx

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Refuses a second thread while one evaluates (the same thread may nest)."""
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("this Llama is evaluating in another thread: one call at a time per model")
        try:
            yield
        finally:
            self._busy.release()

    # -- logits --------------------------------------------------------------------------------

    @property
    def scores(self) -> np.ndarray:
        if not self.rows:
            return np.zeros((0, self.n_vocab), dtype=np.float32)
        return np.concatenate(self.rows)

    def last_logits(self) -> np.ndarray:
        if not self.rows:
            raise RuntimeError("nothing has been evaluated yet")
        return self.rows[-1][-1]

    def record(self, rows: np.ndarray) -> None:
        """Logits rows as ``eval`` keeps them: all with ``logits_all``, else the last."""
        if len(rows) == 0:
            return
        if self.logits_all:
            self.rows.append(rows)
        else:
            self.rows = [rows[-1:]]

    # -- the cache -----------------------------------------------------------------------------

    def set(self, tokens: list[int], rows: list[np.ndarray]) -> None:
        """Says what the cache now holds (after a state was loaded into the engine)."""
        self.tokens, self.rows = tokens, rows

    def truncate(self, keep: int) -> int:
        """Keeps the first ``keep`` tokens (fewer where a sliding-window cache no longer holds
        them) and returns how many were kept; the logits kept stay as they are."""
        with self.exclusive():
            keep = self.engine.truncate(keep, self.seq)
            del self.tokens[keep:]
        return keep

    def ran(self, tokens: list[int]) -> None:
        """The engine ran ``tokens`` for this sequence in a call for several (the server's step)."""
        self.tokens.extend(tokens)

    def reset(self) -> None:
        with self.exclusive():
            self.truncate(0)
            self.rows = []

    def _run(self, tokens: list[int], every_row: bool) -> np.ndarray:
        """One engine call; an interruption after the engine ran it forgets the batch."""
        try:
            rows = self.engine.eval(tokens, logits_all=every_row)
            self.tokens.extend(tokens)
        except BaseException:
            if self.engine.n_past > len(self.tokens):
                self.engine.truncate(len(self.tokens))
            raise
        return rows

    def check(self, tokens: Sequence[int], vocabulary_error) -> None:
        """Refuses tokens outside the vocabulary or past the context, before any runs."""
        bad = next((t for t in tokens if not 0 <= t < self.n_vocab), None)
        if bad is not None:
            raise ValueError(vocabulary_error(bad))
        if len(self.tokens) + len(tokens) > self.n_ctx:
            raise context_error(len(self.tokens) + len(tokens), self.n_ctx)

    def eval(self, tokens: list[int]) -> None:
        """Runs ``tokens`` after the cached ones in batches of ``n_batch`` (one engine call
        each, as llama-cpp-python, so that Ctrl-C lands between batches) and keeps their logits."""
        with self.exclusive():
            for i in range(0, len(tokens), self.n_batch):
                self.record(self._run(tokens[i : i + self.n_batch], self.logits_all))

    def evaluate(self, tokens: list[int], every_row: bool = True) -> np.ndarray:
        """Runs ``tokens`` in one engine call and returns their logits (every row, or the last
        one only) without keeping them: speculative verification, forced runs of a grammar."""
        with self.exclusive():
            return self._run(tokens, every_row)

    def replay(self, tokens: list[int], rows: np.ndarray) -> Iterator[int]:
        """Yields ``tokens``, already in the cache, each with the logits it was sampled from
        (``rows[i]``) as the last ones, as decoding one token at a time shows them; the logits
        end with the rows after the last token. ``rows`` may also be that last row alone
        (nobody reads the others): the tokens then go by without logits of their own."""
        if len(rows) == 1:
            self.record(rows)
            yield from tokens
            return
        shown = 0
        try:
            for shown, kept in enumerate(tokens, 1):
                self.record(rows[shown - 1 : shown])
                yield kept  # the cache holds it: no context check needed between
        finally:
            self.record(rows[shown:])

    def prefill(self, prompt: list[int]) -> None:
        """Evaluates ``prompt``, reusing the longest cached prefix (the last prompt token is
        always run again so that its logits are fresh)."""
        if len(prompt) > self.n_ctx:
            raise context_error(len(prompt), self.n_ctx)
        with self.exclusive():
            # With logits_all every row of `scores` must come from this prompt: nothing reused.
            keep = 0 if self.logits_all else common_prefix(self.tokens, prompt[:-1])
            keep = self.truncate(keep)
            self.rows = []
            self.eval(prompt[keep:])

    def prompt_rows(self, tokens: list[int]) -> np.ndarray:
        """The logits after every prompt token (echo with logprobs): the prompt is run again
        whole, and stays cached for the generation that follows."""
        if len(tokens) > self.n_ctx:
            raise context_error(len(tokens), self.n_ctx)
        with self.exclusive():
            self.truncate(0)
            self.rows = []
            keep_all, self.logits_all = self.logits_all, True
            try:
                self.eval(tokens)
            finally:
                self.logits_all = keep_all
            rows = self.scores
            if not keep_all:
                self.rows = [rows[-1:]]
        return rows
