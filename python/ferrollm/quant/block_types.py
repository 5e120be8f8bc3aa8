"""Block types of GGUF and their dequantization (Rust kernels chosen at run time)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ferrollm import _core


@dataclass(frozen=True)
class QuantType:
    name: str
    id: int
    block_elems: int
    block_bytes: int
    can_dequantize: bool

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.block_bytes / self.block_elems


TYPES: dict[str, QuantType] = {row[0]: QuantType(*row) for row in _core.type_table()}
TYPES_BY_ID: dict[int, QuantType] = {t.id: t for t in TYPES.values()}


def quant_type(name: str) -> QuantType:
    try:
        return TYPES[name.upper()]
    except KeyError:
        raise ValueError(f"unknown tensor type {name!r}; known: {', '.join(TYPES)}") from None


def as_bytes(data) -> np.ndarray:
    """A flat uint8 view of bytes-like or array data (no copy when already contiguous)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    return np.ascontiguousarray(data).view(np.uint8).reshape(-1)


def dequantize(data, type_name: str, isa: str | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """Dequantize raw blocks of ``type_name`` to a flat float32 array (``out`` if given: a
    contiguous float32 array of the right length, filled in place).

    ``isa`` forces a kernel tier ("scalar", "avx2"); default is the best the CPU supports
    (lowered by the ``FERROLLM_ISA`` environment variable).
    """
    return _core.dequantize(as_bytes(data), quant_type(type_name).name, isa, out)


def quantize(x, type_name: str) -> np.ndarray:
    """Quantize float values (a whole number of blocks) to raw blocks of ``type_name`` with the
    reference quantizer (llama.cpp's ``quantize_row_*_ref``: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
    Q8_K, Q2_K..Q6_K, IQ4_NL, IQ4_XS)."""
    values = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    return _core.quantize(values, quant_type(type_name).name)


def kernel_isa(type_name: str, isa: str | None = None) -> str | None:
    """The kernel tier that :func:`dequantize` uses for ``type_name``."""
    return _core.kernel_isa(quant_type(type_name).name, isa)


def isa_detected() -> str:
    return _core.isa_detected()


def isa_active() -> str:
    return _core.isa_active()


ThreadPool = _core.ThreadPool


def matmul(
    weights, type_name: str, rows: int, cols: int, x, isa: str | None = None, pool: ThreadPool | None = None
) -> np.ndarray:
    """``x @ W.T`` for a ``rows`` x ``cols`` weight matrix given as raw blocks of ``type_name``
    (rows of whole blocks, as stored in a GGUF file) and float activations ``x`` of shape
    (cols,) or (n, cols). Activations are quantized on the fly (Q8_0 or Q8_K) and the integer
    kernels of tier ``isa`` run on ``pool`` (default: one thread per physical core)."""
    xs = np.ascontiguousarray(x, dtype=np.float32)
    y = _core.matmul(
        as_bytes(weights), quant_type(type_name).name, rows, cols, xs.reshape(-1, cols), isa, pool
    )
    return y[0] if xs.ndim == 1 else y
