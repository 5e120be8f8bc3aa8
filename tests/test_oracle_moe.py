"""``ferrollm moe`` against mergekit-moe on the same tiny models and YAML (mergekit's output,
a fused-layout Mixtral directory, read by our converter's checkpoint reader): identical
non-router tensors, router rows equal for ``cheap_embed`` (so the prompts' tokens are equal)
and with cosine >= 0.99 for ``hidden`` (mergekit runs the base in bfloat16 with transformers,
we run it in float32 with our engine). With llama-cpp-python installed, llama.cpp runs our
file with the logits ferrollm computes. Marked ``oracle``:
python -m pytest -m oracle tests/test_oracle_moe.py"""

from __future__ import annotations

import ferrollm
import numpy as np
import pytest
from ferrollm.checkpoints.checkpoint import GGUFCheckpoint, HFCheckpoint
from ferrollm.checkpoints.safetensors_io import bf16_to_f32, f32_to_bf16
from ferrollm.moe import moe
from support.hf_models import mistral_tokenizer_model, write_model
from support.oracle import oracle_tool, run_oracle

pytestmark = pytest.mark.oracle

EXPERTS = {
    "b": ("['def fibonacci(n):', 'import os']", "['Once upon a time']"),
    "c": ("['Once upon a time', ' the cat sat on the mat']", None),
    "d": ("['[INST] hello [/INST]', '3 + 4 = 7']", "['import os']"),
}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    oracle_tool("mergekit-moe")
    root = tmp_path_factory.mktemp("oracle-moe")
    for i, name in enumerate("abcd"):
        write_model(str(root / name), seed=30 + i, tokenizer="bpe")
    if mistral_tokenizer_model():  # Mistral's SentencePiece vocabulary, whole
        for i, name in enumerate("abcd"):
            write_model(str(root / f"spm-{name}"), seed=40 + i, vocab=32000)
    return root


def moe_yaml(mode: str, prefix: str = "", dtype: str = "float32", experts: str = "bcd") -> str:
    lines = [
        f"base_model: ROOT/{prefix}a",
        f"gate_mode: {mode}",
        f"dtype: {dtype}",
        "experts_per_token: 2",
        "experts:",
    ]
    for name in experts:
        pos, neg = EXPERTS[name]
        lines += [f"  - source_model: ROOT/{prefix}{name}", f"    positive_prompts: {pos}"]
        if neg:
            lines.append(f"    negative_prompts: {neg}")
    return "\n".join(lines) + "\n"


def both(root, tmp_path, text: str, outtype: str = "f32"):
    """(ours, mergekit's) tensors under Hugging Face names, and our GGUF's path."""
    cfg = tmp_path / "moe.yml"
    cfg.write_text(text.replace("ROOT", str(root)))
    ours = tmp_path / "ours.gguf"
    moe(str(cfg), str(ours), outtype=outtype)
    run_oracle([oracle_tool("mergekit-moe"), str(cfg), str(tmp_path / "mergekit")])
    a, b = GGUFCheckpoint(ours), HFCheckpoint(tmp_path / "mergekit")
    return {n: a.get(n) for n in a.names()}, {n: b.get(n) for n in b.names()}, ours


def routers(tensors):
    return {n: v for n, v in tensors.items() if n.endswith("block_sparse_moe.gate.weight")}


def assert_same_experts_and_base(ours, theirs):
    assert set(ours) == set(theirs)
    for n in ours:
        if n not in routers(ours):
            np.testing.assert_array_equal(ours[n], theirs[n], err_msg=n)


def cosines(a, b):
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.mark.parametrize("prefix", ["", "spm-"])
def test_cheap_embed_rows_equal(root, tmp_path, prefix):
    if prefix and not (root / "spm-a").exists():
        pytest.skip("mistral-common (Mistral's tokenizer.model) not installed")
    ours, theirs, _ = both(root, tmp_path, moe_yaml("cheap_embed", prefix))
    assert_same_experts_and_base(ours, theirs)
    for n, v in routers(ours).items():
        np.testing.assert_allclose(v, theirs[n], rtol=1e-5, atol=1e-6, err_msg=n)


@pytest.mark.parametrize("prefix", ["", "spm-"])
def test_hidden_rows_agree(root, tmp_path, prefix):
    if prefix and not (root / "spm-a").exists():
        pytest.skip("mistral-common (Mistral's tokenizer.model) not installed")
    ours, theirs, _ = both(root, tmp_path, moe_yaml("hidden", prefix))
    assert_same_experts_and_base(ours, theirs)
    for n, v in routers(ours).items():
        assert cosines(v, theirs[n]).min() >= 0.99, (n, cosines(v, theirs[n]))


def test_bfloat16_output(root, tmp_path):
    """dtype: bfloat16: the same bfloat16 matrices; mergekit also rounds norms and routers to
    bfloat16, ours keep them in float32."""
    ours, theirs, _ = both(root, tmp_path, moe_yaml("cheap_embed", dtype="bfloat16"), outtype="bf16")
    norms = [n for n, v in ours.items() if v.ndim == 1]  # F32 in GGUF, as llama.cpp's converter keeps them
    assert norms and all(not np.array_equal(ours[n], theirs[n]) for n in norms)
    assert_same_experts_and_base(
        {n: bf16_to_f32(f32_to_bf16(v)) if v.ndim == 1 else v for n, v in ours.items()}, theirs
    )
    for n, v in routers(ours).items():
        np.testing.assert_allclose(v, theirs[n], rtol=2**-8, atol=1e-6, err_msg=n)


@pytest.mark.parametrize("outtype", ["f32", "q8_0"])
def test_llama_cpp_runs_our_moe(root, tmp_path, outtype):
    llama_cpp = pytest.importorskip("llama_cpp")
    cfg = tmp_path / "moe.yml"
    cfg.write_text(moe_yaml("hidden").replace("ROOT", str(root)))
    path = str(tmp_path / "ours.gguf")
    moe(str(cfg), path, outtype=outtype)
    ours = ferrollm.Llama(path, n_ctx=64, logits_all=True, verbose=False)
    tokens = ours.tokenize(b"def fibonacci(n): the cat sat on the mat")
    ours.eval(tokens)
    peer = llama_cpp.Llama(model_path=path, n_ctx=64, logits_all=True, verbose=False)
    assert peer.tokenize(b"def fibonacci(n): the cat sat on the mat") == tokens
    peer.eval(tokens)
    a, b = ours.scores[len(tokens) - 1], np.asarray(peer.scores[len(tokens) - 1])
    assert cosines(a, b) >= 0.999, cosines(a, b)
    assert cosines(ours.scores[: len(tokens)], np.asarray(peer.scores[: len(tokens)])).min() >= 0.99
