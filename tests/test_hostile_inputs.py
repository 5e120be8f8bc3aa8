"""Hostile files and API misuse through the Python layer: every bad input becomes a clear
exception (never a crash), rejection stays small in memory, and the model stays consistent
after errors, interruptions and concurrent calls. (The Rust parser and kernels are fuzzed with
cargo fuzz: see fuzz/.)"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from ferrollm import GGUFError, Llama, _core, demo_model_path, gguf
from ferrollm.gguf.synthetic_model import ModelSpec, write_model
from ferrollm.quant import block_types
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SPEC = ModelSpec(n_vocab=260, n_embd=32, n_ff=64, n_layer=1, n_head=4, n_head_kv=2, n_expert=2,
                 n_expert_used=1, weight_type="Q8_0", n_ctx_train=32)  # fmt: skip


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> bytes:
    path = tmp_path_factory.getbasetemp() / "hostile_base.gguf"
    write_model(path, SPEC)
    return path.read_bytes()


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**9), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10**9), st.just(0)),
    st.tuples(
        st.just("u64"), st.integers(0, 10**9), st.sampled_from([0, 1, 2**31, 2**32 - 1, 2**63, 2**64 - 1])
    ),
    st.tuples(st.just("insert"), st.integers(0, 10**9), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10**9), st.integers(1, 64)),
)


def mutate(data: bytes, ops) -> bytes:
    b = bytearray(data)
    for op, where, arg in ops:
        if not b:
            break
        i = where % len(b)
        if op == "flip":
            b[i] ^= arg
        elif op == "truncate":
            del b[i:]
        elif op == "u64":
            b[i : i + 8] = arg.to_bytes(8, "little")
        elif op == "insert":
            b[i:i] = bytes([arg])
        else:
            del b[i : i + arg]
    return bytes(b)


def check_mutated_file(small_model: bytes, tmp_path: Path, ops) -> None:
    """Loader and engine on a mutated real model: a GGUFError/ValueError, or a model that
    evaluates (or refuses to) with a clear error."""
    path = tmp_path / "mutated.gguf"
    path.write_bytes(mutate(small_model, ops))
    try:
        with gguf.open(path) as f:
            for t in f.tensors:
                f.tensor_bytes(t.name)
        llm = Llama(str(path), n_ctx=8, n_threads=1, verbose=False)
    except (GGUFError, ValueError):
        return  # GGUFError is a ValueError; the tokenizer and config raise ValueError subclasses
    try:
        llm.eval([1, 5, 7])
    except ValueError as e:
        assert str(e)
    assert llm.n_tokens in (0, 3)


SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.function_scoped_fixture]}


@settings(max_examples=300, **SETTINGS)
@given(ops=st.lists(mutation, min_size=1, max_size=4))
def test_mutated_model_files_fail_cleanly(small_model, tmp_path, ops):
    check_mutated_file(small_model, tmp_path, ops)


@pytest.mark.slow
@settings(max_examples=5_000, **SETTINGS)
@given(ops=st.lists(mutation, min_size=1, max_size=6))
def test_mutated_model_files_fail_cleanly_long(small_model, tmp_path, ops):
    check_mutated_file(small_model, tmp_path, ops)


def _rss_after_opening(path: Path) -> tuple[int, int, str]:
    """(peak RSS in KiB before, after, error) of a fresh interpreter opening ``path``."""
    code = textwrap.dedent(f"""
        import resource, ferrollm
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            ferrollm.gguf.open({str(path)!r})
            err = "accepted"
        except ferrollm.GGUFError as e:
            err = str(e)
        print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, err, sep="|")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    before, after, err = out.strip().split("|", 2)
    return int(before), int(after), err


def _header(n_tensors: int, n_kv: int) -> bytes:
    return b"GGUF" + (3).to_bytes(4, "little") + n_tensors.to_bytes(8, "little") + n_kv.to_bytes(8, "little")


def _string(s: bytes, length: int | None = None) -> bytes:
    return (len(s) if length is None else length).to_bytes(8, "little") + s


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("billions of tensors", _header(2**40, 0) + b"\0" * 64, "tensor count"),
        ("billions of keys", _header(0, 2**40) + b"\0" * 64, "metadata count"),
        ("absurd string", _header(0, 1) + _string(b"k") + (8).to_bytes(4, "little") + _string(b"x", 2**60),
         "string"),
        ("absurd array", _header(0, 1) + _string(b"k") + (9).to_bytes(4, "little") + (4).to_bytes(4, "little")
         + (2**50).to_bytes(8, "little") + b"\0" * 64, "array"),
    ],
)  # fmt: skip
def test_rejection_does_not_allocate_by_header_fields(tmp_path, name, data, message):
    path = tmp_path / "lying.gguf"
    path.write_bytes(data)
    before, after, err = _rss_after_opening(path)
    assert message in err, err
    assert after - before < 20 * 1024, f"{name}: peak RSS grew by {after - before} KiB"


def _model_with_nan_scale(tmp_path) -> str:
    path = tmp_path / "nan.gguf"
    write_model(path, SPEC)
    with gguf.open(path) as f:
        info = f.tensor("blk.0.attn_q.weight")
        where = f.data_offset + info.offset  # Q8_0 block: f16 scale first
    data = bytearray(path.read_bytes())
    data[where : where + 2] = np.float16(np.nan).tobytes()
    path.write_bytes(bytes(data))
    return str(path)


def test_nan_scales_are_dequantized_without_crash_and_refused_by_the_engine(tmp_path):
    path = _model_with_nan_scale(tmp_path)
    with gguf.open(path) as f:
        assert np.isnan(f.dequantize("blk.0.attn_q.weight")[0]).all()
    llm = Llama(path, n_ctx=16, verbose=False)
    with pytest.raises(ValueError, match="non-finite .*NaN or Inf"):
        llm.eval([1, 5, 7])
    assert llm.n_tokens == 0 and llm.session.engine.n_past == 0  # nothing half-kept


