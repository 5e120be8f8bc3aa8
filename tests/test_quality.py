"""Perplexity and KL-divergence (ferrollm.quant.quality) with llama.cpp's definitions, on the embedded
demo model and held-out text it never saw (tests/data/heldout.txt)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from ferrollm import demo_model_path, kl_divergence, perplexity, quantize_file
from ferrollm.quant.quality import chunk_tokens, log_softmax, read_logprobs
from ferrollm.text.tokenizer import Tokenizer
from support.model_helpers import model_file

pytest.importorskip("gguf")
from support.reference_model import ReferenceModel

HELDOUT = (Path(__file__).parent / "data" / "heldout.txt").read_text(encoding="utf-8")


def test_chunks_replace_first_token_with_bos():
    assert chunk_tokens(list(range(10, 20)), 4, 1, None) == [[1, 11, 12, 13], [1, 15, 16, 17]]
    assert chunk_tokens(list(range(10, 20)), 4, None, 1) == [[10, 11, 12, 13]]
    with pytest.raises(ValueError, match="at least one chunk of 16"):
        chunk_tokens(list(range(10)), 16, 1, None)
    with pytest.raises(ValueError, match="too small"):
        chunk_tokens(list(range(10)), 2, 1, None)


def test_perplexity_matches_float64_reference():
    """The same chunks scored by an independent float64 forward pass (gguf-py dequantization)."""
    path, n_ctx = demo_model_path(), 32
    r = perplexity(path, HELDOUT[:4000], n_ctx=n_ctx, n_chunks=3)
    ref = ReferenceModel(path)
    from ferrollm import gguf

    with gguf.open(path) as f:
        tokens = Tokenizer(f.metadata).encode(HELDOUT[:4000])
    nll = []
    for chunk in chunk_tokens(tokens, n_ctx, 1, 3):
        logp = log_softmax(ref.logits(chunk))
        nll += [-logp[i, chunk[i + 1]] for i in range(n_ctx // 2, n_ctx - 1)]
    assert r.n_tokens_scored == len(nll) == 3 * (n_ctx - 1 - n_ctx // 2)
    assert r.ppl == pytest.approx(math.exp(np.mean(nll)), rel=0.005)
    sem = np.std(nll, ddof=1) / math.sqrt(len(nll))
    assert r.ppl_err == pytest.approx(r.ppl * sem, rel=0.05)
    assert len(r.chunk_ppl) == 3 and r.chunk_ppl[-1] == pytest.approx(r.ppl)


def test_trained_model_predicts_held_out_code():
    """The demo model is trained: a uniform guess over 32000 tokens scores 32000."""
    r = perplexity(demo_model_path(), HELDOUT, n_ctx=256, n_chunks=4)
    assert r.ppl < 15, r


@pytest.fixture(scope="module")
def base_logprobs(tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "demo_base.logp"
    r = perplexity(demo_model_path(), HELDOUT, n_ctx=128, n_chunks=6, save_logprobs=path)
    return path, r


def test_saved_log_probabilities_round_trip(base_logprobs):
    path, r = base_logprobs
    header, chunks, logp = read_logprobs(path)
    assert header["n_ctx"] == 128 and header["n_chunks"] == 6 and header["n_vocab"] == 32000
    assert chunks.shape == (6, 128) and (chunks[:, 0] == 1).all()
    assert logp.shape == (6, 128 - 1 - 64, 32000)
    # Rows are normalized log-probabilities, and they reproduce the perplexity.
    assert np.allclose(np.exp(logp[0].astype(np.float64)).sum(axis=1), 1.0, atol=5e-3)
    nll = [-logp[c, i, chunks[c, 64 + 1 + i]] for c in range(6) for i in range(logp.shape[1])]
    assert math.exp(np.mean(np.asarray(nll, np.float64))) == pytest.approx(r.ppl, rel=1e-3)


def test_kld_of_a_model_against_itself_is_zero(base_logprobs):
    k = kl_divergence(demo_model_path(), base_logprobs[0])
    assert abs(k.kld_mean) < 1e-4 and k.kld_p99 < 1e-3
    assert k.top1_agreement > 0.99 and abs(k.ln_ppl_ratio) < 1e-3
    assert k.ppl == pytest.approx(base_logprobs[1].ppl, rel=1e-3)


def test_kld_grows_as_bits_shrink(base_logprobs, tmp_path):
    results = {}
    for t in ("Q6_K", "Q4_0", "Q2_K"):
        quantize_file(demo_model_path(), tmp_path / f"{t}.gguf", t, pure=True)
        results[t] = kl_divergence(tmp_path / f"{t}.gguf", base_logprobs[0])
    q6, q4, q2 = results["Q6_K"], results["Q4_0"], results["Q2_K"]
    assert 0 < q6.kld_mean < q4.kld_mean < q2.kld_mean
    assert q6.top1_agreement > q4.top1_agreement > q2.top1_agreement
    assert q6.kld_p99 < q2.kld_p99
    assert q2.ppl > q6.ppl


def test_bad_log_probability_files_are_rejected(base_logprobs, tmp_path):
    data = Path(base_logprobs[0]).read_bytes()
    (tmp_path / "short.logp").write_bytes(data[:-100])
    with pytest.raises(ValueError, match="truncated"):
        kl_divergence(demo_model_path(), tmp_path / "short.logp")
    (tmp_path / "junk.logp").write_bytes(b"GGUF" + data[4:1000])
    with pytest.raises(ValueError, match="not a ferrollm log-probabilities file"):
        kl_divergence(demo_model_path(), tmp_path / "junk.logp")


def test_kld_needs_the_same_vocabulary(base_logprobs, tmp_path_factory):
    other = model_file(tmp_path_factory, n_ctx_train=256)
    with pytest.raises(ValueError, match="vocabulary sizes differ"):
        kl_divergence(other, base_logprobs[0])


def test_text_shorter_than_a_chunk_is_an_error():
    with pytest.raises(ValueError, match="at least one chunk of 512"):
        perplexity(demo_model_path(), "def f(): pass\n", n_ctx=512)
