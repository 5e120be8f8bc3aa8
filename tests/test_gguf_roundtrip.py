"""reader(writer(x)) == x for metadata of every value type and tensors of every block type;
and files interchange with gguf-py (its reader reads ours, ours reads its writer's)."""

from __future__ import annotations

import math

import ferrollm
import numpy as np
import pytest
from ferrollm.gguf import GGUFWriter, write_gguf
from ferrollm.gguf.synthetic import DEMO_TYPES, random_blocks
from ferrollm.quant.block_types import quant_type
from hypothesis import given, settings
from hypothesis import strategies as st

INT_RANGES = {"u8": (0, 2**8 - 1), "i8": (-(2**7), 2**7 - 1), "u16": (0, 2**16 - 1), "i16": (-(2**15), 2**15 - 1),
              "u32": (0, 2**32 - 1), "i32": (-(2**31), 2**31 - 1), "u64": (0, 2**64 - 1), "i64": (-(2**63), 2**63 - 1)}  # fmt: skip


def scalar_of(type_name: str):
    if type_name in INT_RANGES:
        return st.integers(*INT_RANGES[type_name])
    if type_name == "f32":
        return st.floats(width=32, allow_nan=False)
    if type_name == "f64":
        return st.floats(allow_nan=False)
    if type_name == "bool":
        return st.booleans()
    return st.text(max_size=20)


scalar_types = st.sampled_from([*INT_RANGES, "f32", "f64", "bool", "str"])


@st.composite
def typed_value(draw, depth: int = 0):
    if depth < 2 and draw(st.booleans()):
        inner_type, _ = draw(typed_value(depth + 1)) if draw(st.booleans()) else (draw(scalar_types), None)
        if inner_type.startswith("array"):
            items = draw(st.lists(typed_value_of(inner_type), max_size=3))
        else:
            items = draw(st.lists(scalar_of(inner_type), max_size=5))
        return f"array[{inner_type}]", items
    t = draw(scalar_types)
    return t, draw(scalar_of(t))


def typed_value_of(type_name: str):
    if type_name.startswith("array["):
        inner = type_name[6:-1]
        return st.lists(typed_value_of(inner), max_size=3)
    return scalar_of(type_name)


keys = st.text(min_size=1, max_size=30).filter(lambda k: k != "general.alignment")


@settings(max_examples=150, deadline=None)
@given(
    metadata=st.dictionaries(keys, typed_value(), max_size=8),
    tensor_types=st.lists(st.sampled_from(DEMO_TYPES), max_size=4),
    alignment=st.sampled_from([None, 1, 8, 32, 64, 4096]),
    seed=st.integers(0, 2**32 - 1),
)
def test_roundtrip(tmp_path_factory, metadata, tensor_types, alignment, seed):
    path = tmp_path_factory.mktemp("rt") / "x.gguf"
    rng = np.random.default_rng(seed)
    w = GGUFWriter(path, alignment=alignment)
    for key, (type_name, value) in metadata.items():
        w.add(key, value, type_name)
    tensors = []
    for i, t in enumerate(tensor_types):
        qt = quant_type(t)
        rows = int(rng.integers(1, 4))
        row_len = qt.block_elems * int(rng.integers(1, 3)) * (32 if qt.block_elems == 1 else 1)
        data = random_blocks(t, rows * row_len // qt.block_elems, rng).reshape(-1)
        tensors.append((f"t{i}", (row_len, rows), qt.name, data))
        w.add_tensor(f"t{i}", data, qt.name, [row_len, rows])
    w.write()

    f = ferrollm.gguf.open(path)
    expected = {k: v for k, (_, v) in metadata.items()}
    expected_types = {k: stored_type(t, v) for k, (t, v) in metadata.items()}
    if alignment is not None:
        expected = {"general.alignment": alignment, **expected}
        expected_types = {"general.alignment": "u32", **expected_types}
    got = f.metadata
    assert list(got) == list(expected)
    for key, value in expected.items():
        assert_same_value(got[key], value, expected_types[key])
    assert f.metadata_types == expected_types
    assert f.alignment == (alignment or 32)
    assert [(t.name, t.shape, t.type) for t in f.tensors] == [(n, s, t) for n, s, t, _ in tensors]
    for (name, _, _, data), info in zip(tensors, f.tensors):
        assert info.offset % f.alignment == 0
        assert np.array_equal(f.tensor_bytes(name), data)


def stored_type(type_name: str, value) -> str:
    """The type a file can tell: GGUF records an array's element type but not, for an array of
    arrays, the inner element type, which is only known from a first element."""
    inner = type_name[6:-1]
    if type_name.startswith("array[") and inner.startswith("array["):
        return f"array[{stored_type(inner, value[0])}]" if value else "array[array]"
    return type_name


def assert_same_value(got, want, type_name: str):
    if type_name.startswith("array["):
        assert isinstance(got, list) and len(got) == len(want)
        for g, w in zip(got, want):
            assert_same_value(g, w, type_name[6:-1])
    elif type_name == "f32":
        assert got == np.float32(want) or (math.isnan(got) and math.isnan(want))
    else:
        assert got == want and type(got) is type(want)


def test_inferred_types(tmp_path):
    path = tmp_path / "infer.gguf"
    write_gguf(
        path, {"i": 7, "big": 2**40, "f": 0.5, "s": "x", "b": True, "toks": ["a", "b"], "ids": [1, 2**33]}
    )
    assert ferrollm.gguf.open(path).metadata_types == {
        "i": "i32",
        "big": "i64",
        "f": "f32",
        "s": "str",
        "b": "bool",
        "toks": "array[str]",
        "ids": "array[i64]",
    }


def test_float_arrays_keep_shape_and_values(tmp_path):
    path = tmp_path / "f.gguf"
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    write_gguf(path, {"general.architecture": "test"}, [("x", x), ("h", x.astype(np.float16))])
    f = ferrollm.gguf.open(path)
    assert f.tensor("x").shape == (4, 3, 2) and f.tensor("x").numpy_shape == (2, 3, 4)
    assert np.array_equal(f.dequantize("x"), x)
    assert np.array_equal(f.dequantize("h"), x)


def test_writer_rejects_bad_input_and_leaves_no_file(tmp_path):
    path = tmp_path / "bad.gguf"
    w = GGUFWriter(path)
    w.add_tensor("q", np.zeros(17, np.uint8), "Q4_0", [32])
    with pytest.raises(ValueError, match="needs 18 bytes, got 17"):
        w.write()
    assert not path.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="not a multiple|bad shape"):
        write_gguf(path, {}, [("q", np.zeros(18, np.uint8), "Q4_0", [31])])
    with pytest.raises(ValueError, match="given twice"):
        write_gguf(path, {}, [("q", np.zeros(4, np.float32)), ("q", np.zeros(4, np.float32))])
    with pytest.raises(ValueError, match="power of two"):
        write_gguf(path, {"general.alignment": 48}, types={"general.alignment": "u32"})
    with pytest.raises(ValueError, match="not a valid u8"):
        write_gguf(path, {"x": 300}, types={"x": "u8"})
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_existing_file(tmp_path):
    path = tmp_path / "keep.gguf"
    write_gguf(path, {"general.name": "original"})
    with pytest.raises(ValueError):
        write_gguf(path, {}, [("q", np.zeros(3, np.uint8), "Q4_0", [32])])
    assert ferrollm.gguf.open(path).metadata == {"general.name": "original"}


