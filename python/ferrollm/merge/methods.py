"""Merge methods: one function each, one table (``METHODS``) of what each needs.

Every function gets the base tensor (``None`` where the method has no base), the other inputs'
tensors, the shared parameters and one parameter dict per other input, all float32 numpy, and
returns the merged tensor. The inputs are loaded for that one call: a function may overwrite
them (slerp does, to keep a merge's memory to its inputs). Semantics are mergekit's (0.1.x), so a YAML written for mergekit
gives the same model here; NearSwap also takes a chain of secondaries, applied in turn.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

REQUIRED = object()


@dataclass(frozen=True)
class MergeMethod:
    fn: Callable
    needs_base: bool  # False: the base (if any) is one more input, as in linear
    min_inputs: int = 1  # counting the base
    max_inputs: int | None = None
    shared: dict = field(default_factory=dict)  # parameter -> default (REQUIRED: no default)
    per_model: dict = field(default_factory=dict)


@dataclass
class Context:
    tensor_name: str
    seed: int = 0

    def rng(self, index: int) -> np.random.Generator:
        """A generator fixed by the seed, the tensor and the input: reruns give the same bits,
        whatever order tensors are merged in."""
        return np.random.default_rng([self.seed, zlib.crc32(self.tensor_name.encode()), index])


# Elements per piece when a whole-tensor sum is taken in float64: the temporaries stay small
# (an embedding matrix in float64 would double the merge's peak memory).
_PIECE = 1 << 20


def _dot64(a: np.ndarray, b: np.ndarray) -> float:
    """sum(a * b) over flat float32 arrays, accumulated in float64 piece by piece."""
    return sum(
        float(np.dot(a[i : i + _PIECE].astype(np.float64), b[i : i + _PIECE].astype(np.float64)))
        for i in range(0, a.size, _PIECE)
    )


def _norm(x: np.ndarray, eps: float) -> float:
    flat = x.reshape(-1)
    n = _dot64(flat, flat) ** 0.5
    return n if n > eps else 1.0


def slerp(base, others, p, mp, ctx, dot_threshold: float = 0.9995, eps: float = 1e-8):
    """Spherical interpolation from the base (t=0) to the other model (t=1), with both tensors
    normalised as whole tensors; nearly collinear pairs fall back to lerp."""
    (other,) = others
    t = float(p["t"])
    a, b = base.reshape(-1), other.reshape(-1)
    dot = float(np.clip(_dot64(a, b) / (_norm(a, eps) * _norm(b, eps)), -1.0, 1.0)) if a.size else 1.0
    if abs(dot) > dot_threshold:
        ca, cb = 1.0 - t, t
    else:
        theta = np.arccos(dot)
        ca, cb = np.sin((1 - t) * theta) / np.sin(theta), np.sin(t * theta) / np.sin(theta)
    # In place on the inputs (loaded for this tensor alone): no full-size temporaries.
    base *= np.float32(ca)
    other *= np.float32(cb)
    base += other
    return base


def nearswap(base, others, p, mp, ctx):
    """Keep the base, except where a value is within ``t`` of the secondary's: there move to the
    secondary, fully where they are equal (weight = clip(t / |base - other|, 0, 1)). Several
    secondaries are applied in turn, each to the previous result."""
    t = np.float32(p["t"])
    out = base
    for other in others:
        weight = np.clip(t / np.maximum(np.abs(out - other), np.float32(1e-6)), 0, 1)
        out = weight * other + (1 - weight) * out
    return out


def linear(base, inputs, p, mp, ctx):
    weights = [np.float32(m["weight"]) for m in mp]
    out = sum(w * x for w, x in zip(weights, inputs))
    if p["normalize"]:
        out = out / np.float32(sum(weights))
    return out


def passthrough(base, inputs, p, mp, ctx):
    scale = mp[0].get("scale")
    return inputs[0] if scale is None else inputs[0] * np.float32(scale)


def _magnitude(delta: np.ndarray, density: float, rng) -> np.ndarray:
    """Keep the ``density`` fraction of largest-magnitude entries (at least one)."""
    k = max(1, int(density * delta.size))
    flat = delta.reshape(-1)
    keep = np.argpartition(-np.abs(flat), k - 1)[:k]
    mask = np.zeros(flat.size, np.float32)
    mask[keep] = 1
    return mask.reshape(delta.shape)


def _bernoulli(delta: np.ndarray, density: float, rng) -> np.ndarray:
    """DARE: keep each entry with probability ``density``."""
    return (rng.random(delta.shape, dtype=np.float32) < density).astype(np.float32)


def _sparsify(delta, density: float, rescale: bool, pick, rng):
    if density >= 1:
        return delta
    if density <= 0 or delta.size == 0:
        return np.zeros_like(delta)
    masked = delta * pick(delta, density, rng)
    if rescale:  # mergekit rescales to the delta's L1 norm
        before, after = (
            float(np.abs(delta).sum(dtype=np.float64)),
            float(np.abs(masked).sum(dtype=np.float64)),
        )
        if before >= 1e-7 and after >= 1e-7:
            masked = masked * np.float32(before / after)
    return masked


def task_arithmetic_family(pick: Callable | None, consensus: bool):
    """Task arithmetic, TIES and DARE: weighted sums of (sparsified) task vectors ``model - base``,
    with TIES's sign election when ``consensus``."""

    def merge(base, others, p, mp, ctx):
        if not others:
            return base
        deltas = []
        for i, (x, m) in enumerate(zip(others, mp)):
            d = x - base
            if pick is not None:
                d = _sparsify(d, float(m["density"]), bool(p["rescale"]), pick, ctx.rng(i))
            deltas.append(d * np.float32(m["weight"]))
        weights = [np.float32(m["weight"]) for m in mp]
        if consensus:
            majority = np.where(sum(deltas) >= 0, np.float32(1), np.float32(-1))
            masks = [(np.sign(d) == majority).astype(np.float32) for d in deltas]
            mixed = sum(d * k for d, k in zip(deltas, masks))
            divisor = sum(w * k for w, k in zip(weights, masks))
            divisor = np.where(divisor == 0, np.float32(1), divisor)
        else:
            mixed = sum(deltas)
            divisor = sum(weights)
            divisor = np.float32(1) if abs(divisor) < 1e-8 else divisor
        if p["normalize"]:
            mixed = mixed / divisor
        if p["lambda"] != 1:
            mixed = mixed * np.float32(p["lambda"])
        return (base + mixed).astype(np.float32)

    return merge


