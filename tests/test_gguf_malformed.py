"""Every validation rule of the GGUF reader: a file that breaks it raises GGUFError naming the
field and the byte offset where it sits; never a crash, hang or huge allocation."""

from __future__ import annotations

import re

import ferrollm
import pytest
from support.gguf_bytes import GGUFBytes, Tensor, valid_file


def open_bytes(tmp_path, data: bytes):
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    return ferrollm.gguf.open(path)


def expect_error(tmp_path, data: bytes, pattern: str, offset: int | None = None) -> str:
    with pytest.raises(ferrollm.GGUFError) as info:
        open_bytes(tmp_path, data)
    message = str(info.value)
    assert re.search(pattern, message), message
    if offset is not None:
        assert message.startswith(f"GGUF error at byte {offset}:"), message
    return message


def test_the_base_file_is_valid(tmp_path):
    data, _ = valid_file().build()
    f = open_bytes(tmp_path, data)
    assert [t.name for t in f.tensors] == ["a", "b"]
    assert f.metadata["tokenizer.ggml.tokens"] == ["<s>", "a", "b"]


def test_gguf_error_is_a_value_error():
    assert issubclass(ferrollm.GGUFError, ValueError)


def test_bad_magic(tmp_path):
    data, _ = valid_file().build()
    expect_error(tmp_path, b"GGML" + data[4:], "bad magic.*not a GGUF file", 0)


@pytest.mark.parametrize(
    "version, pattern",
    [(1, "version 1 is not supported"), (4, "unsupported GGUF version 4"), (0x03000000, "big-endian")],
)
def test_bad_version(tmp_path, version, pattern):
    g = valid_file()
    g.version = version
    expect_error(tmp_path, g.build()[0], pattern, 4)


def test_file_too_small_and_empty(tmp_path):
    expect_error(tmp_path, b"", "0 bytes, too small", 0)
    expect_error(tmp_path, b"GGUF\x03\0\0\0", "too small", 0)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        ferrollm.gguf.open(tmp_path / "nope.gguf")


@pytest.mark.parametrize("count", [10**6, 2**40, 2**63, 2**64 - 1])
def test_tensor_count_beyond_file_size(tmp_path, count):
    g = valid_file()
    g.n_tensors = count
    data, at = g.build()
    expect_error(tmp_path, data, f"tensor count: count {count} cannot fit", at["n_tensors"])


@pytest.mark.parametrize("count", [10**6, 2**40, 2**64 - 1])
def test_metadata_count_beyond_file_size(tmp_path, count):
    g = valid_file()
    g.n_kv = count
    data, at = g.build()
    expect_error(tmp_path, data, f"metadata count: count {count} cannot fit", at["n_kv"])


def test_absurd_string_length(tmp_path):
    g = valid_file()
    data, at = g.build()
    pos = at["kv:general.architecture:value"]
    bad = data[:pos] + (2**62).to_bytes(8, "little") + data[pos + 8 :]
    expect_error(
        tmp_path, bad, "metadata 'general.architecture'.*string length 4611686018427387904 exceeds", pos
    )


def test_absurd_key_length(tmp_path):
    data, at = valid_file().build()
    pos = at["kv:general.architecture"]
    bad = data[:pos] + (2**64 - 1).to_bytes(8, "little") + data[pos + 8 :]
    expect_error(tmp_path, bad, "metadata key #0.*string length", pos)


def test_invalid_utf8_string(tmp_path):
    g = valid_file()
    g.kv[0] = ("general.architecture", "str", b"\xff\xfe")
    data, at = g.build()
    expect_error(tmp_path, data, "not valid UTF-8", at["kv:general.architecture:value"] + 8)


def test_unknown_value_type(tmp_path):
    data, at = valid_file().build()
    pos = at["kv:general.architecture:type"]
    bad = data[:pos] + (13).to_bytes(4, "little") + data[pos + 4 :]
    expect_error(tmp_path, bad, "unknown value type 13", pos)


def test_bool_must_be_0_or_1(tmp_path):
    g = valid_file()
    g.kv.append(("flag", "u8", 7))
    data, at = g.build()
    pos = at["kv:flag:type"]
    bad = data[:pos] + (7).to_bytes(4, "little") + data[pos + 4 :]  # retype the u8 as bool
    expect_error(tmp_path, bad, "bool byte is 7", at["kv:flag:value"])


def test_absurd_array_length(tmp_path):
    data, at = valid_file().build()
    pos = at["kv:tokenizer.ggml.tokens:value"] + 4
    bad = data[:pos] + (2**60).to_bytes(8, "little") + data[pos + 8 :]
    expect_error(tmp_path, bad, r"tokens' \(array length\): count 1152921504606846976 cannot fit", pos)


def test_arrays_nested_too_deep(tmp_path):
    g = valid_file()
    deep_type, deep_value = "array[u8]", [1]
    for _ in range(9):
        deep_type, deep_value = f"array[{deep_type}]", [deep_value]
    g.kv.append(("deep", deep_type, deep_value))
    expect_error(tmp_path, g.build()[0], "nested deeper than 8")


