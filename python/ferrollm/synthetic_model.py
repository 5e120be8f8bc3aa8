"""Small llama-family GGUF models with random weights, written by the project itself.

Tests compare the engine with independent references on these files (no download anywhere).
Dense and Mixtral-style MoE, either expert layout (merged ``ffn_*_exps`` or one tensor per
expert, as early-2024 files have), any weight type: the float and quantizable types are
quantized from Gaussian weights; the IQ1-IQ3 types get random valid blocks scaled to the same
magnitude.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ferrollm import quants
from ferrollm.gguf import GGUFWriter
from ferrollm.quantize import WRITABLE_TYPES, quantize_tensor
from ferrollm.synthetic import random_blocks

# Types llama.cpp insists on for keys whose values would otherwise be inferred as i32/f32.
METADATA_TYPES = {
    "tokenizer.ggml.scores": "array[f32]",
    "tokenizer.ggml.token_type": "array[i32]",
    **{f"tokenizer.ggml.{k}_token_id": "u32" for k in ("bos", "eos", "unknown", "padding", "separator")},
}


@dataclass
class ModelSpec:
    n_vocab: int = 320
    n_embd: int = 128
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 256
    n_ctx_train: int = 256
    n_expert: int = 0
    n_expert_used: int = 2
    weight_type: str = "F32"
    # "merged" (blk.N.ffn_gate_exps) or "split" (blk.N.ffn_gate.E, early-2024 files)
    expert_layout: str = "merged"
    tied_embeddings: bool = False
    rope_freq_base: float = 10000.0
    rms_eps: float = 1e-5
    seed: int = 0
    # tokenizer.* metadata; None writes a small byte-fallback SentencePiece vocabulary
    tokenizer: dict[str, Any] | None = None
    extra_metadata: dict[str, Any] = field(default_factory=dict)


def tiny_vocab(n_vocab: int) -> dict[str, Any]:
    """A SentencePiece-style vocabulary: <unk>, <s>, </s>, 256 byte pieces, then words."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    letters = "etaoinshrdlucmfwypvbgkqjxz"
    i = 0
    while len(tokens) < n_vocab:
        a, b = divmod(i, len(letters))
        piece = "\u2581" + letters[b] if a == 0 else letters[a % len(letters)] + letters[b]
        if piece not in tokens:
            tokens.append(piece)
            types.append(1)
        i += 1
    tokens, types = tokens[:n_vocab], types[:n_vocab]
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": [0.0] * 3 + [0.0] * 256 + [-float(i) for i in range(len(tokens) - 259)],
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": False,
    }


def _weight(rng: np.random.Generator, rows: int, cols: int, type_name: str, std: float):
    """(data, type, ggml shape) for a rows x cols matrix of `type_name`."""
    t = type_name.upper()
    if t in WRITABLE_TYPES:
        return quantize_tensor((rng.standard_normal((rows, cols)) * std).astype(np.float32), t)
    # IQ1-IQ3: random valid blocks, scales set so that the values have RMS `std`.
    qt = quants.quant_type(t)
    n_blocks = rows * cols // qt.block_elems
    seed = int(rng.integers(2**63))
    probe = random_blocks(t, n_blocks, np.random.default_rng(seed), 1.0)
    rms = float(np.sqrt(np.mean(np.square(quants.dequantize(probe, t), dtype=np.float64))))
    blocks = random_blocks(t, n_blocks, np.random.default_rng(seed), std / max(rms, 1e-12))
    return blocks, t, [cols, rows]


