"""The llama family's tensors under their two names: Hugging Face's (``model.layers.3.self_attn.q_proj.weight``)
and GGUF's (``blk.3.attn_q.weight``), and the layout changes between them.

- Q and K rows: Hugging Face stores each head's rotary pairs as two halves (rotate_half);
  GGUF's rope (llama.cpp's ``LlamaModel.permute``) wants them interleaved, so rows are permuted.
- Mixtral experts: one matrix per expert in Hugging Face (``experts.E.w1/w2/w3``), one stacked
  3-D tensor per projection in GGUF (``ffn_gate_exps``/``ffn_down_exps``/``ffn_up_exps``).

Everything else is a rename. Merges and the MoE builder work on Hugging Face names (what
mergekit's filters match), so a GGUF input is mapped back here and a GGUF output forward.
"""

from __future__ import annotations

import re

import numpy as np

# Hugging Face name (layer part, after ``model.layers.N.``) -> GGUF name (after ``blk.N.``).
LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "block_sparse_moe.gate.weight": "ffn_gate_inp.weight",
}
GLOBAL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
# Mixtral's expert projections: w1 = gate, w2 = down, w3 = up.
EXPERT_NAMES = {"w1": "ffn_gate_exps.weight", "w2": "ffn_down_exps.weight", "w3": "ffn_up_exps.weight"}

_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
_EXPERT = re.compile(r"block_sparse_moe\.experts\.(\d+)\.(w[123])\.weight")


def layer_of(hf_name: str) -> int | None:
    m = _LAYER.fullmatch(hf_name)
    return int(m.group(1)) if m else None


def expert_of(hf_name: str) -> tuple[int, str] | None:
    """(expert index, GGUF stacked name) for a classic-layout Mixtral expert matrix."""
    m = _LAYER.fullmatch(hf_name)
    e = _EXPERT.fullmatch(m.group(2)) if m else None
    return (int(e.group(1)), f"blk.{m.group(1)}.{EXPERT_NAMES[e.group(2)]}") if e else None


def gguf_name(hf_name: str) -> str | None:
    """The GGUF tensor a Hugging Face tensor becomes (the stacked one for an expert), or None
    for tensors GGUF does not keep (rotary inverse frequencies)."""
    if hf_name in GLOBAL_NAMES:
        return GLOBAL_NAMES[hf_name]
    m = _LAYER.fullmatch(hf_name)
    if not m:
        return None
    if m.group(2) in LAYER_NAMES:
        return f"blk.{m.group(1)}.{LAYER_NAMES[m.group(2)]}"
    e = expert_of(hf_name)
    return e[1] if e else None


_GGUF_LAYER = {v: k for k, v in LAYER_NAMES.items()}
_GGUF_GLOBAL = {v: k for k, v in GLOBAL_NAMES.items()}


def hf_names_of(gguf: str, n_expert: int = 0) -> list[str]:
    """The Hugging Face tensors one GGUF tensor holds (one per expert for a stacked tensor)."""
    if gguf in _GGUF_GLOBAL:
        return [_GGUF_GLOBAL[gguf]]
    m = re.fullmatch(r"blk\.(\d+)\.(.+)", gguf)
    if not m:
        raise KeyError(f"GGUF tensor {gguf!r} has no Hugging Face llama name")
    i, part = m.groups()
    if part in _GGUF_LAYER:
        return [f"model.layers.{i}.{_GGUF_LAYER[part]}"]
    for w, stacked in EXPERT_NAMES.items():
        if part == stacked:
            return [f"model.layers.{i}.block_sparse_moe.experts.{e}.{w}.weight" for e in range(n_expert)]
    raise KeyError(f"GGUF tensor {gguf!r} has no Hugging Face llama name")


def _heads_for(hf_name: str, n_head: int, n_head_kv: int) -> int | None:
    if hf_name.endswith("self_attn.q_proj.weight"):
        return n_head
    if hf_name.endswith("self_attn.k_proj.weight"):
        return n_head_kv
    return None


def to_gguf_layout(hf_name: str, w: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """Q/K rows from rotate_half order to interleaved pairs (llama.cpp's permute)."""
    heads = _heads_for(hf_name, n_head, n_head_kv)
    if heads is None:
        return w
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def to_hf_layout(hf_name: str, w: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """The inverse of :func:`to_gguf_layout`."""
    heads = _heads_for(hf_name, n_head, n_head_kv)
    if heads is None:
        return w
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
