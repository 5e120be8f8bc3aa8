"""``ferrollm.quantize``: one entry point for a model file (a type or mix, or a target size
chosen by measurement) and for one tensor."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ferrollm.quant import block_types
from ferrollm.quant.allocate import Target, parse_size, quantize_to_target
from ferrollm.quant.writer import QuantizedTensor, quantize_file, quantize_tensor


def quantize(src, dst_or_type, type_name: str | None = None, *, imatrix=None, pure: bool = False,
             threads: int | None = None, progress: Callable[[int, int, str], None] | None = None,
             target_bpw: float | None = None, target_size: int | str | None = None, fit_ram: int | str | None = None,
             n_ctx: int = 4096, calibration=None, measurement=None, **allocation):  # fmt: skip
    """Quantize a model file or one tensor.

    - ``quantize("in.gguf", "out.gguf", "Q4_K_M", imatrix="imatrix.dat")`` writes a file as
      ``ferrollm quantize`` does and returns {tensor name: type}.
    - ``quantize("in.gguf", "out.gguf", target_bpw=3.3, imatrix=..., calibration=text,
      measurement="m.json")`` chooses every tensor's type by measurement to fit the target
      (or ``target_size`` bytes for the whole file, or ``fit_ram`` with context ``n_ctx``):
      see :mod:`ferrollm.quant.allocate`, whose other options (``types``, ``anchors``, ``n_tokens``)
      pass through. ``calibration`` is the text, or a path to it.
    - ``quantize(array, "IQ2_XS", imatrix=column_importance)`` quantizes one float array along
      its last axis and returns a :class:`QuantizedTensor` (``.dequantize()`` to measure the
      error). ``imatrix`` is each column's mean squared activation: (cols,) or (n_mat, cols).
    """
    if isinstance(src, np.ndarray):
        if type_name is not None:
            raise TypeError("quantize(array, type): give the type second, no output path")
        data, t, _ = quantize_tensor(src, dst_or_type, imatrix, threads)
        return QuantizedTensor(data, t or block_types.quant_type(dst_or_type).name, tuple(src.shape))
    if target_bpw is not None or target_size is not None or fit_ram is not None:
        if type_name is not None:
            raise TypeError("quantize(src, dst, type) or quantize(src, dst, target_...=), not both")
        target = Target(bpw=target_bpw, file_bytes=None if target_size is None else parse_size(target_size),
                        ram_bytes=None if fit_ram is None else parse_size(fit_ram), n_ctx=n_ctx)  # fmt: skip
        result = quantize_to_target(src, dst_or_type, target, imatrix=imatrix, threads=threads,
                                    calibration=calibration, measurement=measurement, write_progress=progress,
                                    **allocation)  # fmt: skip
        return result.written
    if type_name is None:
        raise TypeError("quantize(src, dst, type): the type is missing")
    return quantize_file(
        src, dst_or_type, type_name, imatrix=imatrix, pure=pure, threads=threads, progress=progress
    )
