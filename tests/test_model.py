"""The engine's forward pass against the independent float64 numpy reference
(tests/reference_model.py) on synthetic models: dense and MoE (both expert layouts), several
weight types, every KV cache type; plus batching, cache reuse and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from ferrollm import GGUFError, UnsupportedTypeError, _core
from ferrollm.gguf import GGUFWriter
from ferrollm.gguf.synthetic_model import ModelSpec, write_model
from support.model_helpers import ROUTER_MARGIN, cosines, model_file
from support.reference_model import ReferenceModel

TOKENS = [1, 17, 200, 45, 3, 99, 311, 250, 8, 64, 128, 77, 5, 290, 33, 150]

# Weight types with their agreement bound (min cosine over positions) at f16 KV. Float weights
# differ from the f64 reference only by f32 arithmetic and the f16 cache; quantized weights run
# with activations quantized to Q8_0/Q8_K (as llama.cpp does), which costs a little more.
# The IQ1-IQ3 files hold random valid blocks, not quantized Gaussians; their rows meet Q8_K
# activation rounding less kindly (llama.cpp is as far from the f64 reference on them).
WEIGHT_BOUNDS = {"F32": 0.9999, "F16": 0.9999, "Q8_0": 0.999, "Q4_0": 0.999, "Q4_K": 0.999, "IQ4_XS": 0.999,
                 "Q6_K": 0.999, "Q2_K": 0.999, "IQ2_XS": 0.995, "IQ3_S": 0.995, "IQ1_S": 0.995}  # fmt: skip
# KV cache types: bound against the exact reference, and against a reference that rounds its
# K/V rows as the cache does (then only the query's Q8_0 rounding is left).
KV_BOUNDS = {"F16": 0.9999, "Q8_0": 0.999, "Q4_0": 0.94}  # 4-bit K and V: lossy by design
KV_ROUNDED_BOUND = 0.999


def _reliable(ref: ReferenceModel) -> np.ndarray:
    keep = ref.router_margin > ROUTER_MARGIN
    assert keep.mean() >= 0.75, "too few positions with a clear routing decision"
    return keep


def _spec(weight_type: str, moe: bool, layout: str = "merged") -> dict:
    spec = {"weight_type": weight_type, "n_embd": 256, "n_ff": 256, "n_head": 4, "n_head_kv": 2}
    if moe:
        spec.update(n_expert=4, n_expert_used=2, expert_layout=layout)
    return spec


def _engine_logits(path: str, tokens=TOKENS, **kw) -> np.ndarray:
    model = _core.Model(path, n_ctx=64, **kw)
    return model.eval(tokens, logits_all=True)


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
@pytest.mark.parametrize("weight_type", list(WEIGHT_BOUNDS))
def test_engine_matches_reference(tmp_path_factory, weight_type, moe):
    path = model_file(tmp_path_factory, **_spec(weight_type, moe))
    reference = ReferenceModel(path)
    ref = reference.logits(TOKENS)
    got = _engine_logits(path)
    assert got.shape == ref.shape
    keep = _reliable(reference)
    assert cosines(got, ref)[keep].min() >= WEIGHT_BOUNDS[weight_type]


@pytest.mark.parametrize("type_k", list(KV_BOUNDS))
@pytest.mark.parametrize("type_v", list(KV_BOUNDS))
def test_kv_cache_types(tmp_path_factory, type_k, type_v):
    path = model_file(tmp_path_factory, **_spec("F32", moe=True))
    got = _engine_logits(path, type_k=type_k, type_v=type_v)
    exact = ReferenceModel(path)
    ref = exact.logits(TOKENS)
    keep = _reliable(exact)
    assert cosines(got, ref)[keep].min() >= min(KV_BOUNDS[type_k], KV_BOUNDS[type_v])
    rounded = ReferenceModel(path, kv_round=(_cache_rounding(type_k), _cache_rounding(type_v)))
    ref = rounded.logits(TOKENS)
    assert cosines(got, ref)[_reliable(rounded)].min() >= KV_ROUNDED_BOUND


def _cache_rounding(type_name: str):
    """Rounds (n, heads, head_dim) rows as a cache of ``type_name`` stores them (gguf-py)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    if type_name == "F16":
        return lambda x: x.astype(np.float16).astype(np.float64)
    qt = GGMLQuantizationType[type_name]
    return lambda x: dequantize(quantize(x.astype(np.float32).reshape(-1, 32), qt), qt).reshape(x.shape)


def test_both_expert_layouts_agree(tmp_path_factory):
    merged = _engine_logits(model_file(tmp_path_factory, **_spec("Q8_0", True, "merged")))
    split = _engine_logits(model_file(tmp_path_factory, **_spec("Q8_0", True, "split")))
    np.testing.assert_array_equal(merged, split)  # same seed, same weights, same arithmetic


@pytest.mark.parametrize("used", [1, 3, 4])
def test_expert_used_count_override(tmp_path_factory, used):
    path = model_file(tmp_path_factory, **_spec("F32", moe=True))
    reference = ReferenceModel(path, n_expert_used=used)
    ref = reference.logits(TOKENS)
    got = _engine_logits(path, overrides=[("llama.expert_used_count", "int", used)])
    keep = _reliable(reference) if used < 4 else np.ones(len(TOKENS), bool)
    assert cosines(got, ref)[keep].min() >= 0.9999
    default = _engine_logits(path)
    assert not np.allclose(got, default)  # the override changed the routing


def test_tied_embeddings(tmp_path_factory):
    path = model_file(tmp_path_factory, weight_type="Q8_0", tied_embeddings=True, n_embd=128)
    assert cosines(_engine_logits(path), ReferenceModel(path).logits(TOKENS)).min() >= 0.999


