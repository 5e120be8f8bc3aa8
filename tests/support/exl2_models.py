"""EXL2 files written the way ExLlamaV2 writes them, bit for bit, from numpy: a layer is
quantized round-to-nearest as ``AdaptiveQuantizer`` does (without its error search), then
packed as ``AdaptiveGPTQ.pack`` with the ``pack_rows_4``/``pack_columns`` kernels
(``exllamav2/conversion/adaptivegptq.py``, ``exllamav2_ext/cuda/pack_tensor.cu``), and model
directories as ``convert.py -cf`` compiles them. Written independently of the reader in
:mod:`ferrollm.exl2`; the expected weights are computed in numpy float16 arithmetic."""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass

import numpy as np

from .hf_models import config as hf_config
from .hf_models import tensors as hf_tensors
from .hf_models import write_model


def plan_groups(rows: int, bits: list[int], props: list[float], group_size) -> list[tuple[int, int]]:
    """(bits, rows) per group, as ``AdaptiveGPTQ.configure`` and ``quantize`` lay them out."""
    gs = group_size if isinstance(group_size, dict) else dict.fromkeys(bits, group_size)
    out, remaining, a = [], rows, 0
    for b, p in zip(bits, props):
        g = math.ceil(min(rows * p, remaining) / gs[b])
        remaining -= g * gs[b]
        for _ in range(g):
            n = min(a + gs[b], rows) - a
            assert n > 0
            out.append((b, n))
            a += n
    assert a == rows, (a, rows)
    return out


def find_params(x: np.ndarray, bits: int) -> tuple[np.ndarray, np.float16, np.ndarray]:
    """``AdaptiveQuantizer.find_params`` with p = 1: qscale (1..16 per column), qscale_max
    (float16) and the float scale the rounding uses."""
    maxq = 2**bits - 1
    xmax = np.abs(x).max(axis=0).astype(np.float32) + np.float32(1e-12)
    base = xmax / np.float32(maxq / 2)
    qmax = base.max()
    qs = np.clip(np.round(np.sqrt(base / qmax) * 16), 1, 16).astype(np.int64)
    q_max = np.float16(qmax)
    scale = ((qs * qs).astype(np.float16) * (q_max * np.float16(1 / 256))).astype(np.float32)
    return qs, q_max, scale


def _pack_column_bits(q: np.ndarray, bits: int) -> np.ndarray:
    """``pack_columns_kernel``: per column, runs of 32 (2, 4, 8 bits: 32 / bits) values ORed in
    at bit ``j = i * bits`` of words ``j // 32``, the part past a word in the next one."""
    rows, cols = q.shape
    qrows = math.ceil(rows * bits / 32)
    out = np.zeros((qrows + 5, cols), np.uint64)
    for r in range(rows):
        j = r * bits
        word, shift = j // 32, j % 32
        v = q[r].astype(np.uint64) << np.uint64(shift)
        out[word] |= v & np.uint64(0xFFFFFFFF)
        out[word + 1] |= v >> np.uint64(32)
    return out[:qrows].astype(np.uint32).view(np.int32)


@dataclass
class QuantizedLayer:
    """What ``AdaptiveGPTQ`` holds before ``pack``: values in activation order."""

    invperm: np.ndarray  # (in,) input feature i is stored row invperm[i]
    groups: list[tuple[int, int]]  # (bits, rows)
    q: np.ndarray  # (in, out) unsigned values
    qscale: np.ndarray  # (groups, out) in 1..16
    qscale_max: np.ndarray  # (groups,) float16
    group_size: dict[int, int]


def quantize_layer(w: np.ndarray, rng, bits: list[int], props: list[float], group_size=32) -> QuantizedLayer:
    """``w`` (out x in) quantized round-to-nearest in a random activation order."""
    out_f, in_f = w.shape
    perm = rng.permutation(in_f)
    weights = w.T[perm].astype(np.float32)  # (in, out), activation order
    groups = plan_groups(in_f, bits, props, group_size)
    q = np.empty((in_f, out_f), np.int64)
    qscale, qscale_max, a = [], [], 0
    for b, n in groups:
        qs, q_max, scale = find_params(weights[a : a + n], b)
        q[a : a + n] = np.clip(np.round(weights[a : a + n] / scale + 2 ** (b - 1)), 0, 2**b - 1)
        qscale.append(qs)
        qscale_max.append(q_max)
        a += n
    gs = group_size if isinstance(group_size, dict) else dict.fromkeys(bits, group_size)
    return QuantizedLayer(np.argsort(perm), groups, q, np.stack(qscale), np.array(qscale_max, np.float16), gs)


def dequantized(ql: QuantizedLayer) -> np.ndarray:
    """The weights (out x in, float32) as ExLlamaV2 reconstructs them: every product of two
    halves rounded to half, in numpy's float16 arithmetic."""
    stored = np.empty(ql.q.shape, np.float16)
    a = 0
    for i, (b, n) in enumerate(ql.groups):
        m = np.float16(np.float32(ql.qscale_max[i]) / np.float32(256))
        s = (ql.qscale[i] * ql.qscale[i]).astype(np.float16) * m
        stored[a : a + n] = (ql.q[a : a + n] - 2 ** (b - 1)).astype(np.float16) * s
        a += n
    return np.ascontiguousarray(stored[ql.invperm].T.astype(np.float32))


