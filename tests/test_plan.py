"""``ferrollm plan`` (RAM prediction) and the benchmark-model machinery: shapes, quantizer-like
head types, tensors sampled from a block pool in Rust."""

from __future__ import annotations

import numpy as np
import pytest
from ferrollm import _core, cli, gguf
from ferrollm.gguf import GGUFWriter
from ferrollm.gguf.plan import FIXED_OVERHEAD_BYTES, plan
from ferrollm.gguf.synthetic import random_blocks
from ferrollm.gguf.synthetic_model import SHAPES, quantizer_head_types, shape_spec, write_model
from ferrollm.quant import block_types
from support.model_helpers import model_file

SPEC = {"n_vocab": 320, "n_embd": 128, "n_ff": 256, "n_head": 4, "n_head_kv": 2, "n_expert": 4,
        "weight_type": "Q4_0", "n_ctx_train": 256}  # fmt: skip


@pytest.mark.parametrize("kv", [("F16", "F16"), ("Q8_0", "Q8_0"), ("Q4_0", "F16")])
def test_kv_cache_prediction_is_the_engines_allocation(tmp_path_factory, kv):
    path = model_file(tmp_path_factory, **SPEC)
    p = plan(path, n_ctx=192, type_k=kv[0], type_v=kv[1])
    engine = _core.Model(path, n_ctx=192, type_k=kv[0], type_v=kv[1])
    assert p.kv_bytes == engine.kv_cache_bytes
    assert p.file_bytes == (tmp_path_factory.getbasetemp() / path).stat().st_size
    assert p.total_bytes == p.file_bytes + p.kv_bytes + p.compute_bytes + FIXED_OVERHEAD_BYTES


def test_context_is_capped_at_the_trained_one_and_zero_takes_it(tmp_path_factory):
    path = model_file(tmp_path_factory, **SPEC)
    assert plan(path, n_ctx=100_000).n_ctx == 256
    assert plan(path, n_ctx=0).n_ctx == 256
    assert plan(path, n_ctx=4096).kv_bytes == 2 * plan(path, n_ctx=128).kv_bytes


def test_larger_context_and_batch_cost_more(tmp_path_factory):
    path = model_file(tmp_path_factory, **SPEC)
    assert plan(path, n_ctx=256).total_bytes > plan(path, n_ctx=64).total_bytes
    assert plan(path, n_batch=512).compute_bytes > plan(path, n_batch=8).compute_bytes
    assert plan(path, type_k="Q4_0", type_v="Q4_0").kv_bytes < plan(path).kv_bytes


def test_unsupported_kv_type_is_refused(tmp_path_factory):
    with pytest.raises(ValueError, match="KV cache type"):
        plan(model_file(tmp_path_factory, **SPEC), type_k="Q6_K")


def test_cli_plan_reports_parts_and_verdict(tmp_path_factory, capsys):
    path = model_file(tmp_path_factory, **SPEC)
    assert cli.main(["plan", path, "-c", "128", "-ctk", "q8_0"]) == 0
    out = capsys.readouterr().out
    for part in ("weights (memory-mapped file)", "KV cache", "compute buffers", "max RAM required", "fits"):
        assert part in out
    assert "KV Q8_0/F16" in out


def test_quantizer_head_types_follow_llama_cpp():
    assert quantizer_head_types("IQ2_XS") == {"output.weight": "Q5_K", "token_embd.weight": "Q2_K"}
    assert quantizer_head_types("IQ3_XXS") == {"output.weight": "Q5_K", "token_embd.weight": "IQ3_S"}
    assert quantizer_head_types("Q4_0") == {"output.weight": "Q6_K", "token_embd.weight": "Q4_0"}
    assert quantizer_head_types("Q8_0") == {"output.weight": "Q8_0", "token_embd.weight": "Q8_0"}
    assert quantizer_head_types("F16") == {}


def test_benchmark_shapes_are_those_of_the_protocol():
    s = shape_spec("mixtral-shape-4L", "IQ2_XS")
    assert (s.n_layer, s.n_embd, s.n_ff, s.n_head, s.n_head_kv, s.n_expert, s.n_expert_used) == (
        4, 4096, 14336, 32, 8, 8, 2)  # fmt: skip
    assert len(s.tokenizer["tokenizer.ggml.tokens"]) == 32000
    assert SHAPES["mixtral-8x7b"]["n_layer"] == 32
    with pytest.raises(ValueError, match="unknown shape"):
        shape_spec("gpt-5", "Q4_0")


def test_sampled_tensor_holds_only_pool_blocks(tmp_path):
    pool = random_blocks("Q4_K", 5, np.random.default_rng(1))
    w = GGUFWriter(tmp_path / "s.gguf")
    w.add("general.architecture", "test")
    w.add_tensor("t", pool.reshape(-1), "Q4_K", [256, 400], sample_seed=7)
    w.write()
    blocks = gguf.open(tmp_path / "s.gguf").tensor_bytes("t").reshape(400, -1)
    pool_rows = {bytes(b) for b in pool}
    assert {bytes(b) for b in blocks} <= pool_rows
    assert len({bytes(b) for b in blocks}) == 5  # 400 draws reach all 5 pool blocks
    # deterministic in the seed
    w2 = GGUFWriter(tmp_path / "s2.gguf")
    w2.add("general.architecture", "test")
    w2.add_tensor("t", pool.reshape(-1), "Q4_K", [256, 400], sample_seed=7)
    w2.write()
    assert (tmp_path / "s.gguf").read_bytes() == (tmp_path / "s2.gguf").read_bytes()


def test_sampled_tensor_needs_whole_blocks(tmp_path):
    w = GGUFWriter(tmp_path / "bad.gguf")
    w.add_tensor("t", np.zeros(100, np.uint8), "Q4_K", [256, 4], sample_seed=1)
    with pytest.raises(ValueError, match="not whole Q4_K blocks"):
        w.write()
    assert not (tmp_path / "bad.gguf").exists()


def test_pooled_model_runs_and_has_real_quantizer_head_types(tmp_path):
    spec = shape_spec("tiny-moe", "IQ2_XS", pool_blocks=64, n_ctx_train=128)
    write_model(tmp_path / "m.gguf", spec)
    f = gguf.open(tmp_path / "m.gguf")
    types = {t.name: t.type for t in f.tensors}
    assert types["output.weight"] == "Q5_K" and types["token_embd.weight"] == "Q2_K"
    assert types["blk.0.ffn_up_exps.weight"] == "IQ2_XS"
    logits = _core.Model(str(tmp_path / "m.gguf"), n_ctx=64).eval([1, 2, 3, 4, 5])
    assert np.isfinite(logits).all() and logits.shape == (1, 32000)
    assert block_types.quant_type("IQ2_XS").block_elems == 256
