"""ferrollm.Llama against llama-cpp-python's API: dict shapes, streaming, stops, limits,
overrides, cache reuse and errors, on a synthetic Mixtral-style model with Mistral's real
tokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ferrollm import Llama
from ferrollm.gguf.synthetic_model import ModelSpec, write_model
from ferrollm.session import parse_override

mistral_common = pytest.importorskip("mistral_common")
pytest.importorskip("sentencepiece")
from ferrollm.text.tokenizer import sentencepiece_metadata

MISTRAL_MODEL = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("api") / "mixtral-tiny.gguf"
    spec = ModelSpec(n_vocab=32000, n_embd=64, n_ff=128, n_head=2, n_head_kv=1, n_expert=4, n_expert_used=2,
                     weight_type="Q8_0", n_ctx_train=256, tokenizer=sentencepiece_metadata(str(MISTRAL_MODEL)))  # fmt: skip
    write_model(path, spec)
    return str(path)


@pytest.fixture(scope="module")
def llm(model_path):
    return Llama(model_path, n_ctx=128, seed=3, verbose=False)


def test_completion_shape(llm):
    out = llm("The capital of France is", max_tokens=8, temperature=0)
    assert out["object"] == "text_completion" and out["id"].startswith("cmpl-")
    choice = out["choices"][0]
    assert set(choice) == {"text", "index", "logprobs", "finish_reason"}
    assert choice["finish_reason"] in ("length", "stop")
    usage = out["usage"]
    assert usage["prompt_tokens"] == len(llm.tokenize(b"The capital of France is"))
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["completion_tokens"] <= 8


def test_stream_concatenates_to_the_same_text(llm):
    whole = llm("Once upon a time", max_tokens=12, temperature=0)["choices"][0]["text"]
    chunks = list(llm("Once upon a time", max_tokens=12, temperature=0, stream=True))
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole
    assert chunks[-1]["choices"][0]["finish_reason"] is not None
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


def test_seeded_sampling_reproduces(llm):
    a = llm("Hi", max_tokens=10, temperature=1.0, seed=11)["choices"][0]["text"]
    b = llm("Hi", max_tokens=10, temperature=1.0, seed=11)["choices"][0]["text"]
    assert a == b


def test_cached_prefix_gives_the_same_logits(llm):
    """A prompt sharing a prefix with the previous one reuses the KV cache; logits equal a
    fresh evaluation."""
    llm("Alpha beta gamma delta", max_tokens=1, temperature=0)
    llm.reset()
    llm.eval(llm.tokenize(b"Alpha beta gamma epsilon"))
    fresh = llm.last_logits().copy()
    llm("Alpha beta gamma delta", max_tokens=1, temperature=0)
    llm.session.prefill(llm.tokenize(b"Alpha beta gamma epsilon"))
    np.testing.assert_allclose(llm.last_logits(), fresh, atol=1e-4)


def test_stop_strings_are_cut_and_held_back(llm):
    full = llm("Count:", max_tokens=20, temperature=0)["choices"][0]["text"]
    stop = full[3:6]
    assert stop and stop in full
    out = llm("Count:", max_tokens=20, temperature=0, stop=[stop])
    assert out["choices"][0]["text"] == full[: full.index(stop)]
    assert out["choices"][0]["finish_reason"] == "stop"
    streamed = "".join(
        c["choices"][0]["text"] for c in llm("Count:", max_tokens=20, temperature=0, stop=[stop], stream=True)
    )
    assert streamed == full[: full.index(stop)]


def test_echo(llm):
    out = llm("Echo me", max_tokens=2, temperature=0, echo=True)
    assert out["choices"][0]["text"].startswith("Echo me")


def test_chat_completion_shape_and_stream(llm):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello?"}]
    out = llm.create_chat_completion(messages, max_tokens=6, temperature=0)
    assert out["object"] == "chat.completion" and out["id"].startswith("chatcmpl-")
    msg = out["choices"][0]["message"]
    assert msg["role"] == "assistant" and isinstance(msg["content"], str)
    chunks = list(llm.create_chat_completion(messages, max_tokens=6, temperature=0, stream=True))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == msg["content"]  # byte for byte: the same text, streamed or not
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")


def test_prompt_longer_than_context(model_path):
    small = Llama(model_path, n_ctx=16, verbose=False)
    with pytest.raises(ValueError, match="exceed context window of 16"):
        small("word " * 40, max_tokens=1)
    out = small("hi", max_tokens=0)  # 0 = until the context is full
    assert out["usage"]["total_tokens"] <= 16


def test_tokenize_detokenize(llm):
    tokens = llm.tokenize(b"Hello world")
    assert tokens[0] == llm.token_bos()
    assert llm.detokenize(tokens) == b"Hello world"
    assert llm.tokenize(b"Hello", add_bos=False)[0] != llm.token_bos()
    assert llm.n_vocab() == 32000 and llm.n_ctx() == 128


def test_kv_overrides_and_llama_cpp_arguments(model_path):
    llm = Llama(
        model_path, n_ctx=64, n_gpu_layers=33, kv_overrides={"llama.expert_used_count": 3}, verbose=False
    )
    assert llm.session.engine.config()["n_expert_used"] == 3
    with pytest.raises(ValueError, match="unknown override key"):
        Llama(model_path, kv_overrides={"llama.nonsense": 1}, verbose=False)
    with pytest.raises(TypeError, match="unexpected keyword"):
        Llama(model_path, n_gpu_layer=1, verbose=False)


def test_kv_cache_types_by_ggml_id(model_path):
    llm = Llama(model_path, n_ctx=64, type_k=8, type_v=2, verbose=False)
    cfg = llm.session.engine.config()
    assert (cfg["type_k"], cfg["type_v"]) == ("Q8_0", "Q4_0")


def test_logits_all_keeps_every_row(model_path):
    llm = Llama(model_path, n_ctx=64, logits_all=True, verbose=False)
    tokens = llm.tokenize(b"one two three")
    llm.eval(tokens)
    assert llm.scores.shape == (len(tokens), 32000)


def test_vocab_only(model_path):
    llm = Llama(model_path, vocab_only=True, verbose=False)
    assert llm.detokenize(llm.tokenize(b"just tokens")) == b"just tokens"
    with pytest.raises(RuntimeError, match="vocab_only"):
        llm("x")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("llama.expert_used_count=int:3", ("llama.expert_used_count", 3)), ("a.b=float:0.5", ("a.b", 0.5)),
     ("a=bool:true", ("a", True)), ("a=str:x:y", ("a", "x:y"))],
)  # fmt: skip
def test_parse_override(text, expected):
    assert parse_override(text) == expected


@pytest.mark.parametrize(
    "text", ["llama.expert_used_count=3", "a=int:x", "a=bool:maybe", "a=list:1", "=int:1"]
)
def test_parse_override_rejects(text):
    with pytest.raises(ValueError):
        parse_override(text)


def test_content_parts_other_than_text_are_refused_not_dropped(llm):
    # An image dropped silently would answer a prompt the user did not send.
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "what is this?"}, image]}]
    with pytest.raises(ValueError, match="'image_url' part needs a vision or audio projector"):
        llm.create_chat_completion(messages, max_tokens=2)
    text_only = [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "!"}]}]
    assert llm.create_chat_completion(text_only, max_tokens=2)["choices"][0]["message"]["role"] == "assistant"


def test_a_tool_whose_arguments_are_not_an_object_is_refused(llm):
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "integer"}}}
    with pytest.raises(ValueError, match="must describe an object"):
        llm.create_chat_completion([{"role": "user", "content": "x"}], tools=[tool], tool_choice="required")


def test_bytes_that_are_not_utf8_become_byte_tokens(llm):
    # As llama.cpp with a byte-fallback vocabulary: kept as <0xXX> tokens, not dropped.
    data = b"\xff\xfe invalid utf8 \xc3"
    ids = llm.tokenize(data, add_bos=False)
    pieces = [llm.tokenizer_.tokens[i] for i in ids]
    assert "<0xFF>" in pieces and "<0xFE>" in pieces and pieces[-1] == "<0xC3>", pieces
    # The invalid lead byte 0xFF takes 3 more bytes (0xFE and an escaped space's first two) into
    # its byte tokens, as llama.cpp cuts it (tests/test_peer_llama_cpp_api.py compares).
    assert llm.detokenize(ids) == b" \xff\xfe\xe2\x96\x81invalid utf8 \xc3"
    assert llm.tokenize(b"plain text", add_bos=False) == llm.tokenize("plain text", add_bos=False)
