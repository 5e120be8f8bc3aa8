"""The loss a quantized model suffers against its base, measured on calibration text: mean
KL-divergence of the next-token distributions over every position of the calibration chunks.

The base's logits are kept in memory (float32, positions x vocabulary). For a model's logits
``x`` against the base's ``b`` with ``d = x - b`` and base probabilities ``p``,

    KLD(p || q) = sum p (log p - log q) = log(sum p e^d) - sum p d

(the normalisers cancel into the first term), which stays exact for tiny differences where the
difference of two log-softmaxes would lose them in float32 rounding.
"""

from __future__ import annotations

import os

import numpy as np

from ferrollm import _core


def _log_normaliser(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=1, keepdims=True)
    return m + np.log(np.exp(x - m).sum(axis=1, keepdims=True, dtype=np.float64)).astype(np.float32)


class KLDProbe:
    def __init__(self, base_path: str | os.PathLike, chunks: list[list[int]], n_ctx: int,
                 n_threads: int | None = None):  # fmt: skip
        self.chunks, self.n_ctx, self.n_threads = chunks, n_ctx, n_threads
        self.base = self._logits(base_path)
        self.probs = [np.exp(b - _log_normaliser(b)) for b in self.base]
        # Their sums as kld() sums them (1 but for float32 rounding, which would show as a floor).
        self.mass = [np.einsum("ij,ij->i", p, np.ones_like(p)) for p in self.probs]

    @property
    def n_tokens(self) -> int:
        return sum(len(c) for c in self.chunks)

    def _logits(self, path) -> list[np.ndarray]:
        model = _core.Model(os.fspath(path), n_ctx=self.n_ctx, n_threads=self.n_threads)
        try:
            out = []
            for chunk in self.chunks:
                model.truncate(0)
                out.append(np.asarray(model.eval(chunk, logits_all=True), np.float32))
            return out
        finally:
            model.close()

    def kld(self, path: str | os.PathLike) -> float:
        """Mean KLD(base || model at ``path``) over all calibration positions."""
        total, count = 0.0, 0
        for x, b, p, mass in zip(self._logits(path), self.base, self.probs, self.mass):
            d = np.subtract(x, b, out=x)
            mean_d = np.einsum("ij,ij->i", p, d) / mass
            shift = d.max(axis=1)
            e = np.exp(np.subtract(d, shift[:, None], out=d), out=d)
            gap = np.log(np.einsum("ij,ij->i", p, e) / mass) + shift - mean_d
            total += float(np.maximum(gap, 0.0).sum(dtype=np.float64))
            count += x.shape[0]
        return total / count
