"""Quantize GGUF models and single tensors, with or without an importance matrix.

``quantize_file`` is llama-quantize: a type or named mix (Q4_K_M, IQ2_M, ...) picks each
tensor's type by llama.cpp's rules (``quant_mixes``), or with ``pure`` every weight matrix gets
the one type. Norms and MoE routers stay F32, as llama.cpp keeps them. With an importance
matrix every type runs its importance-weighted search; the 1-2 bit mixes require one.
``quantize_tensor`` does one array, for experiments.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable

import numpy as np

from ferrollm import _core
from ferrollm.atomic import check_output
from ferrollm.gguf import GGUFFile, GGUFWriter
from ferrollm.quant import block_types
from ferrollm.quant.imatrix import Imatrix
from ferrollm.quant.mixes import MIXES, ModelShape, fallback_type, mix_name, needs_imatrix, tensor_type

# Tensor types our quantizers write (F32/F16 are plain conversions): the Rust type table's.
WRITABLE_TYPES = tuple(_core.writable_types())

# general.file_type of a --pure file of one tensor type: the mix of that default type.
_PURE_FILE_TYPE = {"Q3_K": 11, "Q4_K": 14, "Q5_K": 16}


def keeps_f32(name: str, numpy_shape: tuple[int, ...]) -> bool:
    """Tensors that stay F32 whatever the target type: vectors (norms, biases) and MoE routers
    (tiny, and routing decisions are sensitive to them)."""
    return len(numpy_shape) < 2 or "ffn_gate_inp" in name


def quantize_tensor(
    values: np.ndarray,
    type_name: str,
    imatrix: np.ndarray | None = None,
    threads: int | None = None,
) -> tuple[np.ndarray, str | None, list[int] | None]:
    """(data, type, ggml shape) for ``GGUFWriter.add_tensor``: a float array of numpy shape
    (..., rows, cols) quantized to ``type_name`` along its rows. ``imatrix`` holds the mean
    squared activation of each column: shape (cols,), or (n_mat, cols) for a stack of n_mat
    matrices (MoE experts, the leading axis of ``values``)."""
    t = block_types.quant_type(type_name).name
    if t not in WRITABLE_TYPES:
        raise ValueError(f"cannot quantize to {t}; writable types: {', '.join(WRITABLE_TYPES)}")
    values = np.ascontiguousarray(values, dtype=np.float32)
    if t == "F32":
        return values, None, None
    if t == "F16":
        return values.astype(np.float16), None, None
    cols = values.shape[-1]
    block = block_types.quant_type(t).block_elems
    if cols % block:
        raise ValueError(f"rows of {cols} values are not a whole number of {t} blocks ({block})")
    shape = list(reversed(values.shape))
    if imatrix is None:
        return _core.quantize(values.reshape(-1), t, n_per_row=cols, threads=threads or 0), t, shape
    im = np.ascontiguousarray(imatrix, dtype=np.float32).reshape(-1, cols)
    if im.shape[0] == 1:
        return _core.quantize(values.reshape(-1), t, imatrix=im[0], threads=threads or 0), t, shape
    if int(np.prod(values.shape[:-2])) != im.shape[0]:
        raise ValueError(
            f"an importance matrix of {im.shape[0]} x {cols} does not fit a tensor of {values.shape}"
        )
    mats = values.reshape(im.shape[0], -1)
    parts = [_core.quantize(m, t, imatrix=i, threads=threads or 0) for m, i in zip(mats, im)]
    return np.concatenate(parts), t, shape


def _model_shape(f: GGUFFile) -> ModelShape:
    md = f.metadata
    arch = md.get("general.architecture", "llama")
    heads = int(md.get(f"{arch}.attention.head_count", 1))
    kv = int(md.get(f"{arch}.attention.head_count_kv", heads)) or heads
    names = {t.name for t in f.tensors}
    return ModelShape(int(md.get(f"{arch}.block_count", 0)), int(md.get(f"{arch}.expert_count", 0)),
                      heads // kv, "output.weight" not in names)  # fmt: skip


def plan_types(src: str | os.PathLike, type_name: str, pure: bool = False, has_imatrix: bool = False,
               token_embedding_type: str | None = None, output_tensor_type: str | None = None) -> dict[str, str]:  # fmt: skip
    """{tensor name: type} that ``quantize_file`` would write, without writing anything."""
    with GGUFFile(src) as f:
        return _plan(f, type_name, pure, has_imatrix, token_embedding_type, output_tensor_type)


def _plan(f: GGUFFile, type_name: str, pure: bool, has_imatrix: bool, token_embedding_type: str | None,
          output_tensor_type: str | None) -> dict[str, str]:  # fmt: skip
    overrides = {"token_embd.weight": token_embedding_type, "output.weight": output_tensor_type}
    shape = _model_shape(f)
    out = {}
    for info in f.tensors:
        if keeps_f32(info.name, info.numpy_shape):
            out[info.name] = "F32"
            continue
        if pure:
            t = block_types.quant_type(type_name).name
        else:
            t = tensor_type(type_name, info.name, shape, has_imatrix)
        if overrides.get(info.name):
            t = block_types.quant_type(overrides[info.name]).name
        out[info.name] = fallback_type(t, info.numpy_shape[-1])
    return out


def output_metadata(f: GGUFFile, file_type: int, imatrix: Imatrix | None) -> list[tuple[str, str, object]]:
    """(key, type, value) of a quantized file's metadata: the source's (its alignment, file type
    and quantize.* keys replaced), the file type, and where the importance matrix came from."""
    md_types = f.metadata_types
    out = [(key, md_types[key], value) for key, value in f.metadata.items()
           if key not in ("general.alignment", "general.file_type") and not key.startswith("quantize.")]  # fmt: skip
    out.append(("general.file_type", "u32", file_type))
    if imatrix is not None:
        out.append(("quantize.imatrix.entries_count", "i32", len(imatrix.entries)))
        out.append(("quantize.imatrix.chunks_count", "i32", imatrix.chunk_count))
        if imatrix.datasets:
            out.append(("quantize.imatrix.dataset", "str", imatrix.datasets[-1]))
    return out


def quantize_file(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    type_name: str,
    imatrix: Imatrix | str | os.PathLike | None = None,
    pure: bool = False,
    threads: int | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    token_embedding_type: str | None = None,
    output_tensor_type: str | None = None,
    tensor_types: dict[str, str] | None = None,
) -> dict[str, str]:
    """Write ``dst``: ``src`` with every weight matrix requantized (from its dequantized values)
    to the type ``type_name`` (a tensor type or a named mix) gives it; the two ``*_type``
    arguments override the token embedding's and the head's (llama-quantize's options), and
    ``tensor_types`` any tensor's (an allocation's choices; ``type_name`` then only names the
    file type). Returns {tensor name: type written}. ``progress(done_elements, total_elements,
    tensor name)`` follows the work."""
    check_output(dst, [src, imatrix])
    if pure:
        target = block_types.quant_type(type_name).name
        if target not in WRITABLE_TYPES:
            raise ValueError(f"cannot quantize to {target}; writable types: {', '.join(WRITABLE_TYPES)}")
        file_type = _PURE_FILE_TYPE.get(target, MIXES.get(target, (0, target))[0])
        mix = target
    else:
        mix = mix_name(type_name)
        file_type = MIXES[mix][0]
    if isinstance(imatrix, (str, os.PathLike)):
        imatrix = Imatrix.load(imatrix)
    with GGUFFile(src) as f:
        types = _plan(f, type_name, pure, imatrix is not None, token_embedding_type, output_tensor_type)
        types.update({n: block_types.quant_type(t).name for n, t in (tensor_types or {}).items()})
        missing = [n for n, t in types.items() if imatrix is None and needs_imatrix(mix, n, t)]
        if missing:
            raise ValueError(
                f"{mix} needs an importance matrix for {missing[0]} ({types[missing[0]]}; --imatrix FILE): without "
                "one 1-3 bit codebooks are garbage. Make one with `ferrollm imatrix -m MODEL -f CALIBRATION.txt`"
            )
        written: dict[str, str] = {}
        writer = GGUFWriter(dst)
        for key, type_id, value in output_metadata(f, file_type, imatrix):
            writer.add(key, value, type_id)
        total = sum(info.n_elements for info in f.tensors)
        done = 0
        for info in f.tensors:
            t = types[info.name]
            values = f.dequantize(info.name).reshape(info.numpy_shape)
            im = None
            if imatrix is not None and t not in ("F32", "F16"):
                n_mat = int(np.prod(info.numpy_shape[:-2])) if len(info.numpy_shape) > 2 else 1
                im = imatrix.for_tensor(info.name, n_mat, info.numpy_shape[-1])
            writer.add_tensor(info.name, *quantize_tensor(values, t, im, threads))
            written[info.name] = t
            done += info.n_elements
            if progress:
                progress(done, total, info.name)
        writer.write()
    return written


class ProgressBar:
    """A one-line progress bar on stderr: elements done, rate, the tensor being written."""

    def __init__(self, stream, width: int = 30):
        self.stream, self.width, self.start = stream, width, time.perf_counter()

    def __call__(self, done: int, total: int, name: str) -> None:
        frac = done / total if total else 1.0
        fill = int(self.width * frac)
        secs = time.perf_counter() - self.start
        left = f"~{secs * (total - done) / done:5.0f}s left" if 0 < done < total else " " * 12
        label = re.sub(r"\.weight$", "", name)[:32]
        self.stream.write(
            f"\r[{'#' * fill}{'.' * (self.width - fill)}] {100 * frac:5.1f}% {secs:6.1f}s {left} {label:<32}"
        )
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


class QuantizedTensor:
    """One quantized tensor: raw blocks with their type and numpy shape."""

    def __init__(self, data: np.ndarray, type_name: str, shape: tuple[int, ...]):
        self.data, self.type, self.shape = data, type_name, shape

    def dequantize(self) -> np.ndarray:
        if self.type in ("F32", "F16"):
            return np.asarray(self.data, np.float32).reshape(self.shape)
        return block_types.dequantize(self.data, self.type).reshape(self.shape)

    @property
    def bits_per_weight(self) -> float:
        return 8 * np.asarray(self.data).nbytes / int(np.prod(self.shape))

    def __repr__(self) -> str:
        return f"QuantizedTensor({self.type}, shape={self.shape}, {self.bits_per_weight:.4f} bpw)"
