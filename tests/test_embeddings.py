"""Llama.embed / create_embedding on the embedded demo model: llama-cpp-python's shapes, the
pooling types against the per-token states they pool, normalization, truncation, errors; and
(marker peer) the same vectors as llama.cpp's."""

from __future__ import annotations

import numpy as np
import pytest
from ferrollm import Llama, demo_model_path
from ferrollm.generate.embedding import pooling_type

TEXT = "def add(a, b):\n    return a + b\n"


@pytest.fixture(scope="module")
def llm():
    return Llama(demo_model_path(), n_ctx=256, n_batch=64, embedding=True, verbose=False)


def test_default_pooling_is_none_one_vector_per_token(llm):
    assert llm.pooling_type() == 0  # the demo file has no llama.pooling_type: llama.cpp's NONE
    out = llm.embed(TEXT)
    n_tokens = len(llm.tokenize(TEXT.encode()))
    assert np.array(out).shape == (n_tokens, llm.n_embd())
    assert all(isinstance(v, float) for v in out[0])
    # The last hidden state after the output norm, evaluated from an empty cache.
    engine = llm.session.engine
    engine.truncate(0)
    hidden = engine.hidden_states(llm.tokenize(TEXT.encode()))[-1]
    engine.truncate(0)
    np.testing.assert_array_equal(np.array(out, dtype=np.float32), hidden)


def test_list_input_gives_a_list_and_each_alone(llm):
    both = llm.embed([TEXT, "x = 1"])
    assert len(both) == 2
    np.testing.assert_array_equal(np.array(both[1]), np.array(llm.embed("x = 1")))
    np.testing.assert_array_equal(np.array(both[0]), np.array(llm.embed(TEXT)))


@pytest.mark.parametrize("kind,pick", [(1, lambda h: h.mean(0)), (2, lambda h: h[0]), (3, lambda h: h[-1])])
def test_pooling_types(llm, kind, pick):
    pooled_llm = Llama(demo_model_path(), n_ctx=256, embedding=True, pooling_type=kind, verbose=False)
    per_token = np.array(llm.embed(TEXT), dtype=np.float64)
    pooled = np.array(pooled_llm.embed(TEXT))
    assert pooled.shape == (llm.n_embd(),)
    np.testing.assert_allclose(pooled, pick(per_token), rtol=1e-5, atol=1e-5)
    unit = np.array(pooled_llm.embed(TEXT, normalize=True))
    np.testing.assert_allclose(np.linalg.norm(unit), 1.0, rtol=1e-6)
    np.testing.assert_allclose(unit, pooled / np.linalg.norm(pooled), rtol=1e-5, atol=1e-6)


def test_normalize_per_token(llm):
    out = np.array(llm.embed(TEXT, normalize=True))
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)


def test_create_embedding_shape(llm):
    out = llm.create_embedding(["a", "bb cc"], model="m")
    assert out["object"] == "list" and out["model"] == "m"
    assert [d["index"] for d in out["data"]] == [0, 1]
    assert all(d["object"] == "embedding" for d in out["data"])
    n = len(llm.tokenize(b"a")) + len(llm.tokenize(b"bb cc"))
    assert out["usage"] == {"prompt_tokens": n, "total_tokens": n}
    assert llm.create_embedding("a")["model"] == llm.model_path
    assert len(llm.create_embedding("a")["data"]) == 1


def test_return_count_and_truncation(llm):
    long_text = "x = 1\n" * 100  # over n_batch=64 tokens
    vectors, count = llm.embed(long_text, return_count=True)
    assert len(vectors) == count == 64
    with pytest.raises(ValueError, match="exceed batch size"):
        llm.embed(long_text, truncate=False)


def test_embedding_leaves_the_model_reset_for_completions(llm):
    fresh = Llama(demo_model_path(), n_ctx=256, verbose=False)
    expected = fresh("def fibonacci(n):", max_tokens=12, temperature=0)["choices"][0]["text"]
    llm("class A:", max_tokens=4, temperature=0)
    llm.embed(TEXT)
    assert llm.n_tokens == 0 and llm.session.engine.n_past == 0
    assert llm("def fibonacci(n):", max_tokens=12, temperature=0)["choices"][0]["text"] == expected


def test_errors():
    plain = Llama(demo_model_path(), n_ctx=64, verbose=False)
    with pytest.raises(RuntimeError, match="embedding=True"):
        plain.embed("x")
    with pytest.raises(ValueError, match="rank"):
        Llama(demo_model_path(), n_ctx=64, embedding=True, pooling_type=4, verbose=False)
    with pytest.raises(ValueError, match="pooling_type 7"):
        Llama(demo_model_path(), n_ctx=64, embedding=True, pooling_type=7, verbose=False)


def test_pooling_from_metadata():
    assert pooling_type(-1, {"general.architecture": "bert", "bert.pooling_type": 2}) == 2
    assert pooling_type(None, {"general.architecture": "llama"}) == 0
    assert pooling_type(3, {"general.architecture": "bert", "bert.pooling_type": 2}) == 3
    assert pooling_type("mean", {}) == 1
    with pytest.raises(ValueError, match="not one of"):
        pooling_type("max", {})


@pytest.mark.peer
@pytest.mark.parametrize("kind", [-1, 1, 3])
def test_same_embeddings_as_llama_cpp(kind):
    llama_cpp = pytest.importorskip("llama_cpp")
    peer = llama_cpp.Llama(demo_model_path(), n_ctx=256, embedding=True, pooling_type=kind, verbose=False)
    ours = Llama(demo_model_path(), n_ctx=256, embedding=True, pooling_type=kind, verbose=False)
    texts = [TEXT, "import os\nprint(os.getcwd())"]
    assert ours.pooling_type() == peer.pooling_type()
    a = ours.embed(texts, normalize=True)
    # One text per call: with pooling none, llama-cpp-python 0.3.36 reads the second text of a
    # batch at a wrong offset (it advances by n_tokens floats, not n_tokens * n_embd).
    b = [peer.embed(t, normalize=True) for t in texts]
    for x, y in zip(a, b):
        x, y = np.array(x), np.array(y)
        assert x.shape == y.shape
        cosine = (x * y).sum(-1) / np.linalg.norm(x, axis=-1) / np.linalg.norm(y, axis=-1)
        assert cosine.min() > 0.999, cosine
    assert ours.create_embedding(texts)["usage"] == peer.create_embedding(texts)["usage"]
