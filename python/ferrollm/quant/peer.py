"""llama.cpp's quantizer, driven through llama-cpp-python's shared library, for side-by-side
comparisons in benchmarks and tests (the ``[peer]`` extra; nothing else imports this).

``llama_model_quantize`` takes the importance matrix as an array of (name, values, size)
records, the values being mean squared activations, as llama-quantize passes them after
loading an imatrix file; ``peer_quantize`` builds that array from an :class:`Imatrix`.
"""

from __future__ import annotations

import ctypes
import functools
import os

import numpy as np

from ferrollm.quant import block_types
from ferrollm.quant.imatrix import Imatrix
from ferrollm.quant.mixes import MIXES, mix_name


class _ImatrixData(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("data", ctypes.POINTER(ctypes.c_float)),
        ("size", ctypes.c_size_t),
    ]


class _QuantizeParams(ctypes.Structure):  # llama.h's llama_model_quantize_params (0.3.36)
    _fields_ = [
        ("nthread", ctypes.c_int32), ("ftype", ctypes.c_int), ("output_tensor_type", ctypes.c_int),
        ("token_embedding_type", ctypes.c_int), ("allow_requantize", ctypes.c_bool),
        ("quantize_output_tensor", ctypes.c_bool), ("only_copy", ctypes.c_bool), ("pure", ctypes.c_bool),
        ("keep_split", ctypes.c_bool), ("dry_run", ctypes.c_bool), ("imatrix", ctypes.c_void_p),
        ("kv_overrides", ctypes.c_void_p), ("tt_overrides", ctypes.c_void_p), ("prune_layers", ctypes.c_void_p),
        ("max_buf_size", ctypes.c_size_t),
    ]  # fmt: skip


@functools.cache
def _library() -> ctypes.CDLL:
    import llama_cpp  # the peer: imported only here

    lib = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libllama.so"))
    lib.llama_model_quantize_default_params.restype = _QuantizeParams
    lib.llama_model_quantize.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(_QuantizeParams)]
    lib.llama_model_quantize.restype = ctypes.c_uint32
    lib.llama_backend_init()
    return lib


def peer_quantize(src: str | os.PathLike, dst: str | os.PathLike, type_name: str, imatrix: Imatrix | None = None,
                  pure: bool = False, threads: int = 0, token_embedding_type: str | None = None,
                  output_tensor_type: str | None = None) -> None:  # fmt: skip
    """Quantize ``src`` to ``dst`` with llama.cpp's ``llama_model_quantize``."""
    lib = _library()
    params = lib.llama_model_quantize_default_params()
    params.ftype = MIXES[mix_name(type_name)][0]
    params.allow_requantize = True
    params.pure = pure
    params.nthread = threads
    if token_embedding_type:
        params.token_embedding_type = block_types.quant_type(token_embedding_type).id
    if output_tensor_type:
        params.output_tensor_type = block_types.quant_type(output_tensor_type).id
    keep = []  # the arrays must outlive the call
    if imatrix is not None:
        records = (_ImatrixData * (len(imatrix.entries) + 1))()
        for i, (name, entry) in enumerate(sorted(imatrix.entries.items())):
            values = np.ascontiguousarray(entry.mean_squares().reshape(-1), np.float32)
            keep.append(values)
            records[i] = _ImatrixData(
                name.encode(), values.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), values.size
            )
        records[len(imatrix.entries)] = _ImatrixData(None, None, 0)
        keep.append(records)
        params.imatrix = ctypes.cast(records, ctypes.c_void_p)
    rc = lib.llama_model_quantize(os.fsencode(src), os.fsencode(dst), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize failed ({rc}) for {type_name}")
