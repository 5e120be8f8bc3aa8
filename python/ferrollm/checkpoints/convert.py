"""``ferrollm convert``: a Hugging Face Llama, Mistral or Mixtral checkpoint to GGUF, streamed
tensor by tensor into any GGUF type (llama.cpp's convert_hf_to_gguf.py, then llama-quantize, in
one pass).

    ferrollm.convert("Mistral-7B-v0.1/", "mistral.gguf", outtype="q8_0")

Metadata keys and values are those llama.cpp's converter writes for these architectures, so
files from either tool load the same way.
"""

from __future__ import annotations

import os
import re
import tempfile
from typing import Any

import numpy as np

from ferrollm.atomic import check_output
from ferrollm.checkpoints.checkpoint import CheckpointError, HFCheckpoint
from ferrollm.checkpoints.exl2 import EXL2Checkpoint, quant_method
from ferrollm.checkpoints.export import Progress, gguf_tensors, write_gguf_model
from ferrollm.text import hf_vocab


def _find(config: dict, *keys):
    return next((config[k] for k in keys if config.get(k) is not None), None)


def title(model_id: str) -> str:
    """A directory name as llama.cpp's converter titles it: words split at '-', lower-case words
    capitalised unless they are versions or numbers ("mistral-7b-v0.1" -> "Mistral 7b v0.1")."""
    return " ".join(w.title() if w.islower() and not re.match(r"^(v\d+(?:\.\d+)*|\d.*)$", w) else w
                    for w in model_id.strip().replace("-", " ").split())  # fmt: skip


def _rounded(n: int) -> str:
    for limit, scale, suffix in ((1e12, 1e-12, "T"), (1e9, 1e-9, "B"), (1e6, 1e-6, "M")):
        if n > limit:
            break
    else:
        scale, suffix = 1e-3, "K"
    v = n * scale
    digits = max(2 - len(str(round(v)).lstrip("0")), 0)
    return f"{v:.{digits}f}{suffix}"


def size_label(shapes: list[tuple[str, tuple[int, ...]]]) -> str:
    """general.size_label: "4.2M", or "8x7.2B" for a mixture of experts (shared weights plus one
    expert's), from the GGUF tensors' shapes."""
    shared = expert = n_expert = 0
    for name, shape in shapes:
        size = int(np.prod(shape))
        if "_exps." in name and len(shape) >= 3:
            n_expert, expert = shape[-3], expert + size // shape[-3]
        else:
            shared += size
    return f"{n_expert}x{_rounded(shared + expert)}" if n_expert else _rounded(shared + expert)


def llama_metadata(config: dict, model_dir: str | None, name: str | None = None,
                   size: str | None = None) -> list[tuple[str, str | None, Any]]:  # fmt: skip
    """(key, GGUF type, value) for a llama-family model described by a Hugging Face config,
    with the tokenizer of ``model_dir``."""
    md: list[tuple[str, str | None, Any]] = [
        ("general.architecture", "str", "llama"),
        ("general.type", "str", "model"),
    ]
    if name:
        md.append(("general.name", "str", name))
    if size:
        md.append(("general.size_label", "str", size))
    md += [("llama.block_count", "u32", int(config["num_hidden_layers"]))]
    ctx = _find(config, "max_position_embeddings", "n_ctx", "n_positions")
    if ctx is not None:
        md.append(("llama.context_length", "u32", int(ctx)))
    md += [("llama.embedding_length", "u32", int(config["hidden_size"])),
           ("llama.feed_forward_length", "u32", int(config["intermediate_size"])),
           ("llama.attention.head_count", "u32", int(config["num_attention_heads"]))]  # fmt: skip
    if config.get("num_key_value_heads") is not None:
        md.append(("llama.attention.head_count_kv", "u32", int(config["num_key_value_heads"])))
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if (rope.get("rope_type") or rope.get("type")) == "linear" and rope.get("factor") is not None:
        md += [
            ("llama.rope.scaling.type", "str", "linear"),
            ("llama.rope.scaling.factor", "f32", float(rope["factor"])),
        ]
    theta = rope.get("rope_theta", config.get("rope_theta"))
    if theta is not None:
        md.append(("llama.rope.freq_base", "f32", float(theta)))
    if config.get("rms_norm_eps") is not None:
        md.append(("llama.attention.layer_norm_rms_epsilon", "f32", float(config["rms_norm_eps"])))
    head_dim = config.get("head_dim") or int(config["hidden_size"]) // int(config["num_attention_heads"])
    if config.get("head_dim") or not config.get("num_local_experts"):
        # transformers' Llama and Mistral configs always carry head_dim; Mixtral's only if given
        md += [
            ("llama.attention.key_length", "u32", int(head_dim)),
            ("llama.attention.value_length", "u32", int(head_dim)),
        ]
    if config.get("num_local_experts"):
        md += [("llama.expert_count", "u32", int(config["num_local_experts"])),
               ("llama.expert_used_count", "u32", int(config["num_experts_per_tok"]))]  # fmt: skip
    md.append(("general.file_type", "u32", 1))  # replaced by the writer
    md.append(("llama.vocab_size", "u32", int(config["vocab_size"])))
    md.append(("llama.rope.dimension_count", "u32", int(head_dim)))
    md.append(("general.quantization_version", "u32", 2))
    if model_dir:
        vocab = hf_vocab.gguf_vocab(model_dir, int(config["vocab_size"]))
        md += [(k, hf_vocab.TYPES.get(k), v) for k, v in vocab.items()]
    return md