def test_nested_arrays_within_limit_are_read(tmp_path):
    g = valid_file()
    g.kv.append(("nested", "array[array[i16]]", [[1, -2], [], [3]]))
    f = open_bytes(tmp_path, g.build()[0])
    assert f.metadata["nested"] == [[1, -2], [], [3]]
    assert f.metadata_types["nested"] == "array[array[i16]]"


@pytest.mark.parametrize(
    "type_name, value, pattern",
    [("u32", 0, "power of two, found u32 0"), ("u32", 48, "power of two, found u32 48"),
     ("u64", 32, "must be a u32 power of two, found u64"), ("str", "32", "found str")],
)  # fmt: skip
def test_bad_alignment(tmp_path, type_name, value, pattern):
    g = valid_file()
    g.kv[1] = ("general.alignment", type_name, value)
    expect_error(tmp_path, g.build()[0], "general.alignment.*" + pattern)


def test_other_alignment_is_honoured(tmp_path):
    g = valid_file()
    g.kv[1] = ("general.alignment", "u32", 64)
    g.alignment = 64
    g.tensors[1].offset = 64
    f = open_bytes(tmp_path, g.build()[0])
    assert f.alignment == 64 and f.data_offset % 64 == 0


def test_duplicate_key(tmp_path):
    g = valid_file()
    g.kv.append(("general.architecture", "str", "again"))
    data, _ = g.build()
    expect_error(tmp_path, data, "metadata key #3 'general.architecture' is duplicated")


def test_duplicate_tensor_name(tmp_path):
    g = valid_file()
    g.tensors[1].name = "a"
    expect_error(tmp_path, g.build()[0], "tensor #1 name 'a' is duplicated")


@pytest.mark.parametrize("n_dims", [0, 5])
def test_bad_n_dims(tmp_path, n_dims):
    g = valid_file()
    g.tensors[0].dims = [32] * n_dims
    data, at = g.build()
    expect_error(tmp_path, data, f"tensor 'a' n_dims is {n_dims}, must be 1..=4", at["t:a:n_dims"])


def test_zero_dim(tmp_path):
    g = valid_file()
    g.tensors[0].dims = [4, 0]
    data, at = g.build()
    expect_error(tmp_path, data, "tensor 'a' dim 1 is 0", at["t:a:dim1"])


def test_dim_product_overflow(tmp_path):
    g = valid_file()
    g.tensors[0].dims = [2**32, 2**32]
    data, at = g.build()
    expect_error(tmp_path, data, "product of dimensions overflows", at["t:a:dim1"])


def test_byte_size_overflow(tmp_path):
    g = valid_file()
    g.tensors[0].dims = [2**62]  # F32: 2**64 bytes
    data, at = g.build()
    expect_error(tmp_path, data, "byte size overflows", at["t:a:n_dims"])


@pytest.mark.parametrize("type_id", [4, 5, 31, 36, 1000])
def test_unknown_tensor_type(tmp_path, type_id):
    g = valid_file()
    g.tensors[0].type_id = type_id
    data, at = g.build()
    expect_error(tmp_path, data, f"tensor 'a' type {type_id} is not a known ggml type", at["t:a:type"])


def test_row_not_a_multiple_of_the_block(tmp_path):
    g = valid_file()
    g.tensors[1].dims = [48]
    data, at = g.build()
    expect_error(
        tmp_path, data, "row length 48 is not a multiple of the Q4_0 block size 32", at["t:b:n_dims"] + 4
    )


def test_misaligned_offset(tmp_path):
    g = valid_file()
    g.tensors[1].offset = 40
    data, at = g.build()
    expect_error(
        tmp_path, data, "tensor 'b' offset 40 is not a multiple of the alignment 32", at["t:b:offset"]
    )


def test_tensor_outside_the_data_section(tmp_path):
    g = valid_file()
    data, at = g.build()
    expect_error(tmp_path, data[:-1], "tensor 'b' data .* lies outside", at["t:b:offset"])
    g.tensors[1].offset = 2**64 - 32
    g.tensors[1].data = b""
    data, at = g.build()
    expect_error(tmp_path, data, "tensor 'b' data .* lies outside", at["t:b:offset"])


def test_overlapping_tensors(tmp_path):
    g = valid_file()
    g.tensors.append(Tensor("c", [8], 0, 0))  # F32 x8 at offset 0, inside 'a'
    data, _ = g.build()
    expect_error(tmp_path, data, "tensor '(c|a)' at offset 0 overlaps tensor '(a|c)'")


def test_data_section_past_end_of_file(tmp_path):
    data, at = valid_file().build()
    expect_error(tmp_path, data[: at["header_end"]], "lies outside|data section starts")


def test_truncation_at_every_byte(tmp_path):
    data, _ = valid_file().build()
    for n in range(len(data)):
        with pytest.raises(ferrollm.GGUFError):
            open_bytes(tmp_path, data[:n])


def test_no_tensors_and_no_data_section(tmp_path):
    g = GGUFBytes(kv=[("general.name", "str", "empty")])
    data, at = g.build()
    f = open_bytes(tmp_path, data[: at["header_end"]])
    assert f.tensors == [] and f.metadata == {"general.name": "empty"}
