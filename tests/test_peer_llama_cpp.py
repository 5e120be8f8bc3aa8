"""Agreement with llama.cpp itself (through llama-cpp-python, a dev-only peer) on the same
synthetic GGUF files: random small-scale weights, Mistral's real tokenizer. Teacher-forced
logits over 80 positions, dense and Mixtral-style MoE, several weight types, and the MoE with
``llama.expert_used_count`` overridden to 3 (the seed's ``--override-kv``).

Skipped unless llama-cpp-python is installed; run with:  python -m pytest -m peer
(build the peer once: pip wheel llama-cpp-python -w wheels/ ; pip install wheels/llama_cpp_python*.whl)
"""

from __future__ import annotations

import numpy as np
import pytest
from ferrollm import Llama as FerroLlama
from ferrollm.gguf.synthetic_model import ModelSpec, write_model
from support.model_helpers import ROUTER_MARGIN, cosines
from support.reference_model import ReferenceModel

pytestmark = pytest.mark.peer
llama_cpp = pytest.importorskip("llama_cpp")
mistral_common = pytest.importorskip("mistral_common")
pytest.importorskip("sentencepiece")
from ferrollm.text.tokenizer import sentencepiece_metadata
from support.peer import MISTRAL_MODEL, TEXT, peer_logits

MIN_COSINE = 0.999
TOP2_MARGIN = 0.05
MAX_AMBIGUOUS = 0.2  # share of MoE positions allowed a near-tie routing (model_helpers)


@pytest.fixture(scope="module")
def vocab():
    return sentencepiece_metadata(str(MISTRAL_MODEL))


def _model(tmp_path_factory, vocab, weight_type: str, n_expert: int) -> str:
    path = tmp_path_factory.getbasetemp() / f"peer_{weight_type}_{n_expert}.gguf"
    if not path.exists():
        spec = ModelSpec(n_vocab=32000, n_embd=256, n_ff=512, n_head=8, n_head_kv=2, n_layer=2, n_expert=n_expert,
                         n_expert_used=2, weight_type=weight_type, n_ctx_train=512, tokenizer=vocab, seed=5)  # fmt: skip
        write_model(path, spec)
    return str(path)


def _agree(
    ours: np.ndarray, peer: np.ndarray, path: str, tokens: list[int], n_used: int | None = None
) -> None:
    cos = cosines(ours, peer)
    routed = np.ones(len(tokens), bool)
    if "_0.gguf" not in path:  # MoE: find the near-tie routings in the f64 reference
        reference = ReferenceModel(path, n_expert_used=n_used)
        reference.logits(tokens)
        routed = reference.router_margin >= ROUTER_MARGIN
        assert routed.mean() >= 1 - MAX_AMBIGUOUS
        assert cos.min() >= 0.9
    worst = np.where(routed, cos, 1.0)
    assert worst.min() >= MIN_COSINE, f"min cosine {worst.min():.6f} at position {worst.argmin()}"
    top2 = np.sort(peer, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0] > TOP2_MARGIN) & routed
    assert clear.sum() >= len(peer) // 2
    np.testing.assert_array_equal(ours.argmax(1)[clear], peer.argmax(1)[clear])


def test_tokenizer_matches_llama_cpp(tmp_path_factory, vocab):
    path = _model(tmp_path_factory, vocab, "Q8_0", 0)
    peer = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
    ours = FerroLlama(path, vocab_only=True, verbose=False)
    for text in [TEXT, " two  spaces", "emoji 🦙\n\ttab", "<s>[INST] hi [/INST]", "数字 123", ""]:
        b = text.encode()
        assert ours.tokenize(b) == peer.tokenize(b)
        assert ours.tokenize(b, special=True) == peer.tokenize(b, special=True)
        assert ours.detokenize(ours.tokenize(b)) == peer.detokenize(peer.tokenize(b))


@pytest.mark.parametrize("n_expert", [0, 8], ids=["dense", "moe"])
@pytest.mark.parametrize("weight_type", ["F16", "Q8_0", "Q4_0", "Q4_K", "Q6_K", "IQ4_XS"])
def test_logits_match_llama_cpp(tmp_path_factory, vocab, weight_type, n_expert):
    path = _model(tmp_path_factory, vocab, weight_type, n_expert)
    ours_llm = FerroLlama(path, n_ctx=256, logits_all=True, verbose=False)
    tokens = ours_llm.tokenize(TEXT.encode())
    assert len(tokens) >= 64
    ours_llm.eval(tokens)
    _agree(ours_llm.scores, peer_logits(path, tokens), path, tokens)


@pytest.mark.parametrize("weight_type", ["F16", "Q4_K"])
def test_expert_used_count_override_matches_llama_cpp(tmp_path_factory, vocab, weight_type):
    path = _model(tmp_path_factory, vocab, weight_type, 8)
    overrides = {"llama.expert_used_count": 3}
    ours_llm = FerroLlama(path, n_ctx=256, logits_all=True, kv_overrides=overrides, verbose=False)
    tokens = ours_llm.tokenize(TEXT.encode())
    ours_llm.eval(tokens)
    default = FerroLlama(path, n_ctx=256, logits_all=True, verbose=False)
    default.eval(tokens)
    assert not np.allclose(ours_llm.scores, default.scores)
    _agree(ours_llm.scores, peer_logits(path, tokens, overrides), path, tokens, 3)
