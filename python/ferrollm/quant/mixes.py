"""The named quantization mixes users know from llama.cpp (Q4_K_M, IQ2_M, IQ3_XS, ...): per
tensor, which type a file of that name gives it.

The rules are llama.cpp's (``llama_tensor_get_type`` for Llama/Mistral/Mixtral-style models):
a default type per mix, more bits for attn_v (small, and shared by the grouped query heads),
for the first, last and every third ffn_down, for the head; 8-expert models get Q8_0 attn_k/v
since they cost little next to the experts. Keeping the same choices means a file named
Q4_K_M here is the file users would get from llama.cpp, so their sizes and quality compare.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# name: (llama_ftype id written as general.file_type, default tensor type)
MIXES: dict[str, tuple[int, str]] = {
    "F32": (0, "F32"), "F16": (1, "F16"), "Q4_0": (2, "Q4_0"), "Q4_1": (3, "Q4_1"), "Q8_0": (7, "Q8_0"),
    "Q5_0": (8, "Q5_0"), "Q5_1": (9, "Q5_1"), "Q2_K": (10, "Q2_K"), "Q3_K_S": (11, "Q3_K"),
    "Q3_K_M": (12, "Q3_K"), "Q3_K_L": (13, "Q3_K"), "Q4_K_S": (14, "Q4_K"), "Q4_K_M": (15, "Q4_K"),
    "Q5_K_S": (16, "Q5_K"), "Q5_K_M": (17, "Q5_K"), "Q6_K": (18, "Q6_K"), "IQ2_XXS": (19, "IQ2_XXS"),
    "IQ2_XS": (20, "IQ2_XS"), "Q2_K_S": (21, "Q2_K"), "IQ3_XS": (22, "IQ3_S"), "IQ3_XXS": (23, "IQ3_XXS"),
    "IQ1_S": (24, "IQ1_S"), "IQ4_NL": (25, "IQ4_NL"), "IQ3_S": (26, "IQ3_S"), "IQ3_M": (27, "IQ3_S"),
    "IQ2_S": (28, "IQ2_XS"), "IQ2_M": (29, "IQ2_S"), "IQ4_XS": (30, "IQ4_XS"), "IQ1_M": (31, "IQ1_M"),
}  # fmt: skip

# llama-quantize's short names.
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}

# Tensor types unusable without an importance matrix: llama.cpp refuses to write them without
# one (except for the token embedding and the head, which no imatrix covers).
NEEDS_IMATRIX = ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS")


def needs_imatrix(mix: str, name: str, tensor_type: str) -> bool:
    if name in ("token_embd.weight", "output.weight"):
        return False
    return tensor_type in NEEDS_IMATRIX or (tensor_type == "Q2_K" and mix == "Q2_K_S")


_LOW_BIT = ("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M")


def mix_name(name: str) -> str:
    key = name.upper()
    key = ALIASES.get(key, key)
    if key not in MIXES:
        raise ValueError(f"unknown quantization type or mix '{name}'; known: {', '.join(MIXES)}")
    return key


@dataclass(frozen=True)
class ModelShape:
    n_layer: int
    n_expert: int
    n_gqa: int  # query heads per KV head
    tied_embeddings: bool


def _more_bits(i: int, n: int) -> bool:
    """The first and last eighth of the layers and every third in between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _layer(name: str) -> int:
    m = re.match(r"blk\.(\d+)\.", name)
    return int(m.group(1)) if m else 0


