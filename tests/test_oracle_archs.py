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

import importlib.util

import numpy as np
import pytest
from support.arch_oracle import (
    BY_NAME,
    CASES,
    KV_CODES,
    KV_VS_F32,
    QUANT_VS_F32,
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
# The random checkpoints amplify small errors (sharp attention, random experts: one flipped expert
# choice moves a position's logits far), so quantized runs are judged by their median position and by
# the share of positions that agree: against llama.cpp running the same quantized file (both engines
# compute the same function), and loosely against the F32 file (quantization error, amplified).
SAME_FILE_MEDIAN = 0.999
SAME_FILE_AGREE = (0.99, 0.8)  # at least 80% of positions at cosine >= 0.99 (MoE: flipped experts)
NAMES = [c.name for c in CASES]
ABLATIONS = [(c.name, a) for c in CASES for a in c.ablations]
# An ablated forward pass must sit this far below VS_TRANSFORMERS somewhere, so that an engine
# ignoring the feature fails test_matches_transformers.
ABLATION_MAX = 0.999


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


@pytest.mark.parametrize("name, ablation", ABLATIONS)
def test_each_feature_moves_the_logits(name, ablation):
    """The oracle can fail: switching the case's feature off in transformers (same weights) moves
    the logits well past the tolerance."""
    art = _artifacts(name)
    cos = cosines(art.ablation_logits(ablation), art.hf_logits())
    assert cos.min() < ABLATION_MAX, f"{name} without {ablation}: cosine {cos.min():.6f} everywhere"


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


def _same_function(name, ours, theirs):
    n = BY_NAME[name].llama_cpp_positions or len(ours)
    cos = cosines(ours[:n], theirs[:n])
    assert np.median(cos) >= SAME_FILE_MEDIAN, f"{name}: median cosine {np.median(cos):.5f} against llama.cpp"
    share = (cos >= SAME_FILE_AGREE[0]).mean()
    assert share >= SAME_FILE_AGREE[1], f"{name}: {share:.0%} of positions at cosine >= {SAME_FILE_AGREE[0]}"


@pytest.mark.parametrize("type_name", list(QUANT_VS_F32))
@pytest.mark.parametrize("name", NAMES)
def test_quantized_file_runs(name, type_name):
    art = _artifacts(name)
    f32 = _ours(art)
    path = art.quantized(type_name)
    q = _ours(art, path)
    assert np.isfinite(q).all()
    assert np.median(cosines(q, f32)) >= QUANT_VS_F32[type_name]
    if importlib.util.find_spec("llama_cpp") and not art.case.llama_cpp_differs:
        _same_function(name, q, llama_cpp_logits(path, art.tokens()))


@pytest.mark.parametrize("kv", list(KV_VS_F32))
@pytest.mark.parametrize("name", NAMES)
def test_quantized_kv_cache_runs(name, kv):
    art = _artifacts(name)
    f32 = _ours(art)
    q = _ours(art, type_k=kv, type_v=kv)
    assert np.isfinite(q).all()
    assert np.median(cosines(q, f32)) >= KV_VS_F32[kv]
    if kv == "q8_0" and importlib.util.find_spec("llama_cpp") and not art.case.llama_cpp_differs:
        # llama.cpp quantizes V only with flash attention
        theirs = llama_cpp_logits(
            art.f32, art.tokens(), type_k=KV_CODES[kv], type_v=KV_CODES[kv], flash_attn=True
        )
        _same_function(name, q, theirs)
