"""save_state / load_state and the prompt caches (set_cache with LlamaRAMCache / LlamaDiskCache)
on the embedded demo model: a restored model continues exactly as the original; a state from
another model or cache type is refused; a cached prefix is not evaluated again."""

from __future__ import annotations

import os

import numpy as np
import pytest
from ferrollm import Llama, demo_model_path
from ferrollm.generate.saved_state import LlamaState
from ferrollm.llama_cache import LlamaCache, LlamaDiskCache, LlamaRAMCache
from support.model_helpers import CountingEngine

PROMPT = "def fibonacci(n):"
OTHER = "import os\n\n\nclass Config:\n    def __init__(self, path):"


@pytest.fixture(scope="module")
def llm():
    return Llama(demo_model_path(), n_ctx=256, verbose=False)


def greedy(llm: Llama, n: int) -> list[int]:
    """n greedy tokens from the model's current state (the last logits first)."""
    out = []
    for _ in range(n):
        out.append(int(np.argmax(llm.last_logits())))
        llm.eval(out[-1:])
    return out


def test_restored_model_continues_exactly(llm):
    llm.reset()
    llm.eval(llm.tokenize(PROMPT.encode()))
    greedy(llm, 10)
    state = llm.save_state()
    assert state.n_tokens == llm.n_tokens == len(state.input_ids)
    scores = llm.scores.copy()
    expected = greedy(llm, 20)
    llm(OTHER, max_tokens=8, temperature=0)  # the cache now holds something else
    llm.load_state(state)
    assert llm.input_ids == state.input_ids.tolist() and llm.session.engine.n_past == state.n_tokens
    np.testing.assert_array_equal(llm.scores, scores)
    assert greedy(llm, 20) == expected


def test_state_survives_serialization_and_a_second_instance(llm):
    llm.reset()
    llm.eval(llm.tokenize(PROMPT.encode()))
    state = LlamaState.from_bytes(llm.save_state().to_bytes())
    expected = greedy(llm, 12)
    other = Llama(demo_model_path(), n_ctx=256, verbose=False)
    other.load_state(state)
    assert greedy(other, 12) == expected


def test_seeded_sampling_continues_after_load(llm):
    llm.reset()
    state = llm.save_state()
    a = llm(PROMPT, max_tokens=16, temperature=1.0)["choices"][0]["text"]  # the instance's generator
    llm.load_state(state)
    assert llm(PROMPT, max_tokens=16, temperature=1.0)["choices"][0]["text"] == a


def test_state_of_another_model_is_refused(llm, demo_q4_0):
    other = Llama(demo_q4_0, n_ctx=256, verbose=False)
    other.eval(other.tokenize(PROMPT.encode()))
    with pytest.raises(ValueError, match="saved by another model"):
        llm.load_state(other.save_state())
    q8 = Llama(demo_model_path(), n_ctx=256, type_k="q8_0", verbose=False)
    with pytest.raises(ValueError, match="type_k and type_v"):
        q8.load_state(llm.save_state())
    with pytest.raises(TypeError, match="LlamaState"):
        llm.load_state({"input_ids": []})


def test_state_longer_than_the_context_is_refused(llm):
    llm.reset()
    llm.eval(llm.tokenize(OTHER.encode()))
    small = Llama(demo_model_path(), n_ctx=8, verbose=False)
    with pytest.raises(ValueError, match="more than n_ctx=8"):
        small.load_state(llm.save_state())


def completion_with_spy(llm: Llama, prompt: str) -> tuple[str, int]:
    spy = CountingEngine(llm.session.engine)
    llm.session.engine = spy
    try:
        text = llm(prompt, max_tokens=12, temperature=0)["choices"][0]["text"]
    finally:
        llm.session.engine = spy.inner
    return text, spy.evaluated


