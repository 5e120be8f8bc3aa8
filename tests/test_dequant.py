"""Dequantization of every block type against the `gguf` package's numpy reference, bit for
bit, on random valid blocks (any bits, finite scales drawn by hypothesis); and every kernel tier
(scalar, avx2, ...) against every other.

No type needs a tolerance: the Rust reference orders its float operations as ggml and gguf-py
do (multiply then add/subtract, never fused), and the SIMD kernels keep that order.
"""

from __future__ import annotations

import ferrollm
import numpy as np
import pytest
from ferrollm.gguf.synthetic import n_scale_fields, random_blocks, set_scales
from ferrollm.quant.block_types import TYPES, quant_type
from hypothesis import given, settings
from hypothesis import strategies as st

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType, quants

QUANTIZED = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K",
             "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_NL", "IQ4_XS"]  # fmt: skip
FLOATS = ["F32", "F16", "BF16"]
ALL = FLOATS + QUANTIZED
TIERS = ["scalar", "avx2", "avx512"]


def reference(blocks: np.ndarray, type_name: str) -> np.ndarray:
    """The oracle: gguf-py's numpy dequantization (Q8_K, absent there, is d * q)."""
    if type_name == "Q8_K":
        d = blocks[:, :4].copy().view("<f4")
        return (d * blocks[:, 4:260].view(np.int8).astype(np.float32)).reshape(-1)
    return quants.dequantize(blocks.reshape(-1), GGMLQuantizationType[type_name]).reshape(-1)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    both_nan = np.isnan(a) & np.isnan(b)
    return bool(np.all((a.view(np.uint32) == b.view(np.uint32)) | both_nan))


finite_f16 = st.floats(width=16, allow_nan=False, allow_infinity=False)


@st.composite
def blocks_of(draw, type_name: str) -> np.ndarray:
    qt = quant_type(type_name)
    n_blocks = draw(st.integers(1, 4))
    raw = draw(st.binary(min_size=n_blocks * qt.block_bytes, max_size=n_blocks * qt.block_bytes))
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(n_blocks, qt.block_bytes).copy()
    if type_name not in FLOATS:
        k = n_scale_fields(type_name)
        scales = draw(st.lists(finite_f16, min_size=n_blocks * k, max_size=n_blocks * k))
        set_scales(blocks, type_name, np.array(scales, dtype=np.float32).reshape(n_blocks, k))
    return blocks


def check(type_name: str, blocks: np.ndarray) -> None:
    want = reference(blocks, type_name)
    for tier in TIERS:
        got = ferrollm.dequantize(blocks, type_name, isa=tier)
        assert got.dtype == np.float32 and got.shape == want.shape
        bad = np.flatnonzero(
            ~((got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want)))
        )
        assert bad.size == 0, (
            f"{type_name} [{tier}]: {bad.size} elements differ, first #{bad[0]}: got {got[bad[0]]!r} want {want[bad[0]]!r}"
        )


@pytest.mark.parametrize("type_name", ALL)
def test_matches_gguf_reference(type_name):
    @settings(max_examples=60, deadline=None)
    @given(blocks_of(type_name))
    def run(blocks):
        check(type_name, blocks)

    run()


@pytest.mark.parametrize("type_name", QUANTIZED)
def test_matches_gguf_reference_on_many_blocks(type_name):
    # Enough blocks to take the multi-threaded path (>= 2**18 elements).
    qt = quant_type(type_name)
    n_blocks = (1 << 19) // qt.block_elems
    blocks = random_blocks(type_name, n_blocks, np.random.default_rng(qt.id))
    check(type_name, blocks)


@pytest.mark.parametrize("type_name", ["Q4_K", "IQ2_XS"])
def test_extreme_scales(type_name):
    qt = quant_type(type_name)
    blocks = random_blocks(type_name, 8, np.random.default_rng(1))
    k = n_scale_fields(type_name)
    for s in [0.0, -0.0, 65504.0, -65504.0, 6e-8, -6e-8]:  # zero, f16 max, smallest subnormal
        set_scales(blocks, type_name, np.full((8, k), s))
        check(type_name, blocks)
    assert qt.block_elems == 256


def test_every_dequantizable_type_is_tested():
    assert {t.name for t in TYPES.values() if t.can_dequantize} == set(ALL)


def test_active_kernel_tier_is_reported():
    assert ferrollm.quant.block_types.isa_active() in TIERS
    assert ferrollm.quant.block_types.kernel_isa("Q4_K", "scalar") == "scalar"


def test_wrong_length_is_a_value_error():
    with pytest.raises(ValueError, match="whole number of 18-byte blocks"):
        ferrollm.dequantize(np.zeros(17, np.uint8), "Q4_0")
    with pytest.raises(ValueError, match="unknown tensor type"):
        ferrollm.dequantize(np.zeros(18, np.uint8), "Q4_9")
    with pytest.raises(ferrollm.UnsupportedTypeError, match="TQ1_0"):
        ferrollm.dequantize(np.zeros(54, np.uint8), "TQ1_0")


def test_environment_variable_forces_the_scalar_path():
    import subprocess
    import sys

    code = "import ferrollm; print(ferrollm.quant.block_types.isa_active(), ferrollm.quant.block_types.kernel_isa('Q4_K'))"
    env = {**__import__("os").environ, "FERROLLM_ISA": "scalar"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["scalar", "scalar"]
