"""The sliding-window layers' KV cache: a ring of the window and a batch, not the context
(rust/model/kv_cache.rs). Gemma 3's pattern (5 sliding layers, then a global one) with a
12-position window, a 256-position context and 8-token batches: the rings hold 76 positions.
Decoding through the ring gives the bits the full cache gives; cutting the cache back within
the ring continues exactly, further back starts the sequence over; saved states hold the
sliding layers' last positions and load into caches of other ring sizes."""

from __future__ import annotations

import numpy as np
import pytest
from ferrollm import Llama, _core
from ferrollm.gguf.plan import plan
from ferrollm.gguf.synthetic_model import ModelSpec, write_model
from hypothesis import event, given, settings
from hypothesis import strategies as st
from support.model_helpers import cosines
from support.reference_model import ReferenceModel

WINDOW, N_CTX, N_BATCH = 12, 256, 8
RING = WINDOW + 64  # the window and the rings' smallest margin (n_batch is below it)
TOKENS = [int(t) for t in np.random.default_rng(5).integers(3, 320, 200)]


def gemma3_file(tmp_path_factory, window: int, width: int, heads: int) -> str:
    """A synthetic Gemma 3 (5 sliding layers, then a global one) with this window."""
    out = tmp_path_factory.mktemp("swa") / "gemma3.gguf"
    spec = ModelSpec(arch="gemma3", n_embd=width, n_ff=width, n_head=heads, n_head_kv=heads // 2, n_layer=6,
                     tied_embeddings=True, extra_metadata={"gemma3.attention.sliding_window": window})  # fmt: skip
    write_model(out, spec)
    return str(out)


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    return gemma3_file(tmp_path_factory, WINDOW, 256, 4)


def ring_model(path, **kw):
    return _core.Model(path, n_ctx=N_CTX, n_batch=N_BATCH, **kw)


def full_model(path):
    """n_batch past the context: the rings would be as long as the context, so none is made."""
    return _core.Model(path, n_ctx=N_CTX, n_batch=N_CTX)


def stepped(model, tokens) -> np.ndarray:
    return np.concatenate([model.eval([t]) for t in tokens])


def test_sliding_layers_hold_a_ring(path):
    assert _core.kv_layer_positions(path, N_CTX, N_BATCH) == [RING] * 5 + [N_CTX]
    assert _core.kv_layer_positions(path, N_CTX, N_CTX) == [N_CTX] * 6
    ring, full = ring_model(path), full_model(path)
    assert ring.kv_cache_bytes * 6 * N_CTX == full.kv_cache_bytes * (5 * RING + N_CTX)
    planned = plan(path, n_ctx=N_CTX, n_batch=N_BATCH)
    assert planned.kv_bytes == ring.kv_cache_bytes


def test_the_ring_gives_the_full_caches_bits(path):
    """200 positions through rings of 76: every step's logits equal the full cache's."""
    assert np.array_equal(stepped(ring_model(path), TOKENS), stepped(full_model(path), TOKENS))


def test_prefill_through_the_ring_matches_the_reference(path):
    got = ring_model(path).eval(TOKENS, logits_all=True)  # 25 batches of 8
    ref = ReferenceModel(path)
    assert cosines(got, ref.logits(TOKENS)).min() >= 0.9999


def test_cutting_back_within_the_ring_continues_exactly(path):
    model = ring_model(path)
    want = stepped(model, TOKENS)
    assert model.truncate(190) == 190  # the window before 190 is still in the rings
    assert np.array_equal(stepped(model, TOKENS[190:]), want[190:])
    assert model.truncate(100) == 0 and model.n_past == 0  # overwritten: the sequence starts over
    assert np.array_equal(stepped(model, TOKENS[:20]), want[:20])


def test_saved_state_holds_the_recent_positions_and_loads_into_another_ring(path):
    model = ring_model(path)
    want = stepped(model, TOKENS)
    model.truncate(180)
    state = model.save_kv()
    # Per position and layer: K and V of 2 heads of 64 in f16. The global layer saves all 180
    # positions; the sliding ones what their rings still hold before 180: 76 - (200 - 180).
    row, header = 2 * 2 * 64 * 2, 8 + 6 * 4 + 2 * 8
    assert len(state) == header + (180 + 5 * (RING - 20)) * row
    other = _core.Model(path, n_ctx=N_CTX, n_batch=100)  # rings of 112
    other.load_kv(state)
    assert other.n_past == 180
    assert np.array_equal(stepped(other, TOKENS[180:]), want[180:])
    assert other.truncate(170) == 170  # the state kept more than the window
    assert np.array_equal(stepped(other, TOKENS[170:]), want[170:])