@pytest.mark.parametrize("n_batch", [1, 3, 512])
def test_batches_and_token_by_token_agree(tmp_path_factory, n_batch):
    """Prefill in batches of any size, or one token at a time through the cache, gives the same
    logits up to float rounding: batches of 4 or more go through the batched product, whose
    float sums are ordered differently; a last-bit difference can move one activation across a
    Q8 rounding boundary in the next layer, hence a tolerance of a few hundredths, not 1e-6
    (llama.cpp's batched and single-token paths differ the same way)."""
    path = model_file(tmp_path_factory, **_spec("Q4_K", moe=True))
    whole = _core.Model(path, n_ctx=64).eval(TOKENS, logits_all=True)
    model = _core.Model(path, n_ctx=64, n_batch=n_batch)

    def agree(got, want):
        np.testing.assert_allclose(got, want, rtol=0, atol=0.1)
        assert cosines(got, want).min() > 0.9995
        assert (got.argmax(axis=1) == want.argmax(axis=1)).all()

    agree(model.eval(TOKENS, logits_all=True), whole)
    model.truncate(5)
    agree(np.concatenate([model.eval([t]) for t in TOKENS[5:]]), whole[5:])
    assert model.n_past == len(TOKENS)


def test_thread_counts_agree(tmp_path_factory):
    path = model_file(tmp_path_factory, **_spec("Q4_0", moe=True))
    one = _core.Model(path, n_ctx=64, n_threads=1).eval(TOKENS, logits_all=True)
    two = _core.Model(path, n_ctx=64, n_threads=2).eval(TOKENS, logits_all=True)
    np.testing.assert_array_equal(one, two)  # each output element is one task's dot product


# -- bad input ------------------------------------------------------------------------------


def test_context_overflow_is_refused_without_damage(tmp_path_factory):
    path = model_file(tmp_path_factory, **_spec("Q8_0", moe=False))
    model = _core.Model(path, n_ctx=16)
    first = model.eval(TOKENS[:10])
    with pytest.raises(ValueError, match="do not fit in the context"):
        model.eval(TOKENS[:7])
    assert model.n_past == 10  # nothing was written
    model.truncate(9)
    np.testing.assert_allclose(model.eval(TOKENS[9:10]), first, atol=1e-5)


def test_context_beyond_training_is_refused(tmp_path_factory):
    path = model_file(tmp_path_factory, **_spec("Q8_0", moe=False))
    with pytest.raises(ValueError, match="trained context"):
        _core.Model(path, n_ctx=100_000)


def test_bad_token_and_empty_input(tmp_path_factory):
    model = _core.Model(model_file(tmp_path_factory, **_spec("Q8_0", moe=False)), n_ctx=16)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.eval([1, 10**6])
    with pytest.raises(ValueError, match="no tokens"):
        model.eval([])
    assert model.n_past == 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([("llama.no_such_key", "int", 1)], "unknown override key"),
        ([("general.name", "str", "x")], "unknown override key"),
        ([("llama.expert_used_count", "int", 9)], "must be in 1..=4"),
        ([("llama.expert_used_count", "int", 0)], "must be in 1..=4"),
        ([("llama.expert_used_count", "str", "3")], "non-negative integer"),
        ([("llama.expert_used_count", "tuple", 3)], "unknown type"),
    ],
)
def test_bad_overrides(tmp_path_factory, overrides, message):
    path = model_file(tmp_path_factory, **_spec("F32", moe=True))
    with pytest.raises(ValueError, match=message):
        _core.Model(path, overrides=overrides)


def _write_variant(tmp_path, drop: str | None = None, reshape: str | None = None, arch: str = "llama"):
    """A small dense model with one tensor dropped or given a wrong shape, or another arch."""
    src = tmp_path / "src.gguf"
    write_model(src, ModelSpec(n_embd=64, n_ff=64, n_head=2, n_head_kv=1, n_layer=1))
    from ferrollm import gguf

    f = gguf.open(src)
    out = tmp_path / "variant.gguf"
    w = GGUFWriter(out)
    for key, value in f.metadata.items():
        w.add(key, arch if key == "general.architecture" else value, f.metadata_types[key])
    for t in f.tensors:
        if t.name == drop:
            continue
        shape = list(t.shape)
        if t.name == reshape:
            shape = [shape[0], shape[1] // 2]
            data = f.tensor_bytes(t.name)[: t.nbytes // 2]
        else:
            data = f.tensor_bytes(t.name)
        w.add_tensor(t.name, data, t.type, shape)
    w.write()
    return str(out)


def test_missing_tensor(tmp_path):
    with pytest.raises(ValueError, match="lacks tensor 'blk.0.attn_k.weight'"):
        _core.Model(_write_variant(tmp_path, drop="blk.0.attn_k.weight"))


def test_shape_mismatch(tmp_path):
    # The message names the tensor and the metadata keys its expected shape comes from.
    expected = (
        r"'blk.0.ffn_up.weight' has shape \[64, 32\], but the metadata says \[64, 64\] "
        r"\(llama.embedding_length = 64, llama.feed_forward_length = 64\)"
    )
    with pytest.raises(ValueError, match=expected):
        _core.Model(_write_variant(tmp_path, reshape="blk.0.ffn_up.weight"))


def test_unsupported_architecture(tmp_path):
    with pytest.raises(UnsupportedTypeError, match="architecture 'gpt-neox'"):
        _core.Model(_write_variant(tmp_path, arch="gpt-neox"))


def test_unsupported_kv_type(tmp_path_factory):
    path = model_file(tmp_path_factory, **_spec("F32", moe=False))
    with pytest.raises(UnsupportedTypeError, match="KV cache type"):
        _core.Model(path, type_k="q5_1")


def test_not_a_gguf(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 10)
    with pytest.raises(GGUFError):
        _core.Model(bad)