gguf = pytest.importorskip("gguf")


def test_gguf_py_reads_our_files(tmp_path):
    path = tmp_path / "ours.gguf"
    ferrollm.gguf.synthetic.write_synthetic_gguf(path, seed=3)
    ours = ferrollm.gguf.open(path)
    theirs = gguf.GGUFReader(path)
    assert {t.name for t in theirs.tensors} == {t.name for t in ours.tensors}
    for t in theirs.tensors:
        assert list(t.shape) == list(ours.tensor(t.name).shape)
        assert t.tensor_type.name == ours.tensor(t.name).type
        assert np.array_equal(np.asarray(t.data).reshape(-1).view(np.uint8), ours.tensor_bytes(t.name))
        want = gguf.quants.dequantize(t.data, t.tensor_type)
        assert np.array_equal(ours.dequantize(t.name).view(np.uint32), want.view(np.uint32))
    assert theirs.fields["general.name"].contents() == "ferrollm synthetic blocks"


def test_we_read_gguf_py_files(tmp_path):
    path = tmp_path / "theirs.gguf"
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_uint32("llama.block_count", 2)
    w.add_array("tokenizer.ggml.tokens", ["<unk>", "<s>", "▁hi"])
    w.add_array("tokenizer.ggml.scores", [0.0, -1.5, 2.25])
    w.add_float64("x.f64", 1.25)
    blocks = random_blocks("Q6_K", 4, np.random.default_rng(0))
    w.add_tensor("w", blocks, raw_shape=(2, 2 * 210), raw_dtype=gguf.GGMLQuantizationType.Q6_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    f = ferrollm.gguf.open(path)
    assert f.metadata["general.architecture"] == "llama"
    assert f.metadata["llama.block_count"] == 2 and f.metadata_types["llama.block_count"] == "u32"
    assert f.metadata["tokenizer.ggml.tokens"] == ["<unk>", "<s>", "▁hi"]
    assert f.metadata["tokenizer.ggml.scores"] == [0.0, -1.5, 2.25]
    assert f.tensor("w").shape == (512, 2) and f.tensor("w").type == "Q6_K"
    want = gguf.quants.dequantize(blocks.reshape(2, -1), gguf.GGMLQuantizationType.Q6_K)
    assert np.array_equal(f.dequantize("w"), want)


def test_tensor_view_is_zero_copy_and_outlives_the_file_object(tmp_path):
    path = tmp_path / "v.gguf"
    ferrollm.gguf.synthetic.write_synthetic_gguf(path, types=["Q4_K"])
    f = ferrollm.gguf.open(path)
    view = f.tensor_bytes("synthetic.q4_k.weight")
    copy = np.array(view)
    assert not view.flags.writeable and not view.flags.owndata
    del f
    import gc

    gc.collect()
    assert np.array_equal(view, copy)  # the map stays alive through the view's base
