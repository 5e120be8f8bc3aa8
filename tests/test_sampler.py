"""Sampler: each truncation and penalty does what llama.cpp's does, and seeds reproduce."""

from __future__ import annotations

import numpy as np
import pytest
from ferrollm.generate.sampler import Sampler, SamplingParams
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

logit_arrays = arrays(np.float32, st.integers(2, 50), elements=st.floats(-20, 20, width=32))


@settings(max_examples=200, deadline=None)
@given(logit_arrays)
def test_greedy_is_argmax(logits):
    assert Sampler(SamplingParams(temperature=0)).sample(logits) == int(np.argmax(logits))


@settings(max_examples=200, deadline=None)
@given(logit_arrays, st.integers(1, 10), st.floats(0.05, 1.0), st.floats(0.0, 0.5))
def test_candidates_are_a_valid_truncation(logits, top_k, top_p, min_p):
    s = Sampler(SamplingParams(temperature=0.7, top_k=top_k, top_p=top_p, min_p=min_p))
    ids, probs = s.candidates(logits)
    assert 1 <= len(ids) <= top_k
    assert ids[0] == int(np.argmax(logits))  # the most likely token always survives
    assert np.isclose(probs.sum(), 1.0) and np.all(np.diff(probs) <= 1e-12)
    # Every kept token is at least as likely as every dropped one.
    dropped = np.setdiff1d(np.arange(len(logits)), ids)
    if len(dropped):
        assert logits[ids].min() >= logits[dropped].max()


@settings(max_examples=50, deadline=None)
@given(logit_arrays, st.integers(0, 2**32 - 1))
def test_same_seed_same_tokens(logits, seed):
    p = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    a = [Sampler(p, seed).sample(logits) for _ in range(3)]
    b = [Sampler(p, seed).sample(logits) for _ in range(3)]
    assert a == b


def test_sampling_follows_the_distribution():
    logits = np.log(np.array([0.5, 0.3, 0.2]))
    s = Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0), seed=7)
    counts = np.bincount([s.sample(logits) for _ in range(6000)], minlength=3) / 6000
    np.testing.assert_allclose(counts, [0.5, 0.3, 0.2], atol=0.03)


def test_temperature_sharpens():
    logits = np.log(np.array([0.5, 0.3, 0.2]))
    _, hot = Sampler(SamplingParams(temperature=2.0, top_k=0, top_p=1.0, min_p=0.0)).candidates(logits)
    _, cold = Sampler(SamplingParams(temperature=0.5, top_k=0, top_p=1.0, min_p=0.0)).candidates(logits)
    assert cold[0] > 0.5 > hot[0]


def test_top_p_and_min_p_cut_where_llama_cpp_does():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    ids, _ = Sampler(SamplingParams(top_k=0, top_p=0.75, min_p=0.0)).candidates(logits)
    assert list(ids) == [0, 1]  # 0.5 + 0.3 is the first prefix to reach 0.75
    ids, _ = Sampler(SamplingParams(top_k=0, top_p=1.0, min_p=0.25)).candidates(logits)
    assert list(ids) == [0, 1, 2]  # 0.15 >= 0.25 * 0.5 > 0.05


def test_penalties_and_bias():
    logits = np.array([2.0, -2.0, 1.0, 0.0])
    s = Sampler(
        SamplingParams(repeat_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25, logit_bias={3: 5.0})
    )
    z = s.penalized(logits, history=[0, 0, 1])
    # Positive logits are divided, negative multiplied, then frequency * count and presence.
    np.testing.assert_allclose(z, [2.0 / 2 - 1.0 - 0.25, -4.0 - 0.5 - 0.25, 1.0, 5.0])
    assert Sampler(SamplingParams(temperature=0, logit_bias={1: 100.0})).sample(logits) == 1


def test_penalty_window():
    s = Sampler(SamplingParams(repeat_penalty=2.0, penalty_last_n=1))
    z = s.penalized(np.array([2.0, 2.0]), history=[0, 1])
    np.testing.assert_allclose(z, [2.0, 1.0])  # only the last token is in the window


@pytest.mark.parametrize("bad", [{"top_p": 0.0}, {"top_k": -1}, {"min_p": 2.0}, {"repeat_penalty": 0.0}])
def test_bad_parameters(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)


@settings(max_examples=200, deadline=None)
@given(
    spread=st.floats(100.0, 5000.0),
    temperature=st.floats(0.05, 2.0),
    top_k=st.sampled_from([0, 40]),
    n=st.integers(2, 3000),
)
def test_no_probability_is_subnormal(spread, temperature, top_k, n):
    # Logits spanning thousands of nats (logit biases of -1000, banned tokens): every
    # probability is 0 or a normal float, and they still sum to 1.
    rng = np.random.default_rng(n)
    logits = (rng.random(n) * -spread).astype(np.float32)
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=1.0, min_p=0.0)
    _, probs = Sampler(params).candidates(logits)
    tiny = np.finfo(np.float64).tiny
    assert not ((probs > 0) & (probs < tiny)).any(), probs[(probs > 0) & (probs < tiny)]
    assert abs(probs.sum() - 1.0) < 1e-9
