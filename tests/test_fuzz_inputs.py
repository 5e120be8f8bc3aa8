"""Fuzzing the readers of untrusted input beside the GGUF fuzzers: the safetensors header
reader, the EXL2 reader, the mergekit YAML readers and the server's request parsing. Each case
either succeeds or fails with the reader's own error (a ValueError, the server's 400): never
another exception, a hang or a partial file. Marked ``fuzz`` (not in the default run):

    python -m pytest -m fuzz tests/test_fuzz_inputs.py          # 100,000 cases per target
    FERROLLM_FUZZ_CASES=2000 python -m pytest -m fuzz tests/test_fuzz_inputs.py   # quicker
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
from ferrollm.checkpoints.safetensors_io import SafetensorsFile, save
from ferrollm.merge import config as merge_config
from ferrollm.moe import config as moe_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.fuzz

CASES = int(os.environ.get("FERROLLM_FUZZ_CASES", "100000"))
FUZZ = settings(max_examples=CASES, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))  # fmt: skip

# JSON-like values, deep and wide enough to reach the readers' corners.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)


def _valid_safetensors(path) -> bytes:
    save(str(path), {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.float32)}, "F32",
         {"format": "pt"})  # fmt: skip
    return path.read_bytes()


@pytest.fixture(scope="module")
def seed_file(tmp_path_factory):
    return _valid_safetensors(tmp_path_factory.mktemp("st") / "seed.safetensors")


@FUZZ
@given(data=st.data())
def test_safetensors_header_reader(tmp_path_factory, seed_file, data):
    kind = data.draw(st.sampled_from(["mutate", "header", "bytes"]))
    if kind == "mutate":  # flip, cut or insert bytes of a valid file
        raw = bytearray(seed_file)
        for _ in range(data.draw(st.integers(1, 4))):
            at = data.draw(st.integers(0, len(raw) - 1))
            op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
            if op == "flip":
                raw[at] = data.draw(st.integers(0, 255))
            elif op == "cut":
                del raw[at:]
                break
            else:
                raw[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        blob = bytes(raw)
    elif kind == "header":  # a well-framed header of arbitrary JSON, then some data
        header = json.dumps(data.draw(json_values)).encode()
        blob = struct.pack("<Q", len(header)) + header + data.draw(st.binary(max_size=64))
    else:
        blob = data.draw(st.binary(max_size=96))
    path = tmp_path_factory.getbasetemp() / "fuzz.safetensors"
    path.write_bytes(blob)
    try:
        f = SafetensorsFile(str(path))
    except ValueError:
        return
    try:
        for name in f.names():
            f.get(name)
    except ValueError:
        pass
    finally:
        f.close()


yaml_text = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=120).map(lambda b: b.decode("utf-8", "surrogateescape")),  # not UTF-8 at all
    json_values.map(json.dumps),
    st.builds(
        lambda method, models, params: json.dumps(
            {
                "merge_method": method,
                "base_model": models[0] if models else None,
                "models": [{"model": m, "parameters": params} for m in models],
                "dtype": "float16",
            }
        ),
        st.sampled_from(
            ["slerp", "linear", "ties", "dare_ties", "nearswap", "passthrough", "model_stock", "x"]
        ),
        st.lists(st.text(min_size=1, max_size=6), max_size=3),
        st.dictionaries(
            st.sampled_from(["t", "weight", "density", "epsilon", "lambda"]), json_values, max_size=3
        ),
    ),
)


def _has_lone_high(text: str) -> bool:
    """Surrogates that surrogateescape cannot turn back into bytes (st.text may draw them)."""
    return any("\ud800" <= c <= "\udc7f" or "\udd00" <= c <= "\udfff" for c in text)


@FUZZ
@given(text=yaml_text)
def test_mergekit_yaml_readers(tmp_path_factory, text):
    # Through load(), as the CLI reads a config file.
    path = tmp_path_factory.getbasetemp() / "fuzz.yml"
    path.write_bytes(text.encode("utf-8", "surrogateescape") if not _has_lone_high(text) else b"\xff")
    for reader, error in ((merge_config.load, merge_config.MergeConfigError),
                          (moe_config.load, moe_config.MoEConfigError)):  # fmt: skip
        try:
            reader(path)
        except error:
            pass


@FUZZ
@given(body=st.one_of(json_values.map(lambda v: json.dumps(v).encode()), st.binary(max_size=200),
                      st.builds(lambda extra: json.dumps({"messages": [{"role": "user", "content": "x"}], **extra}).encode(),
                                st.dictionaries(st.text(max_size=12), json_values, max_size=4))))  # fmt: skip
def test_server_request_parsing(body):
    from ferrollm.serve.app import ApiError, _parse_body
    from ferrollm.serve.schemas import ChatRequest, CompletionRequest, TokenizeRequest

    for schema in (ChatRequest, CompletionRequest, TokenizeRequest):
        try:
            req = _parse_body(body, schema)
        except ApiError as e:
            assert e.status == 400, e.message
            continue
        if schema is ChatRequest:
            [m.as_dict() for m in req.messages]


@pytest.fixture(scope="module")
def exl2_dir(tmp_path_factory):
    from support.exl2_models import write_exl2_model

    path = tmp_path_factory.mktemp("exl2") / "m"
    write_exl2_model(str(path), seed=1)
    return path


@FUZZ
@given(data=st.data())
def test_exl2_reader(exl2_dir, data):
    from ferrollm.checkpoints.exl2 import EXL2Checkpoint

    tensors_file = next(p for p in sorted(os.listdir(exl2_dir)) if p.endswith(".safetensors"))
    original = (exl2_dir / tensors_file).read_bytes()
    raw = bytearray(original)
    # Mutate the data section (the header is fuzzed above): scales, indices, packed weights.
    (n,) = struct.unpack("<Q", raw[:8])
    for _ in range(data.draw(st.integers(1, 6))):
        at = data.draw(st.integers(8 + n, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    (exl2_dir / tensors_file).write_bytes(bytes(raw))
    try:
        ck = EXL2Checkpoint(str(exl2_dir))
        try:
            for name in ck.names():
                ck.get(name)
        finally:
            ck.close()
    except ValueError:
        pass
    finally:
        (exl2_dir / tensors_file).write_bytes(original)