@pytest.mark.parametrize("kind", ["ram", "disk"])
def test_prompt_cache_skips_a_cached_prefix(kind, tmp_path):
    llm = Llama(demo_model_path(), n_ctx=256, verbose=False)
    cache = LlamaRAMCache() if kind == "ram" else LlamaDiskCache(cache_dir=str(tmp_path / "cache"))
    llm.set_cache(cache)
    first, n_first = completion_with_spy(llm, OTHER)
    completion_with_spy(llm, PROMPT)  # the model now holds another prefix
    assert llm.tokenize(OTHER.encode()) in cache
    again, n_again = completion_with_spy(llm, OTHER)
    assert again == first
    assert n_again < n_first - len(llm.tokenize(OTHER.encode())) + 2
    # Without a cache the model re-evaluates the prompt.
    llm.set_cache(None)
    completion_with_spy(llm, PROMPT)
    _, n_uncached = completion_with_spy(llm, OTHER)
    assert n_uncached >= n_first - 1  # only the BOS the two prompts share is reused


def test_prompt_cache_evaluates_only_the_new_suffix():
    llm = Llama(demo_model_path(), n_ctx=256, verbose=False)
    llm.set_cache(LlamaRAMCache())
    completion_with_spy(llm, OTHER)
    completion_with_spy(llm, PROMPT)
    longer = OTHER + "\n        self.path = path"
    _, n = completion_with_spy(llm, longer)
    n_new = len(llm.tokenize(longer.encode())) - len(llm.tokenize(OTHER.encode()))
    assert n <= n_new + 1 + 12  # the new prompt tokens (and one re-run) plus the completion


def fake_state(tokens, kv_bytes=100) -> LlamaState:
    ids = np.array(tokens, dtype=np.intc)
    return LlamaState(ids, np.zeros((1, 4), np.float32), len(ids), bytes(kv_bytes), kv_bytes, 0)


def test_ram_cache_longest_prefix_and_eviction():
    cache = LlamaCache(capacity_bytes=250)
    cache[[1, 2, 3]] = fake_state([1, 2, 3])
    cache[[1, 2, 9, 9]] = fake_state([1, 2, 9, 9])
    assert cache[[1, 2, 9, 9, 5]].input_ids.tolist() == [1, 2, 9, 9]
    assert cache[[1, 2, 3, 4]].input_ids.tolist() == [1, 2, 3]  # now the most recently used
    assert [7] not in cache
    with pytest.raises(KeyError):
        cache[[7, 1]]
    cache[[5]] = fake_state([5])  # over 250 bytes: the least recently used goes
    assert list(cache.cache_state) == [(1, 2, 3), (5,)]
    assert cache.cache_size == 2 * (100 + 16)


def test_disk_cache_persists_evicts_and_skips_broken_files(tmp_path):
    d = tmp_path / "c"
    cache = LlamaDiskCache(cache_dir=str(d), capacity_bytes=10**6)
    cache[[1, 2, 3]] = fake_state([1, 2, 3])
    (d / "junk.llamastate.npz").write_bytes(b"not a state")
    reopened = LlamaDiskCache(cache_dir=str(d))
    assert reopened[[1, 2, 3, 4]].input_ids.tolist() == [1, 2, 3]
    assert reopened[[1, 2, 3, 4]].llama_state == bytes(100)
    size = cache.cache_size
    small = LlamaDiskCache(cache_dir=str(d), capacity_bytes=size + 200)
    small[[4, 4]] = fake_state([4, 4], kv_bytes=10)
    names = os.listdir(d)
    assert not any(n.endswith(".partial") for n in names)
    assert [1, 2, 3] not in small and [4, 4] in small  # the older entry went


def test_corrupt_kv_bytes_are_refused(llm):
    llm.reset()
    llm.eval(llm.tokenize(PROMPT.encode()))
    state = llm.save_state()
    state.llama_state = state.llama_state[:-7]
    with pytest.raises(ValueError):
        llm.load_state(state)