def model_stock(base, others, p, mp, ctx):
    """Model Stock: move from the base toward the models' average by how aligned their task
    vectors are (mean pairwise cosine), per whole tensor or per row (``filter_wise``)."""
    shape = base.shape
    if p["filter_wise"]:
        w0 = base.reshape(1, -1) if base.ndim == 1 else base
        ws = [w.reshape(w0.shape) for w in others]
    else:
        w0, ws = base.reshape(-1), [w.reshape(-1) for w in others]
    offsets = [w - w0 for w in ws]
    cos = []
    for i, a in enumerate(offsets):
        for b in offsets[i + 1 :]:
            norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
            cos.append(np.clip((a * b).sum(axis=-1) / np.maximum(norms, 1e-6), -1, 1))
    cos_theta = np.mean(cos, axis=0)[..., None]
    n = len(ws)
    denominator = 1 + (n - 1) * cos_theta
    singular = np.abs(denominator) < 1e-6
    t = np.where(singular, 0, n * cos_theta / np.where(singular, 1, denominator)).astype(np.float32)
    average = sum(ws) / np.float32(n)
    return (t * average + (1 - t) * w0).reshape(shape).astype(np.float32)


_GTA_SHARED = {"int8_mask": False, "lambda": 1.0}
_GTA_MODEL = {"weight": REQUIRED, "density": 1.0}


def _gta(pick, consensus, normalize, rescale) -> MergeMethod:
    return MergeMethod(task_arithmetic_family(pick, consensus), needs_base=True,
                       shared={**_GTA_SHARED, "normalize": normalize, "rescale": rescale}, per_model=_GTA_MODEL)  # fmt: skip


METHODS: dict[str, MergeMethod] = {
    "linear": MergeMethod(
        linear, needs_base=False, shared={"normalize": True}, per_model={"weight": REQUIRED}
    ),
    "slerp": MergeMethod(slerp, needs_base=True, min_inputs=2, max_inputs=2, shared={"t": REQUIRED}),
    "nearswap": MergeMethod(nearswap, needs_base=True, min_inputs=2, shared={"t": REQUIRED}),
    "task_arithmetic": _gta(None, consensus=False, normalize=False, rescale=False),
    "ties": _gta(_magnitude, consensus=True, normalize=True, rescale=False),
    "dare_ties": _gta(_bernoulli, consensus=True, normalize=False, rescale=True),
    "dare_linear": _gta(_bernoulli, consensus=False, normalize=False, rescale=True),
    "model_stock": MergeMethod(model_stock, needs_base=True, min_inputs=3, shared={"filter_wise": False}),
    "passthrough": MergeMethod(passthrough, needs_base=False, max_inputs=1, per_model={"scale": None}),
}
