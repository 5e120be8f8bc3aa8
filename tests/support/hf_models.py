"""Tiny random Hugging Face checkpoints (Llama, Mistral, Mixtral in either expert layout),
written with numpy: config.json, safetensors (F32/F16/BF16, optionally sharded) and a
tokenizer (Mistral's real tokenizer.model from mistral-common, or a small byte-level BPE
tokenizer.json)."""

from __future__ import annotations

import json
import os

import numpy as np
from ferrollm.checkpoints import safetensors_io

from .tiny_tokenizers import bpe_tokenizer


def mistral_tokenizer_model() -> str | None:
    try:
        import mistral_common
    except ImportError:
        return None
    path = os.path.join(os.path.dirname(mistral_common.__file__), "data", "tokenizer.model.v1")
    return path if os.path.isfile(path) else None


def config(arch: str = "llama", layers: int = 2, hidden: int = 64, ff: int = 128, heads: int = 4,
           kv_heads: int = 2, vocab: int = 320, experts: int = 4) -> dict:  # fmt: skip
    cfg = {
        "architectures": [{"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                           "mixtral": "MixtralForCausalLM"}[arch]],
        "model_type": arch, "hidden_size": hidden, "intermediate_size": ff, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "vocab_size": vocab,
        "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32",
    }  # fmt: skip
    if arch == "mixtral":
        cfg.update(num_local_experts=experts, num_experts_per_tok=2)
    return cfg


def tensors(cfg: dict, seed: int = 0, fused: bool = False) -> dict[str, np.ndarray]:
    """Random weights under Hugging Face names (norms around 1, matrices small)."""
    rng = np.random.default_rng(seed)
    h, ff, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = h // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * hd

    def mat(*shape):
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    out = {"model.embed_tokens.weight": mat(v, h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(h)).astype(np.float32)
        out[p + "self_attn.q_proj.weight"] = mat(h, h)
        out[p + "self_attn.k_proj.weight"] = mat(kv, h)
        out[p + "self_attn.v_proj.weight"] = mat(kv, h)
        out[p + "self_attn.o_proj.weight"] = mat(h, h)
        out[p + "post_attention_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(h)).astype(np.float32)
        n_exp = cfg.get("num_local_experts")
        if not n_exp:
            out[p + "mlp.gate_proj.weight"] = mat(ff, h)
            out[p + "mlp.up_proj.weight"] = mat(ff, h)
            out[p + "mlp.down_proj.weight"] = mat(h, ff)
        elif fused:
            out[p + "mlp.gate.weight"] = mat(n_exp, h)
            out[p + "mlp.experts.gate_up_proj"] = mat(n_exp, 2 * ff, h)
            out[p + "mlp.experts.down_proj"] = mat(n_exp, h, ff)
        else:
            out[p + "block_sparse_moe.gate.weight"] = mat(n_exp, h)
            for e in range(n_exp):
                for w, shape in (("w1", (ff, h)), ("w2", (h, ff)), ("w3", (ff, h))):
                    out[f"{p}block_sparse_moe.experts.{e}.{w}.weight"] = mat(*shape)
    out["model.norm.weight"] = (1 + 0.1 * rng.standard_normal(h)).astype(np.float32)
    if not cfg.get("tie_word_embeddings"):
        out["lm_head.weight"] = mat(v, h)
    return out


def write_model(path: str, arch: str = "llama", seed: int = 0, dtype: str = "F32", shards: int = 1,
                fused: bool = False, tokenizer: str = "sentencepiece", weights: dict | None = None,
                **shape) -> dict[str, np.ndarray]:  # fmt: skip
    """Write a checkpoint directory; returns its tensors as float32 (after dtype rounding)."""
    os.makedirs(path, exist_ok=True)
    cfg = config(arch, **shape)
    cfg["torch_dtype"] = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[dtype]
    w = weights if weights is not None else tensors(cfg, seed, fused)
    names = list(w)
    if shards == 1:
        safetensors_io.save(os.path.join(path, "model.safetensors"), w, dtype, {"format": "pt"})
    else:
        index = {}
        for s in range(shards):
            part = {n: w[n] for n in names[s::shards]}
            fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            safetensors_io.save(os.path.join(path, fname), part, dtype, {"format": "pt"})
            index.update({n: fname for n in part})
        with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": index}, f)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    tc = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
          "add_eos_token": False, "chat_template": "{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"}  # fmt: skip
    if tokenizer == "sentencepiece":
        import shutil

        shutil.copyfile(mistral_tokenizer_model(), os.path.join(path, "tokenizer.model"))
    elif tokenizer == "bpe":
        bpe_tokenizer(os.path.join(path, "tokenizer.json"), cfg["vocab_size"])
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(tc, f)
    rounded = {}
    for n, a in w.items():
        if dtype == "BF16":
            rounded[n] = safetensors_io.bf16_to_f32(safetensors_io.f32_to_bf16(a))
        else:
            rounded[n] = a.astype({"F32": np.float32, "F16": np.float16}[dtype]).astype(np.float32)
    return rounded
