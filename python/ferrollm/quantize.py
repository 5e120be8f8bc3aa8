"""Quantize whole GGUF models with the reference quantizers (no importance matrix yet).

``quantize_file`` is llama.cpp's ``--pure`` quantization: every weight matrix gets the one type
asked for (token embedding and tied head included), while norms and MoE routers stay F32, as
llama.cpp keeps them. It is what the quality tools need to put a number on each type.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from ferrollm import quants
from ferrollm.gguf import GGUFFile, GGUFWriter

# Types our quantizers can write (F32/F16 are plain conversions).
WRITABLE_TYPES = ("F32", "F16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
                  "IQ4_NL", "IQ4_XS")  # fmt: skip

# general.file_type (llama.cpp's llama_ftype) of a file quantized to one type; for K types the
# "_S" mix is the closest named one.
FILE_TYPE_IDS = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q2_K": 10,
                 "Q3_K": 11, "Q4_K": 14, "Q5_K": 16, "Q6_K": 18, "IQ4_NL": 25, "IQ4_XS": 30}  # fmt: skip


def keeps_f32(name: str, numpy_shape: tuple[int, ...]) -> bool:
    """Tensors that stay F32 whatever the target type: vectors (norms, biases) and MoE routers
    (tiny, and routing decisions are sensitive to them)."""
    return len(numpy_shape) < 2 or "ffn_gate_inp" in name


def quantize_tensor(values: np.ndarray, type_name: str) -> tuple[np.ndarray, str | None, list[int] | None]:
    """(data, type, ggml shape) for ``GGUFWriter.add_tensor``: a float array of numpy shape
    (..., rows, cols) quantized to ``type_name`` along its rows."""
    t = quants.quant_type(type_name).name
    if t not in WRITABLE_TYPES:
        raise ValueError(f"cannot quantize to {t}; writable types: {', '.join(WRITABLE_TYPES)}")
    values = np.ascontiguousarray(values, dtype=np.float32)
    if t == "F32":
        return values, None, None
    if t == "F16":
        return values.astype(np.float16), None, None
    block = quants.quant_type(t).block_elems
    if values.shape[-1] % block:
        raise ValueError(f"rows of {values.shape[-1]} values are not a whole number of {t} blocks ({block})")
    return quants.quantize(values.reshape(-1), t), t, list(reversed(values.shape))


def quantize_file(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    type_name: str,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, str]:
    """Write ``dst``: ``src`` with every weight matrix requantized to ``type_name`` (from its
    dequantized values). Returns {tensor name: type written}."""
    target = quants.quant_type(type_name).name
    if target not in FILE_TYPE_IDS:
        raise ValueError(f"cannot quantize to {target}; writable types: {', '.join(WRITABLE_TYPES)}")
    written: dict[str, str] = {}
    with GGUFFile(src) as f:
        types = f.metadata_types
        writer = GGUFWriter(dst)
        for key, value in f.metadata.items():
            if key not in ("general.alignment", "general.file_type"):
                writer.add(key, value, types[key])
        writer.add("general.file_type", FILE_TYPE_IDS[target], "u32")
        tensors = f.tensors
        for i, info in enumerate(tensors):
            values = f.dequantize(info.name).reshape(info.numpy_shape)
            t = "F32" if keeps_f32(info.name, info.numpy_shape) else target
            writer.add_tensor(info.name, *quantize_tensor(values, t))
            written[info.name] = t
            if progress:
                progress(i + 1, len(tensors), info.name)
        writer.write()
    return written
