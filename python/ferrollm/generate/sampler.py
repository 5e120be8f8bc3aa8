"""Token sampling from logits (numpy), in llama.cpp's order: logit bias, repetition penalties
over the last ``penalty_last_n`` tokens, top-k, top-p, min-p, temperature, then a draw from a
seeded generator. Temperature 0 (or below) is greedy.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class SamplingParams:
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    penalty_last_n: int = 64
    logit_bias: Mapping[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in (
            "temperature",
            "top_p",
            "min_p",
            "repeat_penalty",
            "frequency_penalty",
            "presence_penalty",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"{name} must be a number, got {value!r}")
            if math.isnan(value):
                raise ValueError(f"{name} must be a number, got NaN")
        for name in ("top_k", "penalty_last_n"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"{name} must be a whole number, got {value!r}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.repeat_penalty <= 0.0:
            raise ValueError(f"repeat_penalty must be > 0, got {self.repeat_penalty}")
        if self.penalty_last_n < -1:
            raise ValueError(f"penalty_last_n must be >= -1 (-1 = whole context), got {self.penalty_last_n}")


class Sampler:
    def __init__(self, params: SamplingParams | None = None, seed: int | None = None):
        self.params = params or SamplingParams()
        self.rng = np.random.default_rng(seed)

    def penalized(self, logits: np.ndarray, history: Sequence[int]) -> np.ndarray:
        """Logits after bias and repetition penalties (a new float64 array)."""
        p = self.params
        z = np.array(logits, dtype=np.float64)
        for token, bias in p.logit_bias.items():
            z[int(token)] += bias
        window = (
            history if p.penalty_last_n == -1 else history[-p.penalty_last_n :] if p.penalty_last_n else []
        )
        if len(window) and (p.repeat_penalty != 1.0 or p.frequency_penalty or p.presence_penalty):
            ids, counts = np.unique(np.asarray(window, dtype=np.int64), return_counts=True)
            seen = z[ids]
            seen = np.where(seen > 0, seen / p.repeat_penalty, seen * p.repeat_penalty)
            z[ids] = seen - counts * p.frequency_penalty - p.presence_penalty
        return z

    def greedy_scores(self, logits: np.ndarray, history: Sequence[int]) -> np.ndarray:
        """What greedy decoding takes the argmax of: ``logits`` itself (not copied) when no bias
        or penalty applies, else ``penalized`` (copying 32000 logits to float64 was 30 us a
        token, a fifth of a grammar's cost on the demo model)."""
        p = self.params
        if p.repeat_penalty != 1.0 or p.frequency_penalty or p.presence_penalty:
            return self.penalized(logits, history)
        if not p.logit_bias:
            return logits
        z = np.array(logits)  # only the biased entries change: no float64 widening
        for token, bias in p.logit_bias.items():
            z[int(token)] += bias
        return z

    def candidates(self, logits: np.ndarray, history: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray]:
        """(token ids, probabilities) left after the truncations, most likely first (ties:
        lower id first)."""
        p = self.params
        z = self.penalized(logits, history)
        # Sorting the whole vocabulary costs milliseconds per token; only the top-k set and,
        # within it, the tokens that can pass min-p are sorted.
        pool = _top_k_ids(z, p.top_k) if 0 < p.top_k < len(z) else np.arange(len(z))
        zmax = z[pool].max()
        # Truncations look at the untempered distribution; temperature reshapes what is left.
        total = _exp(z[pool] - zmax).sum()
        if p.min_p > 0.0:
            pool = pool[z[pool] - zmax >= np.log(p.min_p)]
        order = pool[np.lexsort((pool, -z[pool]))]
        z = z[order]
        keep = len(z)
        if p.top_p < 1.0:
            # The smallest prefix whose mass reaches top_p (at least one token).
            probs = _exp(z - zmax) / total
            keep = min(keep, int(np.searchsorted(np.cumsum(probs), p.top_p) + 1))
        order, z = order[:keep], z[:keep]
        temp = p.temperature if p.temperature > 0 else 1.0
        final = _exp((z - z[0]) / temp)
        return order, final / final.sum()

    def sample(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        if self.params.temperature <= 0:
            return int(np.argmax(self.greedy_scores(logits, history)))
        ids, probs = self.candidates(logits, history)
        return int(ids[self.rng.choice(len(ids), p=probs)])


# exp(-650) over any vocabulary's sum is still a normal float64: below it a probability is an
# exact 0, never a subnormal (logit biases of -1000, banned tokens, long penalties reach there).
_EXP_CUT = -650.0


def _exp(x: np.ndarray) -> np.ndarray:
    """exp(x), with an exact 0 where x < _EXP_CUT (NaN stays NaN)."""
    out = np.zeros_like(x)
    return np.exp(x, out=out, where=~(x < _EXP_CUT))


def _top_k_ids(z: np.ndarray, k: int) -> np.ndarray:
    """The ids of the k largest values, ties at the boundary broken by lower id (as a stable
    sort would), in O(n)."""
    boundary = np.partition(z, len(z) - k)[len(z) - k]
    above = np.flatnonzero(z > boundary)
    tied = np.flatnonzero(z == boundary)[: k - len(above)]
    return np.concatenate([above, tied])
