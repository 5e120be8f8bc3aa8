"""Shared helpers of the model tests: cached synthetic model files and agreement measures."""

from __future__ import annotations

import numpy as np
from ferrollm.gguf.synthetic_model import ModelSpec, write_model

# MoE positions whose float64 reference routing is a near-tie (gap between the k-th and the next
# router logit, smallest over layers, below this) may legitimately pick other experts in an
# engine that rounds activations; tests hold them to a looser bound and require them to be few.
ROUTER_MARGIN = 0.03


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two logit matrices."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def model_file(tmp_path_factory, **spec) -> str:
    """A synthetic model for ``spec``, written once per test session."""
    name = "_".join(f"{k}-{v}" for k, v in sorted(spec.items()) if k != "tokenizer") or "default"
    path = tmp_path_factory.getbasetemp() / f"model_{name}.gguf"
    if not path.exists():
        write_model(path, ModelSpec(**spec))
    return str(path)


class CountingEngine:
    """A model's engine that counts the calls to ``eval`` and the tokens they evaluate (how
    speculative decoding, prompt caches and benchmarks see the work done)."""

    def __init__(self, inner):
        self.inner, self.calls, self.evaluated = inner, 0, 0

    def eval(self, tokens, **kwargs):
        self.calls += 1
        self.evaluated += len(tokens)
        return self.inner.eval(tokens, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)
