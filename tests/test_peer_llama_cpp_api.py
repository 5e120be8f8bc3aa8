"""llama-cpp-python's README examples for JSON mode, JSON schema mode, function calling and
streaming, run as written (the ``Llama`` class is the only change) by ferrollm and by
llama-cpp-python on the embedded model: the results have the same shape. Log-probabilities
equal llama.cpp's.

Run with:  python -m pytest -m peer tests/test_peer_llama_cpp_api.py
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from ferrollm import Llama as FerroLlama
from ferrollm import demo_model_path

pytestmark = pytest.mark.peer
llama_cpp = pytest.importorskip("llama_cpp")

# -- the README's examples, verbatim but for the model path and the class -------------------------


def json_mode(Llama, model_path):
    llm = Llama(model_path=model_path, chat_format="chatml", verbose=False)
    return llm.create_chat_completion(
        messages=[
            {"role": "system", "content": "You are a helpful assistant that outputs in JSON."},
            {"role": "user", "content": "Who won the world series in 2020"},
        ],
        response_format={"type": "json_object"},
        temperature=0.7,
        max_tokens=64,  # not in the README: keeps the demo model's answer short
    )


def json_schema_mode(Llama, model_path):
    llm = Llama(model_path=model_path, chat_format="chatml", verbose=False)
    return llm.create_chat_completion(
        messages=[
            {"role": "system", "content": "You are a helpful assistant that outputs in JSON."},
            {"role": "user", "content": "Who won the world series in 2020"},
        ],
        response_format={
            "type": "json_object",
            "schema": {
                "type": "object",
                "properties": {"team_name": {"type": "string"}},
                "required": ["team_name"],
            },
        },
        temperature=0.7,
        max_tokens=64,
    )


def function_calling(Llama, model_path):
    llm = Llama(model_path=model_path, chat_format="chatml-function-calling", verbose=False)
    return llm.create_chat_completion(
        messages=[
            {
                "role": "system",
                "content": "A chat between a curious user and an artificial intelligence assistant. The assistant "
                "gives helpful, detailed, and polite answers to the user's questions. The assistant calls "
                "functions with appropriate input when necessary",
            },
            {"role": "user", "content": "Extract Jason is 25 years old"},
        ],
        tools=[
            {
                "type": "function",
                "function": {
                    "name": "UserDetail",
                    "parameters": {
                        "type": "object",
                        "title": "UserDetail",
                        "properties": {
                            "name": {"title": "Name", "type": "string", "maxLength": 12},
                            "age": {"title": "Age", "type": "integer"},
                        },
                        "required": ["name", "age"],
                    },
                },
            }
        ],
        tool_choice={"type": "function", "function": {"name": "UserDetail"}},
        max_tokens=64,
    )


def streaming_completion(Llama, model_path):
    llm = Llama(model_path=model_path, verbose=False)
    return list(llm.create_completion("def fibonacci(n):", max_tokens=16, stream=True, temperature=0))


def streaming_chat(Llama, model_path):
    llm = Llama(model_path=model_path, verbose=False)
    return list(
        llm.create_chat_completion(
            messages=[{"role": "user", "content": "Write a function"}],
            stream=True,
            max_tokens=16,
            temperature=0,
        )
    )


def completion_logprobs(Llama, model_path):
    llm = Llama(model_path=model_path, logits_all=True, verbose=False)  # llama-cpp-python needs logits_all
    return llm("def fibonacci(n):", max_tokens=12, temperature=0, logprobs=3, echo=True)


def shape(value):
    """The key structure of a response: dicts by key, lists by the shapes of their items,
    leaves by kind (numbers as one kind)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return sorted({json.dumps(shape(v), sort_keys=True) for v in value})
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    return "number" if isinstance(value, (int, float)) else type(value).__name__


@pytest.fixture(scope="module")
def path():
    return demo_model_path()


@pytest.mark.parametrize("example", [json_mode, json_schema_mode, function_calling])
def test_readme_example_has_llama_cpp_shape(path, example):
    ours, peer = example(FerroLlama, path), example(llama_cpp.Llama, path)
    assert shape(ours) == shape(peer)


def test_json_schema_mode_answers_parse(path):
    out = json_schema_mode(FerroLlama, path)
    if out["choices"][0]["finish_reason"] == "stop":
        assert isinstance(json.loads(out["choices"][0]["message"]["content"])["team_name"], str)


def test_function_call_arguments_parse(path):
    call = function_calling(FerroLlama, path)["choices"][0]["message"]["tool_calls"][0]
    arguments = json.loads(call["function"]["arguments"])
    assert call["function"]["name"] == "UserDetail" and set(arguments) == {"name", "age"}


@pytest.mark.parametrize("example", [streaming_completion, streaming_chat])
def test_streams_have_llama_cpp_shape_and_text(path, example):
    ours, peer = example(FerroLlama, path), example(llama_cpp.Llama, path)
    assert shape(ours[0]) == shape(peer[0]) and shape(ours[-1]) == shape(peer[-1])
    assert shape(ours) == shape(peer)

    def text(chunks):
        return "".join(
            c["choices"][0].get("text") or c["choices"][0].get("delta", {}).get("content") or ""
            for c in chunks
        )

    if example is streaming_completion:  # the same prompt: the same greedy text (chat prompts are chat.py's)
        assert text(ours) == text(peer)


def test_logprobs_equal_llama_cpp(path):
    ours, peer = completion_logprobs(FerroLlama, path), completion_logprobs(llama_cpp.Llama, path)
    a, b = ours["choices"][0]["logprobs"], peer["choices"][0]["logprobs"]
    assert set(a) == set(b)
    assert a["tokens"] == b["tokens"]
    assert a["token_logprobs"][0] is None and b["token_logprobs"][0] is None
    # Every value both report (chosen tokens and alternatives), held as the perplexity tests hold
    # the engines: within 0.5% of each other on average (log(1.005) per token), and each within
    # 2% (the engines' float32 and activation-quantization rounding on single tokens).
    pairs = list(zip(a["token_logprobs"][1:], b["token_logprobs"][1:]))
    for top_a, top_b in zip(a["top_logprobs"][1:], b["top_logprobs"][1:]):
        common = set(top_a) & set(top_b)
        assert common
        pairs += [(top_a[t], top_b[t]) for t in common]
    ours_lp, peer_lp = np.array(pairs, dtype=float).T
    assert np.abs(ours_lp - peer_lp).mean() <= 0.005 * np.abs(peer_lp).mean()
    np.testing.assert_allclose(ours_lp, peer_lp, rtol=0.02, atol=0.005)


def test_bytes_that_are_not_utf8_tokenize_as_llama_cpp_does(path):
    # llama.cpp cuts a SentencePiece text into symbols by each lead byte's UTF-8 length, so an
    # invalid byte takes the next bytes (an escaped space too) into its byte tokens.
    import random

    from llama_cpp import Llama

    peer, ours = Llama(path, verbose=False, n_ctx=64), FerroLlama(path, verbose=False, n_ctx=64)
    rng = random.Random(0)
    alphabet = list(b"ab  c\xc3\xa9\xe2\x82\xac")
    cases = [b"\xff\xfe invalid utf8 \xc3", b"ok \x80\x81 mid", b"\xe2\x82 cut"]
    cases += [bytes(rng.choice([rng.randrange(256), *alphabet]) for _ in range(rng.randrange(1, 12)))
              for _ in range(2000)]  # fmt: skip
    for data in cases:
        for bos in (False, True):
            assert ours.tokenize(data, add_bos=bos) == peer.tokenize(data, add_bos=bos), data