def test_a_state_without_the_window_is_refused(path):
    model = ring_model(path)
    stepped(model, TOKENS[:100])
    state = bytearray(model.save_kv())
    header = 8 + 6 * 4
    state[header + 8 : header + 16] = (4).to_bytes(8, "little")  # "holds 4 recent positions"
    with pytest.raises(ValueError, match="sliding-window layers hold 4 of 100"):
        ring_model(path).load_kv(bytes(state))


def test_a_pass_longer_than_the_rings_margin_is_refused(path):
    model = _core.Model(path, n_ctx=N_CTX, n_batch=N_BATCH)
    with pytest.raises(ValueError, match="sliding-window"):
        model.embeddings(TOKENS[:100])  # one pass of 100 rows: more than the rings hold
    assert model.n_past == 0


def test_llama_reuses_a_prefix_only_while_the_rings_hold_it(path):
    """A prompt sharing a long prefix with the cache: kept where the rings still hold the window
    before it, evaluated again otherwise; the logits equal a fresh model's either way."""
    llm = Llama(path, n_ctx=N_CTX, n_batch=N_BATCH, verbose=False)
    fresh = Llama(path, n_ctx=N_CTX, n_batch=N_BATCH, verbose=False)
    llm.eval(TOKENS[:150])
    for prompt in (TOKENS[:148] + [7, 8], TOKENS[:40] + [9]):
        llm.session.prefill(prompt)
        fresh.reset()
        fresh.session.prefill(prompt)
        assert llm.input_ids == prompt
        np.testing.assert_allclose(llm.last_logits(), fresh.last_logits(), rtol=1e-4, atol=1e-4)


# -- random sequences of evaluation, cutting back and state round trips --------------------------

SMALL_WINDOW, SMALL_CTX = 6, 128  # rings of 6 + 64 = 70 positions, well inside the context


@pytest.fixture(scope="module")
def small_path(tmp_path_factory):
    return gemma3_file(tmp_path_factory, SMALL_WINDOW, 64, 2)


operations = st.lists(
    st.one_of(
        st.tuples(st.just("eval"), st.integers(1, N_BATCH)),
        st.tuples(st.just("eval"), st.just(80)),  # ten passes: past the rings
        st.tuples(st.just("cut"), st.floats(0, 1)),
        st.tuples(st.just("reload"), st.just(0)),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=25, deadline=None)
@given(ops=operations, seed=st.integers(0, 2**16))
def test_any_sequence_of_steps_matches_the_full_cache(small_path, ops, seed):
    """Through any sequence of passes, cuts and saved-state round trips, the ring model's
    logits equal the full cache's bit for bit, and a cut keeps its positions exactly when the
    rings still hold the window before it (a model of the rings kept here says which)."""
    ring = _core.Model(small_path, n_ctx=SMALL_CTX, n_batch=N_BATCH)
    full = _core.Model(small_path, n_ctx=SMALL_CTX, n_batch=SMALL_CTX)
    held = SMALL_WINDOW + 64
    rng = np.random.default_rng(seed)
    oldest = 0  # the first position every ring still holds
    for op, arg in ops:
        if op == "eval":
            k = min(arg, SMALL_CTX - ring.n_past)
            if k == 0:
                continue
            tokens = [int(t) for t in rng.integers(3, 300, k)]
            assert np.array_equal(ring.eval(tokens, logits_all=True), full.eval(tokens, logits_all=True))
            oldest = max(oldest, ring.n_past - held)
        elif op == "cut":
            n = int(arg * ring.n_past)
            want = n if max(n - SMALL_WINDOW, 0) >= oldest else 0
            assert ring.truncate(n) == want
            full.truncate(want)
            event("a cut the rings could not keep" if want < n else "a cut kept")
            if want == 0:
                oldest = 0
        else:
            state = ring.save_kv()
            ring.load_kv(state)
            n = ring.n_past
            recent = int.from_bytes(state[8 + 6 * 4 + 8 : 8 + 6 * 4 + 16], "little")
            oldest = n - recent if n else 0
        assert ring.n_past == full.n_past
