"""Reference quantizers: bit-exact with gguf-py's quantizers where it has one, and Q8_K (the
activation type of the K/IQ dot products) within half a step of its input."""

from __future__ import annotations

import ferrollm
import numpy as np
import pytest
from ferrollm.quant.block_types import dequantize, quantize
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType, quants

# Magnitudes below 1e-30 become 0: a block whose scale is subnormal makes 1/d overflow, where
# ggml and gguf-py cast infinities (undefined); ferrollm writes zeros there instead.
values = st.floats(-1e4, 1e4, width=32).map(lambda v: v if abs(v) > 1e-30 else 0.0)


def blocks_of_values(block: int):
    return st.integers(1, 4).flatmap(lambda n: arrays(np.float32, n * block, elements=values))


@pytest.mark.parametrize("type_name", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"])
def test_matches_gguf_quantizer(type_name):
    @settings(max_examples=200)
    @given(blocks_of_values(32))
    def run(x):
        want = quants.quantize(x.reshape(-1, 32), GGMLQuantizationType[type_name]).reshape(-1)
        got = quantize(x, type_name)
        assert np.array_equal(got, want), (x, got, want)

    run()


@settings(max_examples=200)
@given(blocks_of_values(256))
def test_q8_k_round_trip(x):
    raw = quantize(x, "Q8_K")
    blocks = raw.reshape(-1, 292)
    back = dequantize(raw, "Q8_K").reshape(-1, 256)
    for b, xb, yb in zip(blocks, x.reshape(-1, 256), back):
        d = float(b[:4].copy().view("<f4")[0])
        q = b[4:260].view(np.int8).astype(np.int32)
        assert q.min() >= -127  # the extreme maps to -127; +128 is never produced
        assert np.array_equal(b[260:].copy().view("<i2"), q.reshape(16, 16).sum(axis=1))
        assert np.all(np.abs(yb - xb) <= abs(d) * 0.5 * (1 + 1e-5) + 1e-30)


def test_quantize_rejects_partial_blocks_and_unknown_types():
    with pytest.raises(ValueError, match="whole number of 32-element blocks"):
        quantize(np.zeros(31, np.float32), "Q8_0")
    with pytest.raises(ferrollm.UnsupportedTypeError, match="TQ1_0: no quantizer"):
        quantize(np.zeros(256, np.float32), "TQ1_0")


# K- and IQ4 quantizers: no package has them as an oracle, so their properties are tested.
# RMS error on standard-normal data, as a fraction of its standard deviation: the figures
# llama.cpp's reference quantizers reach (measured here: 0.29, 0.15, 0.071, 0.036, 0.018,
# 0.076, 0.077), with a little room.
K_TYPES_RMSE = {
    "Q2_K": 0.31,
    "Q3_K": 0.16,
    "Q4_K": 0.075,
    "Q5_K": 0.038,
    "Q6_K": 0.019,
    "IQ4_NL": 0.08,
    "IQ4_XS": 0.08,
}


def block_elems(type_name: str) -> int:
    return ferrollm.quant.block_types.quant_type(type_name).block_elems


@pytest.mark.parametrize("type_name", sorted(K_TYPES_RMSE))
def test_k_quantizer_error_on_gaussian_data(type_name):
    x = np.random.default_rng(7).standard_normal(256 * 256).astype(np.float32)
    y = dequantize(quantize(x, type_name), type_name)
    assert np.sqrt(np.mean((x - y) ** 2)) < K_TYPES_RMSE[type_name]


@pytest.mark.parametrize("type_name", sorted(K_TYPES_RMSE))
def test_k_quantizer_properties(type_name):
    n = block_elems(type_name)

    @settings(max_examples=60)
    @given(
        st.integers(1, 3).flatmap(
            # No float32 subnormals: scaling those by 2^power is not exact.
            lambda k: arrays(
                np.float32,
                k * 256,
                elements=st.floats(-100, 100, width=32).map(lambda v: v if abs(v) > 1e-30 else 0.0),
            )
        ),
        st.integers(-6, 6),
    )
    def run(x, power):
        raw = quantize(x, type_name)
        assert raw.nbytes == x.size // n * ferrollm.quant.block_types.quant_type(type_name).block_bytes
        y = dequantize(raw, type_name)
        assert np.all(np.isfinite(y))
        # f16 super-block scales are about max|x| / 4096 (Q6_K, IQ4_XS): below ~0.1 they are
        # subnormal and lose precision, as in ggml; the properties hold for normal scales.
        block_max = np.abs(x).reshape(-1, n).max(axis=1)
        # Never worse than quantizing to all-zeros, block by block (up to the f16 rounding
        # of the scales).
        err = ((x - y).astype(np.float64) ** 2).reshape(-1, n).sum(axis=1)
        energy = (x.astype(np.float64) ** 2).reshape(-1, n).sum(axis=1)
        normal = block_max >= 0.1
        assert np.all(err[normal] <= energy[normal] * 1.01)
        # Every step is exact under scaling by a power of two: the quants are the same and
        # the dequantized values scale exactly (checked where the scales stay normal f16).
        factor = np.float32(2.0**power)
        scaled = dequantize(quantize(x * factor, type_name), type_name).reshape(-1, n)
        wide = block_max * min(1.0, 2.0**power) >= 8
        assert np.array_equal(scaled[wide], y.reshape(-1, n)[wide] * factor)

    run()


@pytest.mark.parametrize("type_name", sorted(K_TYPES_RMSE))
def test_k_quantizer_zero_and_constant_blocks(type_name):
    zeros = np.zeros(512, np.float32)
    assert np.array_equal(dequantize(quantize(zeros, type_name), type_name), zeros)
    ones = np.full(512, 0.5, np.float32)
    y = dequantize(quantize(ones, type_name), type_name)
    assert np.allclose(y, ones, rtol=0.05)


@pytest.mark.parametrize("type_name", sorted(K_TYPES_RMSE))
def test_k_quantizer_is_stable_on_its_own_output(type_name):
    # Values already on a quantization grid come back (almost) unchanged.
    x = np.random.default_rng(3).standard_normal(256 * 16).astype(np.float32)
    y = dequantize(quantize(x, type_name), type_name)
    z = dequantize(quantize(y, type_name), type_name)
    assert np.sqrt(np.mean((z - y) ** 2)) <= np.sqrt(np.mean((y - x) ** 2))
