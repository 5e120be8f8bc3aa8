"""Quantized matrix products against exact arithmetic.

For each weight type, ``x @ W.T`` is computed by the kernels (activations quantized on the fly
to Q8_0 / Q8_K) and compared with:
(1) the exact result of the same arithmetic: the activation quantized by the reference
    quantizer, and the sum of products of dequantized weights and activations in float64. The
    dequantized values are exactly the integer quants times their scales (their products fit
    float32's mantissa), so this float64 sum is the exact integer block sums times the scales;
    the kernels may differ only by float32 accumulation error;
(2) the scalar reference path, from every SIMD tier;
(3) the float64 product with the unquantized activations, within the activation-quantization
    error bound.
From 4 tokens on, the AVX-512 tier runs the batched product (``gemm``: weight tiles unpacked
once for all tokens), so the token counts drawn reach past that.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from ferrollm import _core
from ferrollm.gguf import synthetic
from ferrollm.quant import block_types
from hypothesis import given, settings
from hypothesis import strategies as st

MATMUL_TYPES = [
    "F32",
    "F16",
    "BF16",
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q8_0",
    "IQ4_NL",
    "Q2_K",
    "Q3_K",
    "Q4_K",
    "Q5_K",
    "Q6_K",
    "IQ2_XXS",
    "IQ2_XS",
    "IQ2_S",
    "IQ3_XXS",
    "IQ3_S",
    "IQ1_S",
    "IQ1_M",
    "IQ4_XS",
]
ISAS = [isa for isa in ("scalar", "avx2", "avx512") if isa == "scalar" or _core.dot_isa("Q4_0", isa) == isa]
EPS32 = 2.0**-23


@functools.cache
def pool(n_threads: int):
    return _core.ThreadPool(n_threads)


def exact_activations(x: np.ndarray, act_type: str) -> tuple[np.ndarray, np.ndarray]:
    """The activations as the kernels see them, in float64 (exact), and each element's block
    scale (the quantization step)."""
    if act_type == "F32":
        return x.astype(np.float64), np.zeros(x.shape)
    raw = block_types.quantize(x.reshape(-1), act_type)
    if act_type == "Q8_0":
        blocks = raw.reshape(-1, 34)
        d = blocks[:, :2].copy().view("<f2").astype(np.float64)
        q = blocks[:, 2:].view(np.int8).astype(np.float64)
    else:
        blocks = raw.reshape(-1, 292)
        d = blocks[:, :4].copy().view("<f4").astype(np.float64)
        q = blocks[:, 4:260].view(np.int8).astype(np.float64)
    return (d * q).reshape(x.shape), np.broadcast_to(np.abs(d), q.shape).reshape(x.shape)


def check_product(
    type_name: str, rows: int, n_blocks: int, n_tokens: int, seed: int, scale: float, threads: int
):
    qt = block_types.quant_type(type_name)
    act_type = _core.activation_type(type_name)
    cols = n_blocks * max(qt.block_elems, 256 if act_type == "Q8_K" else 32)
    rng = np.random.default_rng(seed)
    w = synthetic.random_blocks(type_name, rows * cols // qt.block_elems, rng).reshape(-1)
    x = (rng.standard_normal((n_tokens, cols)) * scale).astype(np.float32)
    x[:, rng.integers(0, cols)] *= 50  # an outlier channel, as real activations have

    wf = block_types.dequantize(w, type_name).astype(np.float64).reshape(rows, cols)
    a, step = exact_activations(x, act_type)
    exact = a @ wf.T
    magnitude = np.abs(a) @ np.abs(wf).T
    n_sums = cols // 16 + 16  # float adds per output: the batched product adds per 16
    tol = 8 * n_sums * EPS32 * magnitude + 1e-30

    results = {}
    for isa in ISAS:
        got = _core.matmul(w, type_name, rows, cols, x, isa, pool(threads)).astype(np.float64)
        assert got.shape == (n_tokens, rows)
        bad = np.abs(got - exact) > tol
        assert not bad.any(), (isa, got[bad], exact[bad], tol[bad])  # (1)
        results[isa] = got
    for isa, got in results.items():  # (2)
        assert np.all(np.abs(got - results["scalar"]) <= 2 * tol), isa

    # (3) |x - x_q| <= step * (1/2 + f16 rounding of Q8_0's scale: 127 * 2^-11).
    act_error = step * (0.5 + 127 * 2.0**-11)
    float_exact = x.astype(np.float64) @ wf.T
    bound = act_error @ np.abs(wf).T + tol
    assert np.all(np.abs(results["scalar"] - float_exact) <= bound)


@pytest.mark.parametrize("type_name", MATMUL_TYPES)
def test_matmul_against_exact_arithmetic(type_name):
    @settings(max_examples=12)
    @given(
        rows=st.integers(1, 40),
        n_blocks=st.integers(1, 3),
        n_tokens=st.integers(1, 9),
        seed=st.integers(0, 2**32 - 1),
        scale=st.sampled_from([1e-3, 1.0, 37.0]),
        threads=st.integers(1, 3),
    )
    def run(rows, n_blocks, n_tokens, seed, scale, threads):
        check_product(type_name, rows, n_blocks, n_tokens, seed, scale, threads)

    run()


def test_matvec_at_model_width():
    # A decode-sized product: 4096 columns, rows not a multiple of the thread count.
    for type_name in ("Q4_0", "Q4_K", "IQ4_XS", "IQ2_XS"):
        check_product(type_name, rows=67, n_blocks=16, n_tokens=1, seed=5, scale=1.0, threads=2)


def test_time_matvec_cycles_matrices_and_matches_matmul():
    rng = np.random.default_rng(0)
    w = synthetic.random_blocks("Q4_0", 2 * 8 * 64 // 32, rng).reshape(-1)
    x = rng.standard_normal(64).astype(np.float32)
    seconds, y = _core.time_matvec(w, "Q4_0", 8, 64, x, 3, None, pool(2))
    assert seconds > 0
    # reps=3 over 2 matrices: the last call used the first matrix.
    want = _core.matmul(w[: w.size // 2], "Q4_0", 8, 64, x[None, :], None, pool(2))[0]
    assert np.array_equal(y, want)


def test_bad_shapes_raise():
    w = np.zeros(2 * 18, np.uint8)
    with pytest.raises(ValueError, match="multiple of 32"):
        _core.matmul(w, "Q4_0", 1, 48, np.zeros((1, 48), np.float32))
    with pytest.raises(ValueError, match="takes 36 bytes, got 35"):
        _core.matmul(w[:35], "Q4_0", 1, 64, np.zeros((1, 64), np.float32))
    with pytest.raises(ValueError, match="not whole rows"):
        _core.matmul(w, "Q4_0", 1, 64, np.zeros((1, 32), np.float32))
    with pytest.raises(ValueError, match="no matrix product"):
        _core.matmul(np.zeros(4, np.uint8), "I32", 1, 1, np.zeros((1, 1), np.float32))
    with pytest.raises(ValueError, match="thread count 0"):
        _core.ThreadPool(0)


def test_python_wrapper_accepts_vectors_and_batches():
    rng = np.random.default_rng(1)
    w = block_types.quantize(rng.standard_normal(3 * 256).astype(np.float32), "Q4_K")
    x = rng.standard_normal(256).astype(np.float32)
    y = block_types.matmul(w, "Q4_K", 3, 256, x)
    assert y.shape == (3,)
    # A batch goes through the batched kernels: the same sums, rounded in another order.
    np.testing.assert_allclose(
        block_types.matmul(w, "q4_k", 3, 256, np.stack([x, x]))[1], y, rtol=1e-5, atol=1e-5
    )
