"""Reference quantizers: bit-exact with gguf-py's quantizers where it has one, and Q8_K (the
activation type of the K/IQ dot products) within half a step of its input."""

from __future__ import annotations

import ferrollm
import numpy as np
import pytest
from ferrollm.quants import dequantize, quantize
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
    with pytest.raises(ferrollm.UnsupportedTypeError, match="IQ2_XS: no quantizer yet"):
        quantize(np.zeros(256, np.float32), "IQ2_XS")
