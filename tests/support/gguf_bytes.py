"""A tiny GGUF byte builder written independently of ferrollm's writer, so tests can make
files that break exactly one rule (and record where each field starts)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

VALUE_TYPES = {"u8": 0, "i8": 1, "u16": 2, "i16": 3, "u32": 4, "i32": 5, "f32": 6, "bool": 7,
               "str": 8, "array": 9, "u64": 10, "i64": 11, "f64": 12}  # fmt: skip
PACK = {"u8": "<B", "i8": "<b", "u16": "<H", "i16": "<h", "u32": "<I", "i32": "<i", "f32": "<f",
        "bool": "<B", "u64": "<Q", "i64": "<q", "f64": "<d"}  # fmt: skip


def gguf_string(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def encode_value(type_name: str, value) -> bytes:
    if type_name == "str":
        return gguf_string(value)
    if type_name.startswith("array["):
        inner = type_name[6:-1]
        head = struct.pack("<IQ", VALUE_TYPES[inner.split("[")[0]], len(value))
        return head + b"".join(encode_value(inner, v) for v in value)
    return struct.pack(PACK[type_name], value)


@dataclass
class Tensor:
    name: str
    dims: list[int]
    type_id: int
    offset: int
    data: bytes = b""


@dataclass
class GGUFBytes:
    """Fields in order; `build()` returns the bytes and the offset of every named field."""

    version: int = 3
    kv: list[tuple[str, str, object]] = field(default_factory=list)
    tensors: list[Tensor] = field(default_factory=list)
    alignment: int = 32
    n_tensors: int | None = None  # override the counts to lie
    n_kv: int | None = None

    def build(self) -> tuple[bytes, dict[str, int]]:
        out = bytearray(b"GGUF")
        at: dict[str, int] = {"magic": 0, "version": 4}
        out += struct.pack("<I", self.version)
        at["n_tensors"] = len(out)
        out += struct.pack("<Q", len(self.tensors) if self.n_tensors is None else self.n_tensors)
        at["n_kv"] = len(out)
        out += struct.pack("<Q", len(self.kv) if self.n_kv is None else self.n_kv)
        for key, type_name, value in self.kv:
            at[f"kv:{key}"] = len(out)
            out += gguf_string(key)
            at[f"kv:{key}:type"] = len(out)
            out += struct.pack("<I", VALUE_TYPES[type_name.split("[")[0]])
            at[f"kv:{key}:value"] = len(out)
            out += encode_value(type_name, value)
        for t in self.tensors:
            at[f"t:{t.name}"] = len(out)
            out += gguf_string(t.name)
            at[f"t:{t.name}:n_dims"] = len(out)
            out += struct.pack("<I", len(t.dims))
            for i, d in enumerate(t.dims):
                at[f"t:{t.name}:dim{i}"] = len(out)
                out += struct.pack("<Q", d)
            at[f"t:{t.name}:type"] = len(out)
            out += struct.pack("<I", t.type_id)
            at[f"t:{t.name}:offset"] = len(out)
            out += struct.pack("<Q", t.offset)
        at["header_end"] = len(out)
        out += b"\0" * (-len(out) % self.alignment)
        data_start = len(out)
        at["data"] = data_start
        for t in (t for t in self.tensors if t.data):
            end = data_start + t.offset + len(t.data)
            if len(out) < end:
                out += b"\0" * (end - len(out))
            out[data_start + t.offset : end] = t.data
        return bytes(out), at


def valid_file() -> GGUFBytes:
    """Two F32 tensors and a few keys: the base every malformed case edits."""
    return GGUFBytes(
        kv=[("general.architecture", "str", "llama"), ("general.alignment", "u32", 32),
            ("tokenizer.ggml.tokens", "array[str]", ["<s>", "a", "b"])],
        tensors=[Tensor("a", [4, 2], 0, 0, bytes(32)), Tensor("b", [32], 2, 32, bytes(18))],
    )  # fmt: skip
