"""``ferrollm convert`` on tiny numpy-written checkpoints: names and layouts, both Mixtral expert
layouts, sharded BF16, the tokenizers, output types, that ferrollm runs the result, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import ferrollm
import numpy as np
import pytest
from ferrollm.checkpoints.checkpoint import CheckpointError, GGUFCheckpoint
from ferrollm.checkpoints.safetensors_io import f32_to_bf16
from support.hf_models import mistral_tokenizer_model, write_model


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("convert")


def test_llama_names_and_rope_permutation(root, tmp_path):
    w = write_model(str(root / "llama"), seed=1, tokenizer="bpe")
    ferrollm.convert(str(root / "llama"), str(tmp_path / "l.gguf"), "f32")
    f = ferrollm.gguf.open(tmp_path / "l.gguf")
    q = f.dequantize("blk.1.attn_q.weight").reshape(64, 64)
    hf_q = w["model.layers.1.self_attn.q_proj.weight"]
    # Row r of head h, half j, pair i moves to h, i, j: the rotary pairs interleaved.
    expected = hf_q.reshape(4, 2, 8, 64).transpose(0, 2, 1, 3).reshape(64, 64)
    np.testing.assert_array_equal(q, expected)
    k = f.dequantize("blk.0.attn_k.weight").reshape(32, 64)
    np.testing.assert_array_equal(k, w["model.layers.0.self_attn.k_proj.weight"].reshape(2, 2, 8, 64)
                                  .transpose(0, 2, 1, 3).reshape(32, 64))  # fmt: skip
    back = GGUFCheckpoint(tmp_path / "l.gguf")
    assert sorted(back.names()) == sorted(w)
    for n in w:
        np.testing.assert_array_equal(back.get(n), w[n])
    md = f.metadata
    assert md["general.architecture"] == "llama" and md["llama.block_count"] == 2
    assert md["llama.attention.head_count_kv"] == 2 and md["llama.rope.dimension_count"] == 16
    assert md["general.file_type"] == 0 and md["general.name"] == "Llama"


def test_mixtral_fused_layout_is_the_classic_one(root, tmp_path):
    fused = write_model(str(root / "mixtral-fused"), arch="mixtral", seed=2, tokenizer="bpe", fused=True)
    classic = {}
    for n, v in fused.items():
        if n.endswith("mlp.experts.gate_up_proj"):
            p = n.removesuffix("mlp.experts.gate_up_proj")
            for e in range(v.shape[0]):
                classic[f"{p}block_sparse_moe.experts.{e}.w1.weight"] = v[e, :128]
                classic[f"{p}block_sparse_moe.experts.{e}.w3.weight"] = v[e, 128:]
        elif n.endswith("mlp.experts.down_proj"):
            p = n.removesuffix("mlp.experts.down_proj")
            for e in range(v.shape[0]):
                classic[f"{p}block_sparse_moe.experts.{e}.w2.weight"] = v[e]
        else:
            classic[n.replace("mlp.gate.weight", "block_sparse_moe.gate.weight")] = v
    write_model(str(root / "mixtral-classic"), arch="mixtral", tokenizer="bpe", weights=classic)
    ferrollm.convert(str(root / "mixtral-fused"), str(tmp_path / "f.gguf"), "f16")
    ferrollm.convert(str(root / "mixtral-classic"), str(tmp_path / "c.gguf"), "f16")
    a, b = ferrollm.gguf.open(tmp_path / "f.gguf"), ferrollm.gguf.open(tmp_path / "c.gguf")
    assert sorted((t.name, t.shape, t.type) for t in a.tensors) == sorted(
        (t.name, t.shape, t.type) for t in b.tensors
    )
    for t in a.tensors:
        np.testing.assert_array_equal(a.tensor_bytes(t.name), b.tensor_bytes(t.name))
    assert a.tensor("blk.0.ffn_gate_exps.weight").shape == (64, 128, 4)
    assert a.tensor("blk.0.ffn_gate_inp.weight").type == "F32"
    np.testing.assert_array_equal(a.dequantize("blk.1.ffn_up_exps.weight")[2],
                                  classic["model.layers.1.block_sparse_moe.experts.2.w3.weight"].astype(np.float16))  # fmt: skip
    assert a.metadata["llama.expert_count"] == 4 and a.metadata["general.size_label"] == "4x116K"
    llm = ferrollm.Llama(str(tmp_path / "f.gguf"), n_ctx=32, verbose=False)
    llm.eval([1, 2, 3])
    assert np.all(np.isfinite(llm.scores[-1]))


def test_sharded_bf16_converts_exactly(root, tmp_path):
    w = write_model(
        str(root / "mistral-bf16"), arch="mistral", seed=3, tokenizer="bpe", dtype="BF16", shards=3
    )
    types = ferrollm.convert(str(root / "mistral-bf16"), str(tmp_path / "m.gguf"))  # auto: BF16 stays BF16
    assert types["blk.0.attn_v.weight"] == "BF16" and types["blk.0.attn_norm.weight"] == "F32"
    f = ferrollm.gguf.open(tmp_path / "m.gguf")
    np.testing.assert_array_equal(f.tensor_bytes("blk.0.attn_v.weight").view(np.uint16).reshape(32, 64),
                                  f32_to_bf16(w["model.layers.0.self_attn.v_proj.weight"]))  # fmt: skip
    assert f.metadata["general.file_type"] == 32


def test_output_types_and_mixes(root, tmp_path):
    write_model(str(root / "wide"), seed=4, tokenizer="bpe", hidden=256, ff=512, heads=4, kv_heads=4)
    q8 = ferrollm.convert(str(root / "wide"), str(tmp_path / "q8.gguf"), "q8_0")
    assert q8["blk.0.ffn_down.weight"] == "Q8_0" and q8["output_norm.weight"] == "F32"
    mix = ferrollm.convert(str(root / "wide"), str(tmp_path / "q4km.gguf"), "Q4_K_M")
    assert mix["blk.0.attn_q.weight"] == "Q4_K" and mix["output.weight"] == "Q6_K"
    assert ferrollm.gguf.open(tmp_path / "q4km.gguf").metadata["general.file_type"] == 15
    pure = ferrollm.convert(str(root / "wide"), str(tmp_path / "q5.gguf"), "Q5_0")
    assert {t for n, t in pure.items() if "norm" not in n and n != "output.weight"} == {"Q5_0"}
    assert pure["output.weight"] == "Q6_K"  # llama-quantize's rule for the head
    llm = ferrollm.Llama(str(tmp_path / "q4km.gguf"), n_ctx=32, verbose=False)
    llm.eval([1, 2, 3])
    assert np.all(np.isfinite(llm.scores[-1]))
    with pytest.raises(ValueError, match="unknown output type 'Q9_9'"):
        ferrollm.convert(str(root / "wide"), str(tmp_path / "x.gguf"), "Q9_9")
    with pytest.raises(ValueError, match="needs an importance matrix"):
        ferrollm.convert(str(root / "wide"), str(tmp_path / "x.gguf"), "IQ2_XS")
    assert not (tmp_path / "x.gguf").exists()


def test_sentencepiece_vocabulary_matches_sentencepiece(root, tmp_path):
    spm = pytest.importorskip("sentencepiece")
    if mistral_tokenizer_model() is None:
        pytest.skip("mistral-common not installed")
    write_model(str(root / "sp"), seed=5, tokenizer="sentencepiece", vocab=32000, hidden=32, ff=64, layers=1)
    ferrollm.convert(str(root / "sp"), str(tmp_path / "sp.gguf"), "f16")
    md = ferrollm.gguf.open(tmp_path / "sp.gguf").metadata
    sp = spm.SentencePieceProcessor(model_file=mistral_tokenizer_model())
    assert md["tokenizer.ggml.model"] == "llama" and len(md["tokenizer.ggml.tokens"]) == sp.vocab_size()
    for i in (0, 1, 2, 3, 100, 259, 1000, 31999):
        assert md["tokenizer.ggml.tokens"][i] == sp.id_to_piece(i)
        assert md["tokenizer.ggml.scores"][i] == pytest.approx(sp.get_score(i))
        kind = (
            2
            if sp.is_unknown(i)
            else 3
            if sp.is_control(i)
            else 5
            if sp.is_unused(i)
            else 6
            if sp.is_byte(i)
            else 1
        )
        assert md["tokenizer.ggml.token_type"][i] == kind
    assert md["tokenizer.ggml.bos_token_id"] == 1 and md["tokenizer.ggml.add_bos_token"] is True
    assert md["tokenizer.chat_template"].startswith("{% for m in messages %}")
    llm = ferrollm.Llama(str(tmp_path / "sp.gguf"), n_ctx=32, verbose=False)
    assert llm.tokenize(b"Hello world", add_bos=False) == sp.encode("Hello world")


def test_bpe_vocabulary(root, tmp_path):
    write_model(str(root / "bpe"), seed=6, tokenizer="bpe")
    ferrollm.convert(str(root / "bpe"), str(tmp_path / "b.gguf"), "f16")
    md = ferrollm.gguf.open(tmp_path / "b.gguf").metadata
    vocab = json.loads((root / "bpe" / "tokenizer.json").read_text())["model"]["vocab"]
    assert md["tokenizer.ggml.model"] == "gpt2" and len(md["tokenizer.ggml.tokens"]) == 320
    assert all(md["tokenizer.ggml.tokens"][i] == tok for tok, i in vocab.items())
    assert md["tokenizer.ggml.merges"][:2] == ["t h", "th e"]
    assert (
        md["tokenizer.ggml.token_type"][1] == 3 and md["tokenizer.ggml.token_type"][300] == 5
    )  # <s>, padding


def test_errors_and_cli(root, tmp_path):
    write_model(str(root / "cli"), seed=7, tokenizer="bpe")
    cfg = json.loads((root / "cli" / "config.json").read_text())
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "config.json").write_text(json.dumps(dict(cfg, architectures=["GPT2LMHeadModel"])))
    with pytest.raises(CheckpointError, match="GPT2LMHeadModel is not supported"):
        ferrollm.convert(str(tmp_path / "gpt"), str(tmp_path / "x.gguf"))
    with pytest.raises(CheckpointError, match="no config.json"):
        ferrollm.convert(str(tmp_path), str(tmp_path / "x.gguf"))
    r = subprocess.run([sys.executable, "-m", "ferrollm", "convert", str(root / "cli"), str(tmp_path / "c.gguf"),
                        "--outtype", "q8_0", "-q"], capture_output=True, text=True, check=False)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and "Q8_0" in r.stdout
