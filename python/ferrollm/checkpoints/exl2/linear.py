"""One EXL2 linear layer (ExLlamaV2's format) and its exact dequantization.

A layer ``W`` of shape (out, in) is stored transposed, as ``in`` rows by ``out`` columns, its
rows in activation order (``stored row k`` is input feature ``perm[k]``). Per layer:

- ``q_groups`` (int16, 2 per group): the group's bit width (2, 3, 4, 5, 6 or 8) and the
  ``q_weight`` row where it starts. A group spans ``(next start - start) * 32 / bits`` input
  rows; the last one takes the rest. ExLlamaV2 orders groups by falling width.
- ``q_weight`` (int32, packed rows x columns padded to a multiple of 32): each column of a
  group is one little-endian bit stream of its values, value ``i`` at bit ``i * bits``
  (so 32 / bits values per word for 2, 4, 8; 32 values in 3 or 5 words for 3 and 5 bits;
  16 values in 3 words for 6 bits). Values are unsigned, zero point ``2 ** (bits - 1)``.
- ``q_scale`` (int32, groups x columns / 8): a 4-bit ``qs`` per group and column, 8 to a word,
  lowest nibble first; the scale is ``(qs + 1) ** 2 * q_scale_max[group] / 256``.
- ``q_scale_max`` (float16, per group); ``q_invperm`` (int16/int32): input feature ``i`` is
  stored row ``q_invperm[i]``; optional ``bias``.

ExLlamaV2 computes the weight in half precision, each step rounded to nearest:
``m = half(q_scale_max / 256)`` (often subnormal), ``scale = half((qs + 1) ** 2 * m)``,
``w = half((q - zero) * scale)``; :func:`dequantize` reproduces those float16 values bit for
bit (its ``reconstruct`` kernel, ``exllamav2_ext/cuda/q_matrix.cu``), returned as float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import gcd

import numpy as np

BITS = (2, 3, 4, 5, 6, 8)
PARTS = ("q_weight", "q_scale", "q_scale_max", "q_groups", "q_invperm")


class EXL2Error(ValueError):
    pass


@dataclass(frozen=True)
class Group:
    bits: int
    row: int  # first input row (in stored, activation order)
    rows: int
    qrow: int  # first q_weight row
    qrows: int


def groups_of(key: str, q_groups: np.ndarray, qrows: int, rows: int) -> list[Group]:
    """The groups ``q_groups`` describes, checked against ``qrows`` packed and ``rows`` input rows."""
    g = np.asarray(q_groups).astype(np.int64).ravel()
    if g.size == 0 or g.size % 2:
        raise EXL2Error(f"{key}.q_groups: {g.size} values (two per group expected)")
    bits, starts = g[0::2], g[1::2] & 0xFFFF  # starts are unsigned 16-bit in ExLlamaV2
    bad = [int(b) for b in bits if b not in BITS]
    if bad:
        raise EXL2Error(f"{key}.q_groups: bit width {bad[0]} (only {', '.join(map(str, BITS))})")
    if starts[0] != 0:
        raise EXL2Error(f"{key}.q_groups: the first group starts at q_weight row {starts[0]}, not 0")
    out, row = [], 0
    for i, (b, start) in enumerate(zip(bits.tolist(), starts.tolist())):
        last = i == len(bits) - 1
        end = qrows if last else starts[i + 1]
        n_bits = (end - start) * 32
        if end <= start or (not last and n_bits % b):
            raise EXL2Error(f"{key}.q_groups: group {i} ({b} bits) spans q_weight rows {start}..{end}, "
                            f"not a whole number of {b}-bit rows (q_weight has {qrows} rows)")  # fmt: skip
        n = rows - row if last else n_bits // b
        if last and (n <= 0 or -(-n * b // 32) != end - start):
            why = (f"the groups before the last cover {row} input rows" if n <= 0 else
                   f"the last group's {n} rows of {b} bits take {-(-n * b // 32)} q_weight rows, not {end - start}")  # fmt: skip
            raise EXL2Error(f"{key}.q_groups: inconsistent with q_weight ({qrows} rows) and q_invperm "
                            f"({rows} input rows): {why}")  # fmt: skip
        out.append(Group(b, row, n, start, end - start))
        row += n
    return out


def check_invperm(key: str, invperm: np.ndarray, rows: int) -> np.ndarray:
    p = np.asarray(invperm).astype(np.int64).ravel()
    if p.size != rows:
        raise EXL2Error(f"{key}.q_invperm: {p.size} entries for {rows} input features")
    if np.asarray(invperm).dtype == np.int16:
        p &= 0xFFFF  # ExLlamaV2's kernels read it as uint16
    if p.min(initial=0) < 0 or p.max(initial=0) >= rows or np.bincount(p, minlength=rows).max(initial=0) > 1:
        raise EXL2Error(f"{key}.q_invperm: not a permutation of 0..{rows - 1}")
    return p


def unpack_columns(words: np.ndarray, bits: int, rows: int) -> np.ndarray:
    """``rows`` unsigned values per column from packed ``words`` (qrows x columns, uint32)."""
    span = bits // gcd(bits, 32)  # words holding a whole number of values
    per = 32 * span // bits  # values in those words
    w = np.asarray(words, np.uint32)
    if w.shape[0] % span:
        w = np.concatenate([w, np.zeros((span - w.shape[0] % span, w.shape[1]), np.uint32)])
    w = w.reshape(-1, span, w.shape[1])
    out = np.empty((w.shape[0], per, w.shape[2]), np.uint8)
    mask = np.uint32((1 << bits) - 1)
    for i in range(per):
        j, s = divmod(i * bits, 32)
        v = w[:, j] >> np.uint32(s)
        if s + bits > 32:  # the value continues in the next word
            v |= w[:, j + 1] << np.uint32(32 - s)
        v &= mask
        out[:, i] = v
    return out.reshape(-1, out.shape[2])[:rows]


def unpack_scales(q_scale: np.ndarray, columns: int) -> np.ndarray:
    """The 4-bit ``qs`` (groups x columns) from their packed words."""
    w = np.asarray(q_scale).view(np.uint32)
    shifts = np.arange(0, 32, 4, dtype=np.uint32)
    qs = (w[:, :, None] >> shifts) & np.uint32(15)
    return qs.reshape(w.shape[0], -1)[:, :columns]


def dequantize(key: str, t: dict[str, np.ndarray], out_features: int | None = None) -> np.ndarray:
    """W (out_features x in_features, float32 holding ExLlamaV2's float16 values) from the
    layer's tensors ``t`` (``q_weight``, ``q_scale``, ... without the ``key.`` prefix)."""
    missing = [p for p in PARTS if p not in t]
    if missing:
        raise EXL2Error(f"{key}: missing tensor {key}.{missing[0]}")
    qw, invperm = np.asarray(t["q_weight"]), t["q_invperm"]
    if qw.ndim != 2 or qw.dtype.itemsize != 4 or qw.dtype.kind not in "iu":
        raise EXL2Error(f"{key}.q_weight: {qw.dtype} of shape {qw.shape} (2-D int32 expected)")
    rows, width = np.asarray(invperm).size, qw.shape[1]
    out_features = width if out_features is None else out_features
    if width % 32 or not out_features <= width < out_features + 32:
        raise EXL2Error(f"{key}.q_weight: {width} columns for {out_features} output features "
                        "(padded to a multiple of 32 expected)")  # fmt: skip
    groups = groups_of(key, t["q_groups"], qw.shape[0], rows)
    perm = check_invperm(key, invperm, rows)
    q_scale, q_max = np.asarray(t["q_scale"]), np.asarray(t["q_scale_max"]).ravel()
    if q_scale.shape != (len(groups), width // 8) or q_scale.dtype.itemsize != 4:
        raise EXL2Error(f"{key}.q_scale: {q_scale.dtype} of shape {q_scale.shape}, expected int32 of shape "
                        f"{(len(groups), width // 8)} ({len(groups)} groups, {width} columns)")  # fmt: skip
    if q_max.shape != (len(groups),):
        raise EXL2Error(f"{key}.q_scale_max: {q_max.size} values for {len(groups)} groups")
    if not np.isfinite(q_max).all():
        bad = q_max[~np.isfinite(q_max)][0]
        raise EXL2Error(
            f"{key}.q_scale_max: a group's scale is {bad} (the file is damaged: scales are finite)"
        )
    # scale = half((qs + 1)^2 * half(max / 256)), w = half((q - zero) * scale): each product of
    # two halves is exact in float32, so rounding it to float16 is the kernels' one rounding.
    m = (q_max.astype(np.float32) / np.float32(256)).astype(np.float16).astype(np.float32)
    qs = unpack_scales(q_scale, out_features).astype(np.float32)
    scales = (((qs + 1) ** 2) * m[:, None]).astype(np.float16).astype(np.float32)
    words = qw.view(np.uint32)[:, :out_features]
    columns = np.arange(out_features, dtype=np.int32)
    stored = np.empty((rows, out_features), np.float32)  # (in, out), activation order
    for i, g in enumerate(groups):
        q = unpack_columns(words[g.qrow : g.qrow + g.qrows], g.bits, g.rows)
        zero = np.float32(1 << (g.bits - 1))
        if 1 << g.bits > g.rows // 2:  # few rows for their levels (8-bit groups of 32): round each weight
            v = q.astype(np.float32)
            v -= zero
            v *= scales[i]
            stored[g.row : g.row + g.rows] = v.astype(np.float16)
            continue
        # else every (level, column) pair's weight in a table, looked up: cheaper than rounding each weight
        levels = np.arange(1 << g.bits, dtype=np.float32) - zero
        table = (levels[:, None] * scales[i]).astype(np.float16).astype(np.float32).ravel()
        index = q.astype(np.int32)
        index *= np.int32(out_features)
        index += columns
        np.take(table, index, out=stored[g.row : g.row + g.rows])
    return _unpermute_transposed(stored, perm)


def _unpermute_transposed(stored: np.ndarray, invperm: np.ndarray, block: int = 32) -> np.ndarray:
    """``stored[invperm].T`` made contiguous, a block of output columns at a time (whole rows
    gathered, written ``block`` floats at a time: several times faster than one transpose)."""
    out = np.empty(stored.shape[::-1], stored.dtype)
    for i in range(0, len(invperm), block):
        out[:, i : i + block] = stored[invperm[i : i + block]].T
    return out
