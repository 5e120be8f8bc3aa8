"""``ferrollm convert``: a Hugging Face Llama, Mistral or Mixtral checkpoint to GGUF, streamed
tensor by tensor into any GGUF type (llama.cpp's convert_hf_to_gguf.py, then llama-quantize, in
one pass).

    ferrollm.convert("Mistral-7B-v0.1/", "mistral.gguf", outtype="q8_0")

Metadata keys and values are those llama.cpp's converter writes for these architectures, so
files from either tool load the same way.
"""

from __future__ import annotations

import os
from typing import Any

from ferrollm import hf_vocab
from ferrollm.checkpoint import HFCheckpoint
from ferrollm.export import Progress, write_gguf_model


def _find(config: dict, *keys):
    return next((config[k] for k in keys if config.get(k) is not None), None)


def llama_metadata(config: dict, model_dir: str | None, name: str | None = None) -> list[tuple[str, str | None, Any]]:
    """(key, GGUF type, value) for a llama-family model described by a Hugging Face config,
    with the tokenizer of ``model_dir``."""
    md: list[tuple[str, str | None, Any]] = [("general.architecture", "str", "llama"), ("general.type", "str", "model")]
    if name:
        md.append(("general.name", "str", name))
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
        md += [("llama.rope.scaling.type", "str", "linear"), ("llama.rope.scaling.factor", "f32", float(rope["factor"]))]
    theta = rope.get("rope_theta", config.get("rope_theta"))
    if theta is not None:
        md.append(("llama.rope.freq_base", "f32", float(theta)))
    if config.get("rms_norm_eps") is not None:
        md.append(("llama.attention.layer_norm_rms_epsilon", "f32", float(config["rms_norm_eps"])))
    if config.get("num_local_experts"):
        md += [("llama.expert_count", "u32", int(config["num_local_experts"])),
               ("llama.expert_used_count", "u32", int(config["num_experts_per_tok"]))]  # fmt: skip
    md.append(("general.file_type", "u32", 1))  # replaced by the writer
    md.append(("llama.vocab_size", "u32", int(config["vocab_size"])))
    head_dim = config.get("head_dim") or int(config["hidden_size"]) // int(config["num_attention_heads"])
    md.append(("llama.rope.dimension_count", "u32", int(head_dim)))
    md.append(("general.quantization_version", "u32", 2))
    if model_dir:
        vocab = hf_vocab.gguf_vocab(model_dir, int(config["vocab_size"]))
        md += [(k, hf_vocab.TYPES.get(k), v) for k, v in vocab.items()]
    return md


def convert(model_dir: str | os.PathLike, out: str | os.PathLike, outtype: str = "auto", imatrix=None,
            threads: int | None = None, progress: Progress | None = None) -> dict[str, str]:  # fmt: skip
    """Write ``out`` from the Hugging Face directory ``model_dir``; returns {tensor: type}.
    ``outtype``: auto (BF16 for a BF16 checkpoint, else F16, as llama.cpp), f32, f16, bf16,
    q8_0, any tensor type or mix (Q4_K_M, IQ2_XS with ``imatrix``, ...)."""
    ck = HFCheckpoint(model_dir)
    try:
        if outtype.lower() == "auto":
            first = next((n for n in ck.names() if len(ck.shape(n)) > 1), None)
            outtype = "bf16" if first and ck.stored_dtype(first) == "BF16" else "f16"
        name = os.path.basename(os.path.normpath(os.fspath(model_dir)))
        md = llama_metadata(ck.config, os.fspath(model_dir), name)
        return write_gguf_model(out, ck, md, outtype, imatrix=imatrix, threads=threads, progress=progress)
    finally:
        ck.close()
