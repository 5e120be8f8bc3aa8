"""Write a tensor source (a checkpoint, a merge, a built MoE) as a GGUF file or a Hugging Face
directory, tensor by tensor: each output tensor is produced, converted or quantized, written
and dropped before the next, so peak memory is about one output tensor with its inputs (for a
stacked Mixtral expert tensor, all experts of one projection of one layer).

Output types: ``f32``/``f16``/``bf16``/``q8_0`` follow llama.cpp's converter (norms, other 1-D
tensors and MoE routers stay F32; Q8_0 falls back to F16 for rows that are not whole blocks);
any other name is a ``ferrollm quantize`` mix (Q4_K_M, IQ2_M, ...) or, if not a mix, one tensor
type for every matrix, quantized as it streams (with an importance matrix when given).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable

import numpy as np

from ferrollm import _core
from ferrollm.atomic import AtomicDir
from ferrollm.checkpoints import llama_layout
from ferrollm.checkpoints.checkpoint import n_heads
from ferrollm.checkpoints.safetensors_io import f32_to_bf16, write_stream
from ferrollm.gguf import open as open_gguf
from ferrollm.gguf.stream import PlannedTensor, write_gguf_stream
from ferrollm.quant.imatrix import Imatrix
from ferrollm.quant.mixes import MIXES, ModelShape, fallback_type, mix_name, needs_imatrix, tensor_type
from ferrollm.quant.writer import WRITABLE_TYPES, keeps_f32, quantize_tensor
from ferrollm.text.tokenizer import Tokenizer

Progress = Callable[[int, int, str], None]
CONVERT_TYPES = {"F32": 0, "F16": 1, "Q8_0": 7, "BF16": 32}  # outtype -> llama_ftype (general.file_type)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "chat_template.jinja", "generation_config.json")  # fmt: skip


def gguf_tensors(source) -> list[tuple[str, tuple[int, ...], Callable[[], np.ndarray]]]:
    """(GGUF name, numpy shape, producer of float32 values) for every tensor of ``source``, in
    GGUF layout: Q/K rows permuted for rope, Mixtral experts stacked."""
    heads = n_heads(source.config)
    out, stacked = [], {}
    for name in source.names():
        target = llama_layout.gguf_name(name)
        if target is None:
            continue
        expert = llama_layout.expert_of(name)
        if expert is None:
            out.append((target, tuple(source.shape(name)),
                        lambda n=name: llama_layout.to_gguf_layout(n, source.get(n), *heads)))  # fmt: skip
            continue
        if target not in stacked:
            stacked[target] = []
            out.append((target, None, None))
        stacked[target].append((expert[0], name))
    for i, (target, shape, fn) in enumerate(out):
        if fn is None:
            members = [n for _, n in sorted(stacked[target])]
            shape = (len(members), *source.shape(members[0]))
            out[i] = (target, shape, lambda ms=members: np.stack([source.get(m) for m in ms]))
    return out


def _model_shape(names_shapes, config: dict) -> ModelShape:
    n_head, n_kv = n_heads(config)
    return ModelShape(int(config["num_hidden_layers"]), int(config.get("num_local_experts", 0) or 0),
                      n_head // n_kv, "output.weight" not in dict(names_shapes))  # fmt: skip


def plan_types(names_shapes: list[tuple[str, tuple]], config: dict, outtype: str,
               has_imatrix: bool = False) -> tuple[dict[str, str], int]:  # fmt: skip
    """({GGUF name: tensor type}, general.file_type) for an output type or mix."""
    key = outtype.upper()
    types = {}
    if key in CONVERT_TYPES:
        for name, shape in names_shapes:
            if len(shape) <= 1 or name.endswith("_norm.weight") or "ffn_gate_inp" in name:
                types[name] = "F32"
            elif key == "Q8_0" and shape[-1] % 32:
                types[name] = "F16"
            else:
                types[name] = key
        return types, CONVERT_TYPES[key]
    try:
        mix, pure = mix_name(key), False
    except ValueError:
        if key not in WRITABLE_TYPES:
            raise ValueError(f"unknown output type {outtype!r}: f32, f16, bf16, q8_0, a tensor type "
                             f"({', '.join(WRITABLE_TYPES)}) or a mix ({', '.join(MIXES)})") from None  # fmt: skip
        mix, pure = key, True
    shape = _model_shape(names_shapes, config)
    for name, s in names_shapes:
        if keeps_f32(name, s):
            types[name] = "F32"
            continue
        t = key if pure else tensor_type(mix, name, shape, has_imatrix)
        types[name] = fallback_type(t, s[-1])
        if not has_imatrix and needs_imatrix(mix, name, types[name]):
            raise ValueError(
                f"{outtype} needs an importance matrix for {name} ({types[name]}; --imatrix FILE)"
            )
    return types, MIXES.get(mix, (0,))[0]


def _encode(values: np.ndarray, t: str, im, threads) -> np.ndarray:
    if t == "BF16":
        return f32_to_bf16(values)
    return quantize_tensor(values, t, im, threads)[0]


def write_gguf_model(path, source, metadata: list[tuple[str, str | None, object]], outtype: str = "f16",
                     imatrix: Imatrix | str | None = None, threads: int | None = None,
                     progress: Progress | None = None) -> dict[str, str]:  # fmt: skip
    """Stream ``source`` into a GGUF at ``path`` after ``metadata`` (general.file_type added);
    returns {tensor: type}."""
    if isinstance(imatrix, (str, os.PathLike)):
        imatrix = Imatrix.load(imatrix)
    tensors = gguf_tensors(source)
    types, file_type = plan_types(
        [(n, s) for n, s, _ in tensors], source.config, outtype, imatrix is not None
    )
    metadata = [m for m in metadata if m[0] != "general.file_type"]
    at = next((i for i, m in enumerate(metadata) if not m[0].startswith("general.")), len(metadata))
    metadata.insert(at, ("general.file_type", "u32", file_type))
    plan = [PlannedTensor(n, s, types[n]) for n, s, _ in tensors]
    total = sum(int(np.prod(s)) for _, s, _ in tensors)

    def produce():
        done = 0
        for name, shape, fn in tensors:
            values = fn()
            if tuple(values.shape) != tuple(shape):
                raise ValueError(f"{name}: expected shape {shape}, got {values.shape}")
            t, im = types[name], None
            if imatrix is not None and t not in ("F32", "F16", "BF16"):
                im = imatrix.for_tensor(name, int(np.prod(shape[:-2])) if len(shape) > 2 else 1, shape[-1])
            blob = _encode(values, t, im, threads)
            done += values.size
            if progress:  # before the yield: the writer stops pulling after the last tensor
                progress(done, total, name)
            yield blob

    write_gguf_stream(path, metadata, plan, produce(), verify=check_loads)
    return types


def check_loads(path: str) -> None:
    """Raises ValueError unless the GGUF at ``path`` loads in ferrollm and holds no NaN or Inf:
    every converted, merged or built model is checked before it appears (a config that
    disagrees with its tensors, a tokenizer the engine refuses, weights that overflowed)."""
    try:
        Tokenizer(open_gguf(path).metadata)
        _core.Model(path, n_ctx=8, n_threads=1, check_tensors=True)
    except (ValueError, KeyError, OSError) as e:
        raise ValueError(f"the output would not load in ferrollm, so it was not written: {e}") from None


def write_hf_model(path, source, dtype: str = "BF16", tokenizer_dir: str | None = None,
                   progress: Progress | None = None) -> None:  # fmt: skip
    """A Hugging Face directory: config.json (``num_hidden_layers`` and ``torch_dtype`` set),
    one model.safetensors streamed tensor by tensor, and the tokenizer files of ``tokenizer_dir``."""
    names = source.names()
    plan = [(n, tuple(source.shape(n)), dtype) for n in names]
    total = sum(int(np.prod(s)) for _, s, _ in plan)

    def produce():
        done = 0
        for name in names:
            values = source.get(name)
            yield values
            done += values.size
            if progress:
                progress(done, total, name)

    torch_dtype = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[dtype]
    with AtomicDir(path) as tmp:
        write_stream(os.path.join(tmp, "model.safetensors"), plan, produce(), {"format": "pt"})
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            json.dump(dict(source.config, torch_dtype=torch_dtype), f, indent=2)
        if tokenizer_dir and os.path.isdir(tokenizer_dir):
            for name in TOKENIZER_FILES:
                if os.path.isfile(os.path.join(tokenizer_dir, name)):
                    shutil.copyfile(os.path.join(tokenizer_dir, name), os.path.join(tmp, name))