def open_model_dir(model_dir: str | os.PathLike):
    """A Hugging Face directory as a tensor source: float safetensors, or EXL2 (ExLlamaV2's
    quantized layers, dequantized exactly as they are read)."""
    method = quant_method(model_dir)
    if method == "exl2":
        return EXL2Checkpoint(model_dir)
    if method is not None:
        raise CheckpointError(f"{os.fspath(model_dir)}: quantization method {method!r} is not supported "
                              "(float checkpoints and EXL2 are)")  # fmt: skip
    ck = HFCheckpoint(model_dir)
    if any(n.endswith(".q_weight") for n in ck.names()):  # EXL2 layers, the config's mark lost
        ck.close()
        return EXL2Checkpoint(model_dir)
    for name in ck.names():
        dtype = ck.stored_dtype(name)
        if dtype not in ("F32", "F16", "BF16", "F64"):
            ck.close()
            # Read as floats they would overflow into NaN weights.
            raise CheckpointError(f"{os.fspath(model_dir)}: tensor {name} is {dtype}: the weights of a float "
                                  "checkpoint are F32, F16 or BF16 (integer tensors are a quantized layout "
                                  "this converter does not read)")  # fmt: skip
    return ck


def convert(model_dir: str | os.PathLike, out: str | os.PathLike, outtype: str = "auto", imatrix=None,
            threads: int | None = None, progress: Progress | None = None, target_bpw: float | None = None,
            **allocation) -> dict[str, str]:  # fmt: skip
    """Write ``out`` from the Hugging Face directory ``model_dir``; returns {tensor: type}.
    ``outtype``: auto (BF16 for a BF16 checkpoint, else F16, as llama.cpp; F16 for EXL2,
    which holds its dequantized weights exactly), f32, f16, bf16, q8_0, any tensor type or
    mix (Q4_K_M, IQ2_XS with ``imatrix``, ...). An EXL2 directory (ExLlamaV2) is read too.
    ``target_bpw`` instead of a type: every tensor's type chosen by measurement
    (:func:`convert_to_target`; ``calibration``, ``measurement`` and the other options of
    :func:`ferrollm.quant.allocate.quantize_to_target` pass through)."""
    check_output(out, [model_dir, imatrix, allocation.get("calibration")])
    if target_bpw is not None:
        if outtype.lower() != "auto":
            raise ValueError(f"give an output type ({outtype}) or a target bpw, not both: the allocation "
                             "chooses every tensor's type")  # fmt: skip
        result = convert_to_target(model_dir, out, target_bpw, imatrix=imatrix, threads=threads,
                                   write_progress=progress, **allocation)  # fmt: skip
        return result.written
    ck = open_model_dir(model_dir)
    try:
        if outtype.lower() == "auto":
            first = next((n for n in ck.names() if len(ck.shape(n)) > 1), None)
            outtype = "bf16" if first and ck.stored_dtype(first) == "BF16" else "f16"
        name = title(os.path.basename(os.path.normpath(os.fspath(model_dir))))
        size = size_label([(n, s) for n, s, _ in gguf_tensors(ck)])
        md = llama_metadata(ck.config, os.fspath(model_dir), name, size)
        return write_gguf_model(out, ck, md, outtype, imatrix=imatrix, threads=threads, progress=progress)
    finally:
        ck.close()


def convert_to_target(model_dir: str | os.PathLike, out: str | os.PathLike, target_bpw: float, **options):
    """``out`` at ``target_bpw`` bits per weight, each tensor's type chosen by measurement
    (:mod:`ferrollm.allocate`) against the model converted losslessly (``auto``: F16 for EXL2),
    written beside ``out`` for the measurement and deleted after it. That file is the same
    bytes on every run, so a saved ``measurement`` is reused. Returns the
    allocation's :class:`ferrollm.quant.allocate.Result`."""
    from ferrollm.quant.allocate import Target, quantize_to_target

    check_output(out, [model_dir, options.get("imatrix"), options.get("calibration")])
    out = os.path.abspath(os.fspath(out))
    if os.path.isdir(out):
        raise IsADirectoryError(f"output {out} is a directory")
    fd, lossless = tempfile.mkstemp(
        prefix=f".{os.path.basename(out)}.", suffix=".f16.gguf", dir=os.path.dirname(out)
    )
    os.close(fd)
    try:
        convert(model_dir, lossless, "auto", threads=options.get("threads"))
        return quantize_to_target(lossless, out, Target(bpw=target_bpw), **options)
    finally:
        os.unlink(lossless)
