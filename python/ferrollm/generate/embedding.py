"""Embeddings in llama-cpp-python's shapes (``Llama.embed``, ``Llama.create_embedding``).

An embedding is the model's last hidden state, after the output norm (what llama.cpp returns
as ``t_embd``), pooled over each input's tokens as llama.cpp's ``enum llama_pooling_type``
says: NONE keeps one vector per token, MEAN averages them, CLS takes the first, LAST the last.
Pooling comes from the ``pooling_type`` argument, else from the file's ``{arch}.pooling_type``,
else NONE: llama.cpp's default for a model without the key (every generative llama model).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Union

import numpy as np

if TYPE_CHECKING:
    from ferrollm.llama import Llama

# llama.cpp's enum llama_pooling_type (include/llama.h).
LLAMA_POOLING_TYPE_UNSPECIFIED = -1
LLAMA_POOLING_TYPE_NONE = 0
LLAMA_POOLING_TYPE_MEAN = 1
LLAMA_POOLING_TYPE_CLS = 2
LLAMA_POOLING_TYPE_LAST = 3
LLAMA_POOLING_TYPE_RANK = 4

POOLING_NAMES = {"none": 0, "mean": 1, "cls": 2, "last": 3, "rank": 4}

Embedding = Union[list[float], list[list[float]]]


def pooling_type(requested: int | str | None, metadata: Mapping[str, Any]) -> int:
    """The pooling a context uses: the request, else the file's, else NONE (llama.cpp's
    ``llama_context`` rule for LLAMA_POOLING_TYPE_UNSPECIFIED)."""
    if isinstance(requested, str):
        if requested.lower() not in POOLING_NAMES:
            raise ValueError(f"pooling_type {requested!r} is not one of {', '.join(POOLING_NAMES)}")
        requested = POOLING_NAMES[requested.lower()]
    if requested is None or requested == LLAMA_POOLING_TYPE_UNSPECIFIED:
        arch = metadata.get("general.architecture", "llama")
        requested = int(metadata.get(f"{arch}.pooling_type", LLAMA_POOLING_TYPE_NONE))
    requested = int(requested)
    if requested == LLAMA_POOLING_TYPE_RANK:
        raise ValueError("pooling_type 4 (rank) needs a reranker's classification head, which ferrollm lacks")
    if requested not in (LLAMA_POOLING_TYPE_NONE, LLAMA_POOLING_TYPE_MEAN, LLAMA_POOLING_TYPE_CLS,
                         LLAMA_POOLING_TYPE_LAST):  # fmt: skip
        raise ValueError(f"pooling_type {requested} is not one of 0 (none), 1 (mean), 2 (cls), 3 (last)")
    return requested


def pool(hidden: np.ndarray, pooling: int) -> np.ndarray:
    """[n_tokens, n_embd] -> [n_embd] (or unchanged for NONE)."""
    if pooling == LLAMA_POOLING_TYPE_MEAN:
        return hidden.mean(axis=0, dtype=np.float64).astype(np.float32)
    if pooling == LLAMA_POOLING_TYPE_CLS:
        return hidden[0]
    if pooling == LLAMA_POOLING_TYPE_LAST:
        return hidden[-1]
    return hidden


def normalized(v: np.ndarray) -> np.ndarray:
    """Unit Euclidean length along the last axis (a zero vector stays zero), as
    llama-cpp-python's ``normalize_embedding``."""
    norm = np.linalg.norm(v.astype(np.float64), axis=-1, keepdims=True)
    return (v / np.where(norm == 0.0, 1.0, norm)).astype(np.float32)


def embed(
    llm: Llama, input: str | Sequence[str], normalize: bool, truncate: bool, return_count: bool
) -> Embedding | list[Embedding] | tuple[Any, int]:
    if not llm.embedding:
        raise RuntimeError("Llama model must be created with embedding=True to call this method")
    session = llm.session
    texts = [input] if isinstance(input, str) else list(input)
    if not all(isinstance(t, str) for t in texts):
        raise TypeError("input must be a str or a list of str")
    pooling = llm.pooling_type()
    out: list[Embedding] = []
    total = 0
    for text in texts:
        tokens = llm.tokenize(text.encode("utf-8"))
        if truncate:
            tokens = tokens[: llm.n_batch]
        if len(tokens) > llm.n_batch:
            raise ValueError(f"Requested tokens ({len(tokens)}) exceed batch size of {llm.n_batch}")
        if not tokens:
            raise ValueError("cannot embed an empty input: it has no tokens")
        total += len(tokens)
        session.reset()  # each input alone in the cache, from position 0
        with session.exclusive():
            try:
                hidden = session.engine.embeddings(tokens)  # after the output norm, no head
            finally:
                session.truncate(0)
        vector = pool(hidden, pooling)
        if normalize:
            vector = normalized(vector)
        out.append(vector.tolist())
    llm.reset()
    result = out[0] if isinstance(input, str) else out
    return (result, total) if return_count else result


def create_embedding(llm: Llama, input: str | Sequence[str], model: str | None) -> dict[str, Any]:
    """OpenAI's embeddings response, as llama-cpp-python builds it (``embed`` unnormalized)."""
    texts = [input] if isinstance(input, str) else list(input)
    vectors, total = embed(llm, texts, normalize=False, truncate=True, return_count=True)
    return {
        "object": "list",
        "data": [{"object": "embedding", "embedding": v, "index": i} for i, v in enumerate(vectors)],
        "model": model if model is not None else llm.model_path,
        "usage": {"prompt_tokens": total, "total_tokens": total},
    }