def tensor_type(mix: str, name: str, shape: ModelShape, has_imatrix: bool) -> str:
    """The type ``mix`` gives the weight matrix ``name`` (a tensor that is quantized at all)."""
    mix = mix_name(mix)
    t = MIXES[mix][1]
    i, n = _layer(name), shape.n_layer
    head = name == "output.weight" or (shape.tied_embeddings and name == "token_embd.weight")
    if head:
        if mix in _LOW_BIT or mix == "IQ3_XXS":
            return "Q5_K"
        return t if t in ("Q8_0", "F16", "F32") else "Q6_K"
    if name == "token_embd.weight":
        if mix in ("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ1_M"):
            return "Q2_K"
        if mix in ("IQ2_S", "IQ2_M", "IQ3_XXS"):
            return "IQ3_S"
        return t
    kind = name.split(".")[2] if name.startswith("blk.") else name
    kind = kind.removesuffix("_exps")
    moe8 = shape.n_expert == 8
    if mix in _LOW_BIT:
        if kind == "attn_v":
            if shape.n_gqa >= 4 or shape.n_expert >= 4:
                return "Q4_K"
            return "IQ3_S" if mix in ("IQ2_S", "IQ2_M") else "Q2_K"
        if moe8 and kind == "attn_k":
            return "Q4_K"
        if kind == "ffn_down" and i < n // 8:
            return "IQ3_S" if mix in ("IQ2_S", "IQ2_M") else "Q2_K"
        if kind == "attn_output":
            if moe8:
                return "Q5_K"
            if mix in ("IQ1_S", "IQ1_M"):
                return "IQ2_XXS"
            if mix in ("IQ2_S", "IQ2_M"):
                return "IQ3_S"
        return t
    if kind == "attn_v":
        if moe8:
            return "Q8_0"
        rules = {
            "Q2_K": "Q4_K" if shape.n_gqa >= 4 else "Q3_K",
            "Q2_K_S": "Q4_K" if shape.n_gqa >= 4 else t,
            "IQ3_XXS": "Q4_K" if shape.n_gqa >= 4 else ("IQ3_XXS" if has_imatrix else "IQ3_S"),
            "IQ3_XS": "Q4_K" if shape.n_gqa >= 4 else t,
            "IQ3_S": "Q4_K" if shape.n_gqa >= 4 else t,
            "IQ3_M": "Q4_K",
            "Q3_K_M": "Q5_K" if i < 2 else "Q4_K",
            "Q3_K_L": "Q5_K",
            "IQ4_NL": "Q5_K" if shape.n_gqa >= 4 else t,
            "IQ4_XS": "Q5_K" if shape.n_gqa >= 4 else t,
            "Q4_K_M": "Q6_K" if _more_bits(i, n) else t,
            "Q5_K_M": "Q6_K" if _more_bits(i, n) else t,
            "Q4_K_S": "Q5_K" if i < 4 else t,
        }
        return rules.get(mix, t)
    if kind == "attn_k":
        if moe8:
            return "Q8_0"
        return {"IQ3_XS": "IQ3_XXS", "IQ3_XXS": "IQ2_S"}.get(mix, t)
    if kind == "attn_q":
        return {"IQ3_XS": "IQ3_XXS", "IQ3_XXS": "IQ2_S"}.get(mix, t)
    if kind == "ffn_down":
        if mix == "Q2_K":
            return "Q3_K"
        if mix == "Q2_K_S":
            return "Q4_K" if i < n // 8 else t
        if mix == "IQ3_XXS" and not has_imatrix:
            return "Q4_K" if i < n // 8 else "Q3_K"
        if mix == "Q3_K_M":
            return "Q5_K" if i < n // 16 else "Q4_K"
        if mix == "IQ3_M" and (i < n // 8 or (moe8 and _more_bits(i, n))):
            return "Q4_K"
        if mix == "Q3_K_L":
            return "Q5_K"
        if mix == "Q4_K_M":
            return "Q6_K" if _more_bits(i, n) else t
        if mix in ("IQ4_NL", "IQ4_XS") and i < n // 8 and not has_imatrix:
            return "Q5_K"
        if mix == "Q5_K_M":
            return "Q6_K" if _more_bits(i, n) else t
        if mix == "Q4_K_S" and i < n // 8:
            return "Q5_K"
        if mix in ("Q4_0", "Q5_0") and has_imatrix and i < n // 8:
            return "Q4_1" if mix == "Q4_0" else "Q5_1"
        return t
    if kind == "attn_output":
        if moe8:
            bumped = ("Q2_K", "IQ3_XS", "IQ3_XXS", "Q3_K_S", "Q3_K_M", "IQ4_NL", "Q4_K_S", "Q4_K_M", "IQ3_S",
                      "IQ3_M", "IQ4_XS")  # fmt: skip
            return "Q5_K" if mix in bumped else t
        return {"Q2_K": "Q3_K", "IQ3_XXS": "IQ3_S", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K", "IQ3_M": "Q4_K"}.get(
            mix, t
        )
    if kind in ("ffn_gate", "ffn_up") and mix == "IQ3_XS" and n // 8 <= i < 7 * n // 8:
        return "IQ3_XXS"
    return t


def fallback_type(t: str, n_per_row: int) -> str:
    """llama.cpp's substitute when rows are not a whole number of 256-element super-blocks."""
    if n_per_row % 256 == 0 or t in ("F32", "F16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL"):
        return t
    if t in ("IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M", "Q2_K", "Q3_K", "IQ4_XS"):
        return "IQ4_NL"
    return {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}.get(t, "Q8_0")