def add_llama_hparams(w: GGUFWriter, s: ModelSpec) -> None:
    """The ``llama.*`` hyper-parameter keys of a model of shape ``s`` (expert keys for MoE)."""
    w.add("llama.context_length", s.n_ctx_train, "u32")
    w.add("llama.embedding_length", s.n_embd, "u32")
    w.add("llama.block_count", s.n_layer, "u32")
    w.add("llama.feed_forward_length", s.n_ff, "u32")
    w.add("llama.rope.dimension_count", s.n_embd // s.n_head, "u32")
    w.add("llama.attention.head_count", s.n_head, "u32")
    w.add("llama.attention.head_count_kv", s.n_head_kv, "u32")
    w.add("llama.attention.layer_norm_rms_epsilon", s.rms_eps, "f32")
    w.add("llama.rope.freq_base", s.rope_freq_base, "f32")
    if s.n_expert:
        w.add("llama.expert_count", s.n_expert, "u32")
        w.add("llama.expert_used_count", s.n_expert_used, "u32")


def write_model(path: str | os.PathLike, spec: ModelSpec) -> None:
    rng = np.random.default_rng(spec.seed)
    s = spec
    head_dim = s.n_embd // s.n_head
    w = GGUFWriter(path)
    w.add("general.architecture", "llama")
    w.add("general.name", f"ferrollm synthetic {'moe' if s.n_expert else 'dense'} {s.weight_type}")
    add_llama_hparams(w, s)
    tok = s.tokenizer if s.tokenizer is not None else tiny_vocab(s.n_vocab)
    for key, value in {**tok, **s.extra_metadata}.items():
        w.add(key, value, METADATA_TYPES.get(key))

    def matrix(name: str, rows: int, cols: int, std: float | None = None, type_name: str | None = None):
        data, t, shape = _weight(rng, rows, cols, type_name or s.weight_type, std or cols**-0.5)
        w.add_tensor(name, data, t, shape)

    def norm(name: str):
        w.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(s.n_embd)).astype(np.float32))

    matrix("token_embd.weight", s.n_vocab, s.n_embd, std=1.0)
    for layer in range(s.n_layer):
        p = f"blk.{layer}."
        norm(p + "attn_norm.weight")
        matrix(p + "attn_q.weight", s.n_head * head_dim, s.n_embd)
        matrix(p + "attn_k.weight", s.n_head_kv * head_dim, s.n_embd)
        matrix(p + "attn_v.weight", s.n_head_kv * head_dim, s.n_embd)
        matrix(p + "attn_output.weight", s.n_embd, s.n_head * head_dim)
        norm(p + "ffn_norm.weight")
        if not s.n_expert:
            matrix(p + "ffn_gate.weight", s.n_ff, s.n_embd)
            matrix(p + "ffn_up.weight", s.n_ff, s.n_embd)
            matrix(p + "ffn_down.weight", s.n_embd, s.n_ff)
            continue
        # Router logits of order 1-5, as in trained Mixtral layers.
        matrix(p + "ffn_gate_inp.weight", s.n_expert, s.n_embd, std=2.0 * s.n_embd**-0.5, type_name="F32")
        # Drawn in the same order for both layouts, so the two files hold the same experts.
        kinds = (("gate", s.n_ff, s.n_embd), ("up", s.n_ff, s.n_embd), ("down", s.n_embd, s.n_ff))
        for kind, rows, cols in kinds:
            parts = [_weight(rng, rows, cols, s.weight_type, cols**-0.5) for _ in range(s.n_expert)]
            t = parts[0][1]
            if s.expert_layout == "split":
                for e, part in enumerate(parts):
                    w.add_tensor(f"{p}ffn_{kind}.{e}.weight", *part)
            elif t is None:  # float arrays: stack to (n_expert, rows, cols)
                w.add_tensor(f"{p}ffn_{kind}_exps.weight", np.stack([d for d, _, _ in parts]))
            else:
                stacked = np.concatenate([np.asarray(d).reshape(-1) for d, _, _ in parts])
                w.add_tensor(f"{p}ffn_{kind}_exps.weight", stacked, t, [cols, rows, s.n_expert])
    norm("output_norm.weight")
    if not s.tied_embeddings:
        matrix("output.weight", s.n_vocab, s.n_embd)
    w.write()
