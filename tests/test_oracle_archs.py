"""Every architecture against transformers and llama.cpp (issue 21): a tiny random checkpoint per
case written with transformers, converted to an F32 GGUF by llama.cpp's convert_hf_to_gguf.py
(tests/arch_oracle.py, cached), then ferrollm's logits at every position against transformers'
forward pass (cosine >= 0.9999) and against llama.cpp's through llama-cpp-python (>= 0.999, the
same top-1 where llama.cpp's margin is clear); quantized copies and quantized KV caches run with
logits close to the F32 ones. An architecture the engine refuses with "unsupported model
architecture" is an expected failure until it lands.

    python -m pytest -m oracle tests/test_oracle_archs.py

benches/arch_table.py prints the same figures as a table."""

from __future__ import annotations

import numpy as np
import pytest
from arch_oracle import (
    BY_NAME,
    CASES,
    OracleUnavailable,
    artifacts,
    cosines,
    ferrollm_logits,
    llama_cpp_logits,
    top1_agreement,
)

pytestmark = pytest.mark.oracle

VS_TRANSFORMERS = 0.9999
VS_LLAMA_CPP = 0.999
# Weight quantization on these random weights; quantized KV on the F32 file.
VS_F32 = {"Q8_0": 0.999, "Q6_K": 0.999, "Q4_0": 0.98, "Q4_K_M": 0.98, "IQ4_XS": 0.98}
KV_TYPES = {"q8_0": 0.999, "q4_0": 0.98}
NAMES = [c.name for c in CASES]


def _artifacts(name):
    try:
        return artifacts(BY_NAME[name])
    except OracleUnavailable as e:
        pytest.skip(str(e))


def _ours(art, path=None, **kw):
    logits, error = ferrollm_logits(path or art.f32, art.tokens(), **kw)
    if error is not None:
        pytest.xfail(f"engine lacks {art.case.arch}: {error}")
    return logits


@pytest.mark.parametrize("name", NAMES)
def test_matches_transformers(name):
    art = _artifacts(name)
    cos = cosines(_ours(art), art.hf_logits())
    worst = int(np.argmin(cos))
    assert cos.min() >= VS_TRANSFORMERS, f"{name}: cosine {cos.min():.6f} at position {worst} of {len(cos)}"


@pytest.mark.parametrize("name", NAMES)
def test_matches_llama_cpp(name):
    pytest.importorskip("llama_cpp")
    art = _artifacts(name)
    if art.case.llama_cpp_differs:
        pytest.skip(art.case.llama_cpp_differs)
    ours = _ours(art)
    theirs = llama_cpp_logits(art.f32, art.tokens())
    n = art.case.llama_cpp_positions or len(ours)
    cos = cosines(ours[:n], theirs[:n])
    assert cos.min() >= VS_LLAMA_CPP, f"{name}: cosine {cos.min():.6f} at position {int(np.argmin(cos))}"
    agree, clear = top1_agreement(ours[:n], theirs[:n])
    assert agree == clear, (
        f"{name}: top-1 differs at {clear - agree} of {clear} positions with a clear margin"
    )


@pytest.mark.parametrize("type_name", list(VS_F32))
@pytest.mark.parametrize("name", NAMES)
def test_quantized_file_runs(name, type_name):
    art = _artifacts(name)
    f32 = _ours(art)
    q = _ours(art, art.quantized(type_name))
    assert np.isfinite(q).all()
    assert cosines(q, f32).min() >= VS_F32[type_name]


@pytest.mark.parametrize("kv", list(KV_TYPES))
@pytest.mark.parametrize("name", NAMES)
def test_quantized_kv_cache_runs(name, kv):
    art = _artifacts(name)
    f32 = _ours(art)
    q = _ours(art, type_k=kv, type_v=kv)
    assert np.isfinite(q).all()
    assert cosines(q, f32).min() >= KV_TYPES[kv]
