"""``ferrollm convert`` against llama.cpp's convert_hf_to_gguf.py (the vendored copy, with its
gguf-py, run by the oracle virtualenv's python): every tensor equal bit for bit, every metadata
key and value the same. Marked ``oracle``: python -m pytest -m oracle tests/test_oracle_convert.py"""

from __future__ import annotations

import os

import ferrollm
import numpy as np
import pytest
from support.hf_models import mistral_tokenizer_model, write_model
from support.oracle import LLAMA_CPP, ORACLE_PY, run_oracle

pytestmark = pytest.mark.oracle


def llama_cpp_convert(model_dir, out, outtype) -> None:
    script = os.path.join(LLAMA_CPP, "convert_hf_to_gguf.py")
    if not (os.path.isfile(ORACLE_PY) and os.path.isfile(script)):
        pytest.skip("oracle python or convert_hf_to_gguf.py missing")
    run_oracle([ORACLE_PY, script, str(model_dir), "--outfile", str(out), "--outtype", outtype],
               env={"PYTHONPATH": os.path.join(LLAMA_CPP, "gguf-py")})  # fmt: skip


def assert_same_gguf(ours, theirs):
    a, b = ferrollm.gguf.open(ours), ferrollm.gguf.open(theirs)
    assert a.metadata_types == b.metadata_types
    for key, value in b.metadata.items():
        assert a.metadata[key] == value, key
    assert sorted((t.name, t.shape, t.type) for t in a.tensors) == sorted(
        (t.name, t.shape, t.type) for t in b.tensors
    )
    for t in b.tensors:
        assert np.array_equal(a.tensor_bytes(t.name), b.tensor_bytes(t.name)), t.name


CASES = [
    ("llama-tiny", {"arch": "llama", "dtype": "F32"}, "f16"),
    ("llama-tiny", {"arch": "llama", "dtype": "F16"}, "f32"),
    ("mistral-tiny", {"arch": "mistral", "dtype": "BF16", "shards": 3}, "bf16"),
    ("mistral-tiny", {"arch": "mistral", "dtype": "BF16", "shards": 2}, "q8_0"),
    ("mixtral-tiny", {"arch": "mixtral", "dtype": "F16"}, "f16"),
    ("mixtral-tiny", {"arch": "mixtral", "dtype": "BF16"}, "q8_0"),
]


@pytest.mark.parametrize("name, spec, outtype", CASES)
def test_convert_matches_llama_cpp(tmp_path, name, spec, outtype):
    if mistral_tokenizer_model() is None:
        pytest.skip("mistral-common not installed")
    write_model(
        str(tmp_path / name),
        seed=len(tmp_path.name),
        tokenizer="sentencepiece",
        vocab=32000,
        hidden=64,
        **spec,
    )
    llama_cpp_convert(tmp_path / name, tmp_path / "theirs.gguf", outtype)
    ferrollm.convert(str(tmp_path / name), str(tmp_path / "ours.gguf"), outtype)
    assert_same_gguf(tmp_path / "ours.gguf", tmp_path / "theirs.gguf")


def test_fused_expert_layout_matches_llama_cpp_on_the_classic_one(tmp_path):
    """llama.cpp's converter reads only the classic layout; ours reads the fused one too, and
    writes the same file from it."""
    fused = write_model(str(tmp_path / "fused" / "mixtral-tiny"), arch="mixtral", seed=3, fused=True,
                        tokenizer="sentencepiece", vocab=32000, hidden=64)  # fmt: skip
    classic = {}
    for n, v in fused.items():
        prefix, _, last = n.rpartition("mlp.")
        if last == "experts.gate_up_proj":
            for e in range(v.shape[0]):
                classic[f"{prefix}block_sparse_moe.experts.{e}.w1.weight"] = v[e, : v.shape[1] // 2]
                classic[f"{prefix}block_sparse_moe.experts.{e}.w3.weight"] = v[e, v.shape[1] // 2 :]
        elif last == "experts.down_proj":
            for e in range(v.shape[0]):
                classic[f"{prefix}block_sparse_moe.experts.{e}.w2.weight"] = v[e]
        else:
            classic[n.replace("mlp.gate.weight", "block_sparse_moe.gate.weight")] = v
    write_model(str(tmp_path / "classic" / "mixtral-tiny"), arch="mixtral", tokenizer="sentencepiece", vocab=32000,
                hidden=64, weights=classic)  # fmt: skip
    llama_cpp_convert(tmp_path / "classic" / "mixtral-tiny", tmp_path / "theirs.gguf", "f32")
    ferrollm.convert(str(tmp_path / "fused" / "mixtral-tiny"), str(tmp_path / "ours.gguf"), "f32")
    assert_same_gguf(tmp_path / "ours.gguf", tmp_path / "theirs.gguf")