def test_check_tensors_refuses_nan_weights_at_load(tmp_path):
    """llama.cpp's --check-tensors: the scan names the tensor and the byte of the bad block."""
    path = _model_with_nan_scale(tmp_path)
    with gguf.open(path) as f:
        where = f.data_offset + f.tensor("blk.0.attn_q.weight").offset
    with pytest.raises(
        GGUFError, match=rf"byte {where}: tensor 'blk.0.attn_q.weight' \(Q8_0\) block 0 holds"
    ):
        Llama(path, n_ctx=16, check_tensors=True, verbose=False)
    Llama(demo_model_path(), n_ctx=16, check_tensors=True, verbose=False).eval([1, 2])


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda: block_types.dequantize(b"\0" * 33, "Q8_0"), ValueError),  # not whole blocks
        (lambda: block_types.dequantize(b"\0" * 34, "Q8_0", out=np.zeros(32, np.float64)), TypeError),
        (lambda: block_types.dequantize(b"\0" * 34, "Q8_0", out=np.zeros(31, np.float32)), ValueError),
        (lambda: block_types.dequantize(b"\0" * 34, "I32"), ValueError),  # no dequantizer
        (lambda: block_types.matmul(b"\0" * 34, "Q8_0", 1, 32, np.zeros(31)), ValueError),
        (lambda: block_types.matmul(b"\0" * 34, "Q8_0", 2, 32, np.zeros(32)), ValueError),
        (lambda: block_types.matmul(b"\0" * 34, "Q8_0", 1, 32, np.zeros(32), isa="avx9"), ValueError),
        (lambda: block_types.quantize(np.zeros(31), "Q4_0"), ValueError),
        (lambda: Llama(demo_model_path(), n_threads=0, verbose=False), ValueError),
        (lambda: Llama(demo_model_path(), n_ctx=10**6, verbose=False), ValueError),
        (lambda: Llama(demo_model_path(), n_batch=0, verbose=False), ValueError),
    ],
)
def test_api_misuse_raises(call, error):
    with pytest.raises(error):
        call()


def test_calls_after_close_are_errors():
    llm = Llama(demo_model_path(), n_ctx=64, verbose=False)
    llm.eval(llm.tokenize(b"import os"))
    engine = llm.session.engine
    llm.close()
    with pytest.raises(RuntimeError, match="closed"):
        llm.eval([1])
    with pytest.raises(RuntimeError, match="closed"):
        llm("def f():", max_tokens=2)
    with pytest.raises(RuntimeError, match="closed"):
        engine.eval([1])
    with pytest.raises(RuntimeError, match="closed"):
        _ = engine.n_past
    assert engine.closed
    llm.close()  # twice is fine


def test_concurrent_calls_are_serialized_or_refused():
    """Two threads on one model: each call either runs or is refused with a clear error, and
    the token history always equals what the cache holds."""
    llm = Llama(demo_model_path(), n_ctx=512, n_batch=512, verbose=False)
    prompt = llm.tokenize(b"import os\n" * 40)
    outcomes: list[str] = []

    def worker():
        try:
            llm.reset()
            llm.eval(prompt)
            outcomes.append("ran")
        except RuntimeError as e:
            assert "one call at a time" in str(e)
            outcomes.append("refused")

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert "ran" in outcomes and len(outcomes) == 4
    assert llm.n_tokens == llm.session.engine.n_past


def test_engine_refuses_overlapping_calls_from_threads():
    model = _core.Model(demo_model_path(), n_ctx=512)
    tokens = list(range(3, 500))
    errors: list[str] = []

    def worker():
        try:
            model.truncate(0)
            model.eval(tokens)
        except RuntimeError as e:
            errors.append(str(e))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all("borrow" in e.lower() for e in errors), errors
    assert model.n_past in (0, len(tokens))


def test_gil_is_released_during_evaluation():
    model = _core.Model(demo_model_path(), n_ctx=512)
    tokens = list(range(3, 511))
    done = threading.Event()
    spins = 0

    def evaluate():
        for _ in range(3):
            model.truncate(0)
            model.eval(tokens, True)
        done.set()

    t = threading.Thread(target=evaluate)
    start = time.perf_counter()
    t.start()
    while not done.is_set():
        spins += 1
    t.join()
    # With the GIL held through each eval this thread would stall for most of the run.
    assert spins > 10_000, (spins, time.perf_counter() - start)


def test_keyboard_interrupt_between_batches_leaves_a_consistent_model():
    import _thread
    import signal

    llm = Llama(demo_model_path(), n_ctx=512, n_batch=8, verbose=False)
    prompt = llm.tokenize(b"def f(x):\n    return x\n" * 30)[:500]
    # Python's own SIGINT handler, whatever was inherited (a background job starts with SIGINT
    # ignored, and then interrupt_main does nothing).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.05, _thread.interrupt_main)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            for _ in range(100):
                llm.reset()
                llm.eval(prompt)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert llm.n_tokens == llm.session.engine.n_past
    llm.eval([1])  # still usable


def test_ctrl_c_stops_the_cli_cleanly():
    proc = subprocess.Popen(
        [sys.executable, "-m", "ferrollm", "run", "-p", "import os", "-n", "100000", "-c", "512", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(3)
    proc.send_signal(2)  # SIGINT
    out, err = proc.communicate(timeout=30)
    assert proc.returncode in (0, 130), err  # 0 if the 512-token context filled first
    assert "Traceback" not in err and out.startswith("import os")
