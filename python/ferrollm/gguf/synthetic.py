"""Valid blocks of every type with random contents, and small GGUF files made of them.

Random bytes are a valid block of any type except for the float scale fields, which random
bits could make NaN or infinite; those fields are overwritten here with finite values.
Used by tests, benchmarks and the CLI's ``synth`` command (no download anywhere).
"""

from __future__ import annotations

import os

import numpy as np

from ferrollm.gguf import GGUFWriter
from ferrollm.quant.block_types import quant_type

# Byte offsets of the f16 scale fields inside one block (ggml-common.h layouts).
F16_FIELDS: dict[str, tuple[int, ...]] = {
    "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,), "IQ4_NL": (0,),
    "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,),
    "IQ2_XXS": (0,), "IQ2_XS": (0,), "IQ2_S": (0,), "IQ3_XXS": (0,), "IQ3_S": (0,),
    "IQ1_S": (0,), "IQ4_XS": (0,),
}  # fmt: skip

# Types whose every element is itself a float.
FLOAT_TYPES = {"F32": np.float32, "F16": np.float16, "BF16": None}


def set_scales(blocks: np.ndarray, type_name: str, scales: np.ndarray) -> None:
    """Overwrite the float scale fields of ``blocks`` (n_blocks x block_bytes, uint8) with
    ``scales`` (n_blocks x n_fields, float), in place."""
    t = type_name.upper()
    if t == "Q8_K":
        blocks[:, 0:4] = scales[:, :1].astype("<f4").view(np.uint8)
    elif t == "IQ1_M":
        # The f16 super-block scale is spread over the top nibbles of the four scale u16s.
        bits = scales[:, 0].astype("<f2").view("<u2").astype(np.uint16)
        sc = blocks[:, 48:56].copy().view("<u2")
        for i in range(4):
            nib = (bits >> (4 * i)) & 0xF
            sc[:, i] = (sc[:, i] & 0x0FFF) | (nib << 12)
        blocks[:, 48:56] = sc.view(np.uint8)
    else:
        for k, off in enumerate(F16_FIELDS[t]):
            blocks[:, off : off + 2] = scales[:, k : k + 1].astype("<f2").view(np.uint8)


def n_scale_fields(type_name: str) -> int:
    t = type_name.upper()
    return 1 if t in ("Q8_K", "IQ1_M") else len(F16_FIELDS[t])


def random_blocks(type_name: str, n_blocks: int, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    """``n_blocks`` valid blocks of ``type_name`` as a (n_blocks, block_bytes) uint8 array."""
    qt = quant_type(type_name)
    if qt.name in FLOAT_TYPES:
        values = (rng.standard_normal(n_blocks) * scale).astype(np.float32)
        if qt.name == "BF16":
            return (values.view(np.uint32) >> 16).astype("<u2").view(np.uint8).reshape(n_blocks, 2)
        return values.astype(FLOAT_TYPES[qt.name]).view(np.uint8).reshape(n_blocks, qt.block_bytes)
    blocks = rng.integers(0, 256, size=(n_blocks, qt.block_bytes), dtype=np.uint8)
    scales = rng.uniform(-scale, scale, size=(n_blocks, n_scale_fields(qt.name)))
    set_scales(blocks, qt.name, scales)
    return blocks


DEMO_TYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K",
              "Q5_K", "Q6_K", "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S",
              "IQ4_NL", "IQ4_XS"]  # fmt: skip


def write_synthetic_gguf(
    path: str | os.PathLike,
    types: list[str] | None = None,
    rows: int = 16,
    row_len: int = 256,
    seed: int = 0,
) -> None:
    """A small GGUF holding one ``rows x row_len`` tensor of random blocks per type."""
    rng = np.random.default_rng(seed)
    w = GGUFWriter(path)
    w.add("general.architecture", "synthetic")
    w.add("general.name", "ferrollm synthetic blocks")
    w.add("general.file_type", 0, "u32")
    for t in types or DEMO_TYPES:
        qt = quant_type(t)
        n_blocks = rows * row_len // qt.block_elems
        data = random_blocks(qt.name, n_blocks, rng, scale=0.05)
        w.add_tensor(f"synthetic.{qt.name.lower()}.weight", data, qt.name, [row_len, rows])
    w.write()
