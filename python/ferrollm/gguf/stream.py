"""A GGUF writer that streams: the header (metadata and every tensor's name, shape, type and
offset) is written first from a plan, then each tensor's data as it is produced, so a model
is written holding one tensor at a time. Files are byte-for-byte those of ``GGUFWriter``
(GGUF v3, data aligned to ``general.alignment``, default 32) and appear only when complete.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ferrollm.atomic import AtomicFile
from ferrollm.gguf import infer_type
from ferrollm.quant.block_types import as_bytes, quant_type

# GGUF metadata value type ids and their struct codes.
_SCALARS = {"u8": (0, "B"), "i8": (1, "b"), "u16": (2, "H"), "i16": (3, "h"), "u32": (4, "I"), "i32": (5, "i"),
            "f32": (6, "f"), "bool": (7, "?"), "u64": (10, "Q"), "i64": (11, "q"), "f64": (12, "d")}  # fmt: skip
_STR, _ARRAY = 8, 9


def encoded_string(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def encoded_value(type_name: str, value: Any) -> bytes:
    if type_name == "str":
        return encoded_string(value)
    if type_name.startswith("array["):
        inner = type_name[6:-1]
        head = struct.pack("<IQ", _STR if inner == "str" else _SCALARS[inner][0], len(value))
        if inner == "str":
            return head + b"".join(encoded_string(v) for v in value)
        return head + np.asarray(value, "<" + _SCALARS[inner][1]).tobytes()
    return struct.pack("<" + _SCALARS[type_name][1], value)


def _type_id(type_name: str) -> int:
    if type_name == "str":
        return _STR
    return _ARRAY if type_name.startswith("array[") else _SCALARS[type_name][0]


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    shape: tuple[int, ...]  # numpy order (rows last): reversed into ggml order in the file
    type: str

    @property
    def nbytes(self) -> int:
        q = quant_type(self.type)
        n = int(np.prod(self.shape, dtype=np.int64))
        if n % q.block_elems:
            raise ValueError(f"{self.name}: {n} values are not whole {self.type} blocks of {q.block_elems}")
        return n // q.block_elems * q.block_bytes


def write_gguf_stream(path: str | os.PathLike, metadata: Iterable[tuple[str, str | None, Any]],
                      plan: list[PlannedTensor], data: Iterator[np.ndarray], verify=None) -> None:  # fmt: skip
    """``metadata``: (key, type or None to infer, value); ``data`` yields each planned tensor's
    raw bytes (or an array of its type) in plan order. ``verify``: see ``AtomicFile``."""
    metadata = [(k, t or infer_type(v), v) for k, t, v in metadata]
    align = next((int(v) for k, _, v in metadata if k == "general.alignment"), 32)
    out = [struct.pack("<4sIQQ", b"GGUF", 3, len(plan), len(metadata))]
    for key, type_name, value in metadata:
        out.append(
            encoded_string(key) + struct.pack("<I", _type_id(type_name)) + encoded_value(type_name, value)
        )
    offset = 0
    for t in plan:
        dims = list(reversed(t.shape)) or [1]
        out.append(
            encoded_string(t.name)
            + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, quant_type(t.type).id, offset)
        )
        offset += t.nbytes + (-t.nbytes % align)
    header = b"".join(out)
    with AtomicFile(path, verify) as f:
        f.write(header + b"\0" * (-len(header) % align))
        done = 0
        for t, blob in zip(plan, data):
            raw = as_bytes(blob)
            if raw.nbytes != t.nbytes:
                raise ValueError(f"tensor {t.name}: {raw.nbytes} bytes of data for a {t.type} {t.shape} tensor "
                                 f"({t.nbytes} bytes)")  # fmt: skip
            f.write(raw)
            f.write(b"\0" * (-t.nbytes % align))
            done += 1
        if done != len(plan):
            raise ValueError(
                f"{len(plan) - done} planned tensors were never produced (first: {plan[done].name})"
            )
