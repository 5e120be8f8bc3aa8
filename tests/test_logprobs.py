"""Log-probabilities (completions: llama-cpp-python's shape; chat: OpenAI's), echo with the
prompt's log-probabilities, and the logits_processor / stopping_criteria hooks, on the
embedded model."""

from __future__ import annotations

import numpy as np
import pytest
from ferrollm import Llama, LogitsProcessorList, StoppingCriteriaList, demo_model_path
from ferrollm.generate.decoding import MinTokensLogitsProcessor
from ferrollm.generate.logprobs import log_softmax

PROMPT = "def fibonacci(n):"


@pytest.fixture(scope="module")
def llm():
    return Llama(demo_model_path(), n_ctx=256, seed=1, verbose=False)


@pytest.fixture(scope="module")
def llm_all():
    return Llama(demo_model_path(), n_ctx=256, logits_all=True, verbose=False)


def _reference_logprobs(llm_all: Llama, tokens: list[int]) -> np.ndarray:
    """log-softmax of the model's logits after each of ``tokens``."""
    llm_all.reset()
    llm_all.eval(tokens)
    return np.array([log_softmax(row) for row in llm_all.scores])


def test_completion_logprobs_shape_and_values(llm, llm_all):
    out = llm(PROMPT, max_tokens=6, temperature=0, logprobs=3)
    choice = out["choices"][0]
    lp = choice["logprobs"]
    assert set(lp) == {"tokens", "text_offset", "token_logprobs", "top_logprobs"}
    n = out["usage"]["completion_tokens"]
    assert (
        len(lp["tokens"])
        == len(lp["token_logprobs"])
        == len(lp["top_logprobs"])
        == len(lp["text_offset"])
        == n
    )
    assert "".join(lp["tokens"]) == choice["text"]
    assert lp["text_offset"][0] == len(PROMPT)
    assert all(b - a == len(t) for a, b, t in zip(lp["text_offset"], lp["text_offset"][1:], lp["tokens"]))
    for token, value, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
        assert 1 <= len(top) <= 4 and top[token] == value
        assert value == pytest.approx(max(top.values()))  # greedy: the chosen is the most likely
    # The same greedy run with every row of logits kept: it evaluates all but the last token.
    llm_all(PROMPT, max_tokens=6, temperature=0)
    ids, n_prompt = llm_all.input_ids, len(llm.tokenize(PROMPT.encode()))
    ref = np.array([log_softmax(row) for row in llm_all.scores])
    expected = [ref[i - 1, ids[i]] for i in range(n_prompt, len(ids))]
    assert lp["token_logprobs"][: n - 1] == pytest.approx(expected, abs=1e-4)


def test_echo_gives_prompt_logprobs(llm, llm_all):
    out = llm(PROMPT, max_tokens=4, temperature=0, logprobs=2, echo=True)
    choice = out["choices"][0]
    lp = choice["logprobs"]
    assert choice["text"].startswith(PROMPT)
    prompt = llm.tokenize(PROMPT.encode())
    n_prompt = len(prompt) - 1  # BOS is not reported
    assert len(lp["tokens"]) == n_prompt + out["usage"]["completion_tokens"]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert lp["text_offset"][0] == 0
    ref = _reference_logprobs(llm_all, prompt)
    expected = [ref[i - 1, prompt[i]] for i in range(2, len(prompt))]
    assert lp["token_logprobs"][1:n_prompt] == pytest.approx(expected, abs=1e-4)
    # The generation after the echo is the same as without it.
    assert choice["text"][len(PROMPT) :] == llm(PROMPT, max_tokens=4, temperature=0)["choices"][0]["text"]


def test_streamed_logprobs_equal_the_whole(llm):
    whole = llm(PROMPT, max_tokens=8, temperature=0, logprobs=2)["choices"][0]["logprobs"]
    tokens, values, offsets = [], [], []
    for chunk in llm(PROMPT, max_tokens=8, temperature=0, logprobs=2, stream=True):
        lp = chunk["choices"][0]["logprobs"]
        if lp:
            tokens += lp["tokens"]
            values += lp["token_logprobs"]
            offsets += lp["text_offset"]
    assert tokens == whole["tokens"] and offsets == whole["text_offset"]
    assert values == pytest.approx(whole["token_logprobs"])


def test_chat_logprobs_openai_shape(llm):
    messages = [{"role": "user", "content": "Write a loop"}]
    out = llm.create_chat_completion(messages, max_tokens=5, temperature=0, logprobs=True, top_logprobs=2)
    lp = out["choices"][0]["logprobs"]
    assert set(lp) == {"content", "refusal"}
    assert len(lp["content"]) == out["usage"]["completion_tokens"]
    for entry in lp["content"]:
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
        assert bytes(entry["bytes"]).decode() == entry["token"]
        assert len(entry["top_logprobs"]) == 2
        assert entry["top_logprobs"][0]["logprob"] >= entry["top_logprobs"][1]["logprob"]
    assert llm.create_chat_completion(messages, max_tokens=2)["choices"][0]["logprobs"] is None
    streamed = [
        e
        for c in llm.create_chat_completion(messages, max_tokens=5, temperature=0, logprobs=True, stream=True)
        for e in (c["choices"][0]["logprobs"] or {"content": []})["content"]
    ]
    assert [e["token"] for e in streamed] == [e["token"] for e in lp["content"]]


def test_logits_processor_steers_and_sees_the_history(llm):
    target = llm.tokenize(b"pass", add_bos=False)[0]  # "▁pass": SentencePiece adds the space
    seen = []

    def only_pass(input_ids, scores):
        seen.append(input_ids.copy())
        out = np.full_like(scores, -np.inf)
        out[target] = 0.0
        return out

    out = llm(PROMPT, max_tokens=3, temperature=0.8, logits_processor=LogitsProcessorList([only_pass]))
    assert out["choices"][0]["text"] == " pass pass pass"
    prompt = llm.tokenize(PROMPT.encode())
    assert list(seen[0]) == prompt and list(seen[2]) == prompt + [target, target]


def test_min_tokens_processor_forbids_eos(llm):
    eos_first = LogitsProcessorList([lambda ids, s: np.where(np.arange(len(s)) == llm.token_eos(), 100.0, s)])
    assert (
        llm(PROMPT, max_tokens=4, temperature=0, logits_processor=eos_first)["usage"]["completion_tokens"]
        == 0
    )
    eos_first.insert(1, MinTokensLogitsProcessor(2, llm.token_eos()))
    out = llm(PROMPT, max_tokens=4, temperature=0, logits_processor=eos_first)
    assert out["usage"]["completion_tokens"] == 2 and out["choices"][0]["finish_reason"] == "stop"


def test_stopping_criteria_end_the_generation(llm):
    n_prompt = len(llm.tokenize(PROMPT.encode()))
    calls = []

    def three_tokens(input_ids, logits):
        calls.append(logits.shape)
        return len(input_ids) - n_prompt >= 3

    out = llm(PROMPT, max_tokens=10, temperature=0, stopping_criteria=StoppingCriteriaList([three_tokens]))
    assert out["usage"]["completion_tokens"] == 3
    assert out["choices"][0]["finish_reason"] == "stop"
    assert calls[0] == (llm.n_vocab(),)
    full = llm(PROMPT, max_tokens=3, temperature=0)["choices"][0]["text"]
    assert out["choices"][0]["text"] == full


def test_logprobs_must_not_be_negative(llm):
    with pytest.raises(ValueError, match="logprobs"):
        llm(PROMPT, max_tokens=2, logprobs=-1)
