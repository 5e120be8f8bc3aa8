"""Read and write GGUF files.

    f = ferrollm.gguf.open("model.gguf")
    f.metadata["general.architecture"]      # plain Python values
    f.tensors[0].shape                      # ggml order: shape[0] is the row length
    f.tensor_bytes("blk.0.attn_q.weight")   # read-only numpy view into the memory map
    f.dequantize("blk.0.attn_q.weight")     # float32, numpy order (reversed ggml shape)

Every violation of the format raises :class:`ferrollm.GGUFError` (a ``ValueError``) whose
message names the field and its byte offset.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from ferrollm import _core
from ferrollm._core import GGUFError
from ferrollm.quant.block_types import as_bytes, quant_type

__all__ = ["GGUFError", "GGUFFile", "GGUFWriter", "TensorInfo", "infer_type", "open", "write_gguf"]


def _refuse_directory(path: str) -> None:
    """A directory would reach the memory map as ``OSError: No such device``: say what it is
    instead, and what to do with a Hugging Face checkpoint or a folder of GGUF files."""
    if not os.path.isdir(path):
        return
    hint = ""
    if os.path.isfile(os.path.join(path, "config.json")):
        hint = (
            f"; it holds a Hugging Face checkpoint: convert it first with `ferrollm convert {path} OUT.gguf`"
        )
    else:
        ggufs = sorted(n for n in os.listdir(path) if n.endswith(".gguf"))
        if ggufs:
            more = f", ... ({len(ggufs)} files)" if len(ggufs) > 3 else ""
            hint = f"; pass one of its GGUF files: {', '.join(ggufs[:3])}{more}"
    raise IsADirectoryError(f"{path} is a directory, not a GGUF file{hint}")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml order: shape[0] is the row length
    type: str
    offset: int  # relative to the data section
    nbytes: int

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.uint64))

    @property
    def numpy_shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.shape))


class GGUFFile:
    """A validated, memory-mapped GGUF file. Tensor views keep the map alive."""

    def __init__(self, path: str | os.PathLike):
        _refuse_directory(os.fspath(path))
        self._file = _core.GGUFFile(os.fspath(path))

    path = property(lambda self: self._file.path)
    version = property(lambda self: self._file.version)
    alignment = property(lambda self: self._file.alignment)
    data_offset = property(lambda self: self._file.data_offset)
    file_size = property(lambda self: self._file.file_size)

    @cached_property
    def metadata(self) -> dict[str, Any]:
        return self._file.metadata()

    @cached_property
    def metadata_types(self) -> dict[str, str]:
        return self._file.metadata_types()

    @cached_property
    def tensors(self) -> list[TensorInfo]:
        return [TensorInfo(n, tuple(s), t, o, b) for n, s, t, o, b in self._file.tensor_infos()]

    @cached_property
    def _tensors_by_name(self) -> dict[str, TensorInfo]:
        return {t.name: t for t in self.tensors}

    def tensor(self, name: str) -> TensorInfo:
        try:
            return self._tensors_by_name[name]
        except KeyError:
            raise KeyError(f"no tensor named {name!r} in {self.path}") from None

    def tensor_bytes(self, name: str) -> np.ndarray:
        """Raw bytes of a tensor as a read-only uint8 view (zero-copy)."""
        return self._file.tensor_bytes(name)

    def dequantize(self, name: str) -> np.ndarray:
        """The tensor as float32, numpy shape (reversed ggml shape)."""
        return self._file.dequantize(name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def __repr__(self) -> str:
        return repr(self._file)


def open(path: str | os.PathLike) -> GGUFFile:
    return GGUFFile(path)


_INT_RANGES = [("i32", -(2**31), 2**31 - 1), ("i64", -(2**63), 2**63 - 1), ("u64", 0, 2**64 - 1)]


def infer_type(value: Any) -> str:
    """The GGUF type a plain Python value is written as (as gguf-py does: int -> i32, float -> f32)."""
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    if isinstance(value, (int, np.integer)):
        for name, lo, hi in _INT_RANGES:
            if lo <= value <= hi:
                return name
        raise ValueError(f"integer {value} does not fit in 64 bits")
    if isinstance(value, (float, np.floating)):
        return "f32"
    if isinstance(value, str):
        return "str"
    if isinstance(value, (list, tuple, np.ndarray)):
        items = list(value)
        if not items:
            return "array[i32]"
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in items):
            lo, hi = min(items), max(items)
            return "array[" + next(n for n, a, b in _INT_RANGES if a <= lo and hi <= b) + "]"
        return f"array[{infer_type(items[0])}]"
    raise TypeError(f"cannot store a {type(value).__name__} in GGUF metadata")


class GGUFWriter:
    """Collects metadata and tensors, then writes a GGUF v3 file in one go.

    Tensors are given either as a float32/float16 numpy array (type F32/F16, shape from the
    array) or as raw block bytes with ``type`` and ggml ``shape``.
    """

    def __init__(self, path: str | os.PathLike, alignment: int | None = None):
        self.path = os.fspath(path)
        self._metadata: dict[str, tuple[str, Any]] = {}
        self._tensors: list[tuple[str, list[int], str, np.ndarray, int | None]] = []
        if alignment is not None:
            self.add("general.alignment", alignment, "u32")

    def add(self, key: str, value: Any, type: str | None = None) -> None:
        if key in self._metadata:
            raise ValueError(f"metadata key {key!r} added twice")
        self._metadata[key] = (type or infer_type(value), value)

    def add_tensor(
        self,
        name: str,
        data: np.ndarray | bytes,
        type: str | None = None,
        shape: Sequence[int] | None = None,
        sample_seed: int | None = None,
    ) -> None:
        """With ``sample_seed``, ``data`` is a pool of whole blocks and the tensor (of any size
        ``shape`` says) is filled with blocks drawn from it at random, in Rust: how benchmarks
        write gigabyte models of random valid blocks quickly."""
        if type is None:
            arr = np.asarray(data)
            kinds = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16"}
            if arr.dtype not in kinds:
                raise TypeError(f"tensor {name!r}: give type= for {arr.dtype} data")
            type, shape = kinds[arr.dtype], list(reversed(arr.shape)) or [1]
        if shape is None:
            raise ValueError(f"tensor {name!r}: raw {type} data needs shape= (ggml order)")
        self._tensors.append(
            (name, [int(d) for d in shape], quant_type(type).name, as_bytes(data), sample_seed)
        )

    def write(self) -> None:
        metadata = [(k, t, v) for k, (t, v) in self._metadata.items()]
        _core.write_gguf(self.path, metadata, self._tensors)


def write_gguf(
    path: str | os.PathLike,
    metadata: Mapping[str, Any],
    tensors: Iterable[tuple] = (),
    types: Mapping[str, str] | None = None,
) -> None:
    """Write ``metadata`` (types inferred unless given in ``types``) and ``tensors``: tuples of
    ``(name, array)`` or ``(name, raw_bytes, type, ggml_shape)``."""
    writer = GGUFWriter(path)
    for key, value in metadata.items():
        writer.add(key, value, (types or {}).get(key))
    for name, data, *rest in tensors:
        writer.add_tensor(name, data, *rest)
    writer.write()


def copy_with_metadata(
    src: str | os.PathLike, dst: str | os.PathLike, keys: Mapping[str, tuple[str, Any]]
) -> None:
    """Writes ``dst``: ``src``'s tensors and metadata, with ``keys`` ({key: (type, value)})
    added or replaced (a chat template, a vocabulary, a key a converter left out)."""
    source = open(src)
    writer = GGUFWriter(dst)
    for key, value in source.metadata.items():
        if key not in keys and key != "general.alignment":
            writer.add(key, value, source.metadata_types[key])
    for key, (type_name, value) in keys.items():
        writer.add(key, value, type_name)
    for t in source.tensors:
        writer.add_tensor(t.name, source.tensor_bytes(t.name).tobytes(), t.type, t.shape)
    writer.write()