def pack(ql: QuantizedLayer) -> dict[str, np.ndarray]:
    """The layer's EXL2 tensors (without its name), as ``AdaptiveGPTQ.pack`` writes them."""
    out_f = ql.q.shape[1]
    padding = -out_f % 32
    q_groups, q_weight, q_scale = [], [], []
    a = qrow = 0
    for i, (b, n) in enumerate(ql.groups):
        zero = 2 ** (b - 1)
        qp = np.concatenate([ql.q[a : a + n], np.full((n, padding), zero)], axis=1)  # padding: the zero point
        packed = _pack_column_bits(qp, b)
        q_groups += [b, qrow]
        q_weight.append(packed)
        q_scale.append(_pack_rows_4(np.concatenate([ql.qscale[i], np.zeros(padding, np.int64)])))
        a, qrow = a + n, qrow + packed.shape[0]
    return {
        "q_invperm": ql.invperm.astype(np.int32),
        "q_scale_max": ql.qscale_max.astype(np.float16),
        "q_groups": np.array(q_groups, np.int16),
        "q_scale": np.stack(q_scale),
        "q_weight": np.concatenate(q_weight),
    }


def pack_layer(w: np.ndarray, rng, bits: list[int], props: list[float], group_size=32):
    """(EXL2 tensors without the layer prefix, the float32 weights they dequantize to) for
    ``w`` (out x in), its input features in a random activation order."""
    ql = quantize_layer(w, rng, bits, props, group_size)
    return pack(ql), dequantized(ql)


def _pack_rows_4(qs: np.ndarray) -> np.ndarray:
    """``pack_rows_4_kernel``: qscale - 1 as uint16, shifted 4 * i into a uint32 (a padding 0
    becomes 0xFFFF and spills into the nibbles after it, as on the GPU)."""
    x = (qs.astype(np.int64) - 1) & 0xFFFF
    out = np.zeros(len(qs) // 8, np.uint64)
    for i in range(8):
        out |= x[i::8].astype(np.uint64) << np.uint64(4 * i)
    return (out & np.uint64(0xFFFFFFFF)).astype(np.uint32).view(np.int32)


def save_safetensors(path: str, tensors: dict[str, np.ndarray]) -> None:
    """Per-tensor dtypes (I32, I16, F16, F32), as ``safetensors.torch.save_file`` writes them."""
    names = {np.dtype(np.int32): "I32", np.dtype(np.int16): "I16", np.dtype(np.float16): "F16",
             np.dtype(np.float32): "F32", np.dtype(np.int64): "I64"}  # fmt: skip
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        header[name] = {
            "dtype": names[a.dtype],
            "shape": list(a.shape),
            "data_offsets": [offset, offset + a.nbytes],
        }
        blobs.append(a.tobytes())
        offset += a.nbytes
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


LINEAR_SUFFIXES = ("_proj.weight", ".w1.weight", ".w2.weight", ".w3.weight")
# Each linear layer's bit mix (bits, proportions, group size): ExLlamaV2's presets spread over
# the widths so every one of 2, 3, 4, 5, 6 and 8 bits appears in a tiny model.
MIXES = [([8, 4], [0.5, 0.5], 32), ([6, 3], [0.5, 0.5], 32), ([5, 2], [0.5, 0.5], 32), ([4], [1.0], 32),
         ([8, 6, 5, 4], [0.25, 0.25, 0.25, 0.25], 32), ([3, 2], [0.5, 0.5], 32)]  # fmt: skip
HEAD_MIX = ([8, 6], [0.5, 0.5], 32)


def write_exl2_model(path: str, float_path: str | None = None, arch: str = "llama", seed: int = 0,
                     shards: int = 2, head: bool = True, **shape) -> dict[str, np.ndarray]:  # fmt: skip
    """An EXL2 directory from a random Hugging Face model (every linear layer quantized, the
    head too unless ``head`` is False: kept at 16 bits), and, at ``float_path``, the same
    model with its dequantized weights as float16 safetensors; returns those weights."""
    cfg = hf_config(arch, **shape)
    rng = np.random.default_rng(seed)
    w = hf_tensors(cfg, seed)
    stored, dequantized = {}, {}
    for i, (name, v) in enumerate(w.items()):
        quantized = name.endswith(LINEAR_SUFFIXES) or (head and name == "lm_head.weight")
        if not quantized:
            stored[name] = v.astype(np.float16)
            dequantized[name] = stored[name].astype(np.float32)
            continue
        bits, props, gs = HEAD_MIX if name == "lm_head.weight" else MIXES[i % len(MIXES)]
        t, dq = pack_layer(v, rng, bits, props, gs)
        key = name.removesuffix(".weight")
        stored.update({f"{key}.{k}": a for k, a in t.items()})
        dequantized[name] = dq
    if float_path:
        write_model(float_path, arch=arch, tokenizer="bpe", dtype="F16", weights=dequantized, **shape)
    write_model(path, arch=arch, tokenizer="bpe", dtype="F16", weights={}, **shape)  # config and tokenizer
    os.unlink(os.path.join(path, "model.safetensors"))
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    config["quantization_config"] = {"quant_method": "exl2", "version": "0.3.2", "bits": 4.0,
                                     "head_bits": 6 if head else 16,
                                     "calibration": {"rows": 115, "length": 2048, "dataset": "(default)"}}  # fmt: skip
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=4)
    names = sorted(stored)
    for s in range(shards):
        part = {n: stored[n] for n in names[s::shards]}
        save_safetensors(os.path.join(path, f"output-{s + 1:05d}-of-{shards:05d}.safetensors"), part)
    return dequantized
