"""Safetensors files, read through a memory map one tensor at a time and written as a stream.

The format: an 8-byte little-endian header length, a JSON header ``{name: {dtype, shape,
data_offsets: [begin, end]}, "__metadata__": {...}}``, then the data. Our own reader rather
than the ``safetensors`` package's numpy API because numpy has no bfloat16, the dtype most
checkpoints ship in: BF16 is widened here to float32 exactly (it is the upper half of one).
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from collections.abc import Iterable, Mapping

import numpy as np

from ferrollm.atomic import AtomicFile

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}  # fmt: skip
_PAGE = mmap.PAGESIZE


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    wide = np.asarray(bits, np.uint16).astype(np.uint32)
    wide <<= np.uint32(16)  # in place: one float32-sized array, not two
    return wide.view(np.float32)


def f32_to_bf16(values: np.ndarray) -> np.ndarray:
    """Round to nearest even, NaNs kept quiet (as torch and gguf-py round). In 32-bit integers
    and in place: no sum can carry out of them (the largest non-NaN is -inf, NaNs are cleared
    to their top 16 bits first), and a tensor's temporaries stay one copy of it."""
    n = np.array(values, np.float32).view(np.uint32)  # a copy, modified below
    nan = (n & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    n[nan] = (n[nan] & np.uint32(0xFFFF0000)) | np.uint32(64 << 16)
    carry = n >> np.uint32(16)
    carry &= np.uint32(1)
    carry += np.uint32(0x7FFF)
    n += carry
    n >>= np.uint32(16)
    return n.astype(np.uint16)


def _sizes(values, count: int | None = None) -> bool:
    """A JSON list of whole numbers >= 0 (``count`` of them if given)."""
    return (
        isinstance(values, list)
        and (count is None or len(values) == count)
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)
    )


def _well_formed(entry) -> bool:
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("dtype"), str)
        and _sizes(entry.get("shape"))
        and _sizes(entry.get("data_offsets"), 2)
        and entry["data_offsets"][0] <= entry["data_offsets"][1]
    )


class SafetensorsFile:
    """One .safetensors file, memory-mapped. ``get`` copies one tensor out and releases its pages,
    so reading a whole checkpoint tensor by tensor keeps the resident set to one tensor."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                raise ValueError(f"{self.path}: not a safetensors file ({size} bytes)")
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                raise ValueError(f"{self.path}: header of {n} bytes in a file of {size}")
            try:
                header = json.loads(f.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
                raise ValueError(f"{self.path}: the header is not valid JSON ({e})") from None
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size > 8 + n else None
        if not isinstance(header, dict):
            raise ValueError(f"{self.path}: the header is not a JSON object")  # noqa: TRY004 - bad file content
        metadata = header.pop("__metadata__", None)
        if metadata is not None and not isinstance(metadata, dict):
            raise ValueError(f"{self.path}: __metadata__ is not a JSON object")
        self.metadata: dict[str, str] = metadata or {}
        self._data_start = 8 + n
        self._entries: dict[str, dict] = header
        for name, e in header.items():
            if not _well_formed(e):
                raise ValueError(f"{self.path}: tensor {name!r} needs a dtype, a shape of sizes and two data "
                                 f"offsets, got {e!r:.200}")  # fmt: skip
            begin, end = e["data_offsets"]
            if e["dtype"] not in _DTYPES:
                raise ValueError(f"{self.path}: tensor {name!r} has unsupported dtype {e['dtype']}")
            want = math.prod(e["shape"]) * np.dtype(_DTYPES[e["dtype"]]).itemsize  # exact: no overflow
            if end - begin != want or self._data_start + end > size:
                raise ValueError(f"{self.path}: tensor {name!r} data offsets {begin}..{end} do not fit")

    def names(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entries[name]["shape"])

    def dtype(self, name: str) -> str:
        return self._entries[name]["dtype"]

    def raw(self, name: str, part: tuple = ()) -> np.ndarray:
        """The stored values (BF16 as uint16 bits), copied out of the map. ``part`` = (i, lo,
        hi) reads only rows lo..hi of ``tensor[i]`` (one expert of a fused expert tensor)."""
        e = self._entries[name]
        dtype = np.dtype(_DTYPES[e["dtype"]])
        shape = list(e["shape"])
        begin, end = (self._data_start + o for o in e["data_offsets"])
        if part:
            i, lo, hi = part
            row = int(np.prod(shape[2:], dtype=np.int64)) * dtype.itemsize
            begin += (i * shape[1] + lo) * row
            end = begin + (hi - lo) * row
            shape = [hi - lo, *shape[2:]]
        if end == begin:
            return np.zeros(shape, dtype)
        out = np.frombuffer(self._map, dtype, (end - begin) // dtype.itemsize, begin).reshape(shape).copy()
        lo = begin // _PAGE * _PAGE  # drop the pages just read from our resident set
        self._map.madvise(mmap.MADV_DONTNEED, lo, end - lo)
        return out

    def get(self, name: str, part: tuple = ()) -> np.ndarray:
        """The tensor (or ``part`` of it) as float32."""
        values = self.raw(name, part)
        if self.dtype(name) == "BF16":
            return bf16_to_f32(values)
        return values.astype(np.float32, copy=False)

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None


_NP_NAMES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.float64): "F64",
             np.dtype(np.int64): "I64", np.dtype(np.int32): "I32"}  # fmt: skip
_ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4}


def write_stream(path: str | os.PathLike, plan: Iterable[tuple[str, tuple[int, ...], str]], tensors,
                 metadata: Mapping[str, str] | None = None) -> None:  # fmt: skip
    """Write ``path`` from ``plan`` — (name, shape, dtype) in file order, dtype F32/F16/BF16 —
    and ``tensors``, an iterator yielding each tensor's float values in that order, converted
    here. The header is written first, so no two tensors are held at once; the file appears
    only once complete."""
    plan = list(plan)
    header: dict[str, dict] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, shape, dtype in plan:
        n = int(np.prod(shape, dtype=np.int64)) * _ITEMSIZE[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # data 8-byte aligned, as the reference writer pads
    with AtomicFile(path) as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for (name, shape, dtype), values in zip(plan, tensors):
            values = np.asarray(values)
            if tuple(values.shape) != tuple(shape):
                raise ValueError(f"tensor {name!r}: planned shape {tuple(shape)}, got {values.shape}")
            f.write(encode(values, dtype).tobytes())


def encode(values: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return f32_to_bf16(values)
    return np.ascontiguousarray(values, {"F32": np.float32, "F16": np.float16, "F64": np.float64,
                                         "I64": np.int64, "I32": np.int32}[dtype])  # fmt: skip


def save(path: str | os.PathLike, tensors: Mapping[str, np.ndarray], dtype: str | None = None,
         metadata: Mapping[str, str] | None = None) -> None:  # fmt: skip
    """A whole dict of arrays (tests and small files); ``dtype`` overrides each array's own."""
    plan = [(k, tuple(v.shape), dtype or _NP_NAMES[np.asarray(v).dtype]) for k, v in tensors.items()]
    write_stream(path, plan, (tensors[k] for k, _, _ in plan), metadata)
