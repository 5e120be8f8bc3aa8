"""Small GGUF models with random weights, written by the project itself.

Tests compare the engine with independent references on these files (no download anywhere).
Dense and Mixtral-style MoE, either expert layout (merged ``ffn_*_exps`` or one tensor per
expert, as early-2024 files have), the other architectures the engine runs (``ARCH_TENSORS``:
biases, fused tensors, Q/K norms, post-norms), any weight type: the float and quantizable types are
quantized from Gaussian weights; the IQ1-IQ3 types get random valid blocks scaled to the same
magnitude.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ferrollm.gguf import GGUFWriter
from ferrollm.gguf.synthetic import random_blocks
from ferrollm.quant import block_types
from ferrollm.quant.writer import WRITABLE_TYPES, quantize_tensor

# Types llama.cpp insists on for keys whose values would otherwise be inferred as i32/f32.
METADATA_TYPES = {
    "tokenizer.ggml.scores": "array[f32]",
    "tokenizer.ggml.token_type": "array[i32]",
    **{f"tokenizer.ggml.{k}_token_id": "u32" for k in ("bos", "eos", "unknown", "padding", "separator")},
}


# The tensors each architecture adds to (or fuses in) llama's layer, as llama.cpp's converter
# writes them: Q/K/V biases, per-head Q/K norms, Gemma's post-norms, Phi-3's fused QKV and
# gate/up. Hyper-parameters beyond the common ones go in ModelSpec.extra_metadata.
ARCH_TENSORS: dict[str, set[str]] = {
    "llama": set(),
    "qwen2": {"qkv_bias"},
    "qwen3": {"qk_norm"},
    "qwen3moe": {"qk_norm"},
    "phi3": {"fused_qkv", "fused_gate_up"},
    "gemma2": {"post_norms"},
    "gemma3": {"qk_norm", "post_norms"},
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
    arch: str = "llama"
    # Head size when it is not n_embd / n_head (`{arch}.attention.key_length`)
    head_dim: int | None = None
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
    # Types for single tensors by name ("token_embd.weight", "output.weight"), as a real
    # quantizer leaves them; every other matrix is `weight_type`.
    tensor_types: dict[str, str] = field(default_factory=dict)
    # 0: every weight drawn in full. N: matrices of more than N blocks are filled (in Rust)
    # with blocks drawn at random from a pool of N valid blocks of the same statistics, so
    # that multi-gigabyte benchmark models are written at disk speed.
    pool_blocks: int = 0
    # Statistics of a trained model where they change the engine's paths (the benchmark shapes
    # turn it on): a quarter of the query heads (and their KV heads) sharp, with attention
    # scores of std ~25 (spans of 100+ nats over a few hundred keys: the softmax's weights
    # reach the subnormal range), 4 outlier channels 100x the rest in the residual stream, and
    # norm weights log-normal (0.25x to 4x) rather than near 1.
    trained_stats: bool = False


# The benchmark shapes of ../shared/BENCHMARKS.md (random weights; no download).
SHAPES: dict[str, dict[str, int]] = {
    "mixtral-shape-4L": {"n_layer": 4, "n_embd": 4096, "n_ff": 14336, "n_head": 32, "n_head_kv": 8, "n_expert": 8},
    "mixtral-8x7b": {"n_layer": 32, "n_embd": 4096, "n_ff": 14336, "n_head": 32, "n_head_kv": 8, "n_expert": 8},
    "mistral-7b": {"n_layer": 32, "n_embd": 4096, "n_ff": 14336, "n_head": 32, "n_head_kv": 8, "n_expert": 0},
    "tiny-moe": {"n_layer": 2, "n_embd": 256, "n_ff": 512, "n_head": 8, "n_head_kv": 4, "n_expert": 4},
    # SmolLM-135M's shape: many small matrices, where per-call overhead shows.
    "small-dense": {"n_layer": 30, "n_embd": 576, "n_ff": 1536, "n_head": 9, "n_head_kv": 3, "n_expert": 0,
                    "n_vocab": 49152},
}  # fmt: skip

# llama.cpp's quantizer keeps the output head and token embedding at these types when the rest
# of the model is one of the low-bit types (llama_tensor_get_type): head Q5_K for the 1-3 bit IQ
# types, else Q6_K (Q8_0 stays Q8_0); embedding Q2_K for IQ1/IQ2, IQ3_S for IQ3.
# llama.cpp's quantizer for rows that are not whole 256-element super-blocks
# (llama_tensor_get_type's fallback).
_FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0",
             "IQ2_XXS": "Q4_0", "IQ2_XS": "Q4_0", "IQ2_S": "Q4_0", "IQ3_XXS": "Q4_0", "IQ3_S": "Q4_0",
             "IQ1_S": "Q4_0", "IQ1_M": "Q4_0", "IQ4_XS": "IQ4_NL"}  # fmt: skip
_LOW_BIT_HEAD = {"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS"}
_EMBD_TYPE = {"IQ1_S": "Q2_K", "IQ1_M": "Q2_K", "IQ2_XXS": "Q2_K", "IQ2_XS": "Q2_K",
              "IQ2_S": "Q2_K", "IQ3_XXS": "IQ3_S", "IQ3_S": "IQ3_S"}  # fmt: skip


def _row_type(type_name: str, cols: int):
    """The type of rows of `cols` values: `type_name`, or llama.cpp's fallback where the rows
    are not whole blocks of it."""
    qt = block_types.quant_type(type_name)
    if cols % qt.block_elems:
        qt = block_types.quant_type(_FALLBACK.get(qt.name, "Q8_0"))
    return qt


def quantizer_head_types(weight_type: str) -> dict[str, str]:
    """The token embedding and output types llama.cpp's quantizer gives a `weight_type` model."""
    t = weight_type.upper()
    if t in ("F32", "F16", "BF16"):
        return {}
    head = "Q5_K" if t in _LOW_BIT_HEAD else ("Q8_0" if t == "Q8_0" else "Q6_K")
    return {"output.weight": head, "token_embd.weight": _EMBD_TYPE.get(t, t)}


def shape_spec(shape: str, weight_type: str, **overrides: Any) -> ModelSpec:
    """The ModelSpec of a benchmark shape in `weight_type` (Mistral's 32000-token vocabulary
    size, Mixtral's 32768-token trained context so that deep-context runs are in range), with the
    head and embedding types of a real quantizer."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    fields: dict[str, Any] = {
        "n_vocab": 32000, "n_ctx_train": 32768, "n_expert_used": 2, "weight_type": weight_type,
        "tensor_types": quantizer_head_types(weight_type), "pool_blocks": 1 << 15, "rope_freq_base": 1e6,
        "tokenizer": mistral_tokenizer(), "trained_stats": True,
    }  # fmt: skip
    fields.update(SHAPES[shape])
    fields.update(overrides)
    if fields["n_vocab"] > 32000:  # Mistral's pieces, then placeholders up to the vocabulary size
        tok = dict(fields["tokenizer"])
        extra = fields["n_vocab"] - len(tok["tokenizer.ggml.tokens"])
        tok["tokenizer.ggml.tokens"] = list(tok["tokenizer.ggml.tokens"]) + [
            f"<extra_{i}>" for i in range(extra)
        ]
        tok["tokenizer.ggml.scores"] = list(tok["tokenizer.ggml.scores"]) + [0.0] * extra
        tok["tokenizer.ggml.token_type"] = list(tok["tokenizer.ggml.token_type"]) + [4] * extra
        fields["tokenizer"] = tok
    return ModelSpec(**fields)


def mistral_tokenizer() -> dict[str, Any]:
    """Mistral/Mixtral's real 32000-piece tokenizer metadata, from the embedded demo model."""
    from ferrollm import gguf
    from ferrollm.demo import demo_model_path

    return {k: v for k, v in gguf.open(demo_model_path()).metadata.items() if k.startswith("tokenizer.")}


def tiny_vocab(n_vocab: int) -> dict[str, Any]:
    """A SentencePiece-style vocabulary: <unk>, <s>, </s>, 256 byte pieces, then words."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    letters = "etaoinshrdlucmfwypvbgkqjxz"
    seen = set(tokens)
    i = 0
    while len(tokens) < n_vocab:
        a, b = divmod(i, len(letters))
        piece = "\u2581" + letters[b] if a == 0 else letters[a % len(letters)] + letters[b]
        if a > len(letters):  # two letters are used up: i in base 26 (3+ letters, unique)
            piece, k = "", i
            while k:
                k, d = divmod(k, len(letters))
                piece += letters[d]
        if piece not in seen:
            seen.add(piece)
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
    qt = block_types.quant_type(t)
    n_blocks = rows * cols // qt.block_elems
    seed = int(rng.integers(2**63))
    probe = random_blocks(t, n_blocks, np.random.default_rng(seed), 1.0)
    rms = float(np.sqrt(np.mean(np.square(block_types.dequantize(probe, t), dtype=np.float64))))
    blocks = random_blocks(t, n_blocks, np.random.default_rng(seed), std / max(rms, 1e-12))
    return blocks, t, [cols, rows]


def add_llama_hparams(w: GGUFWriter, s: ModelSpec) -> None:
    """The ``{arch}.*`` hyper-parameter keys of a model of shape ``s`` (expert keys for MoE)."""
    a, head_dim = s.arch, s.head_dim or s.n_embd // s.n_head
    w.add(f"{a}.context_length", s.n_ctx_train, "u32")
    w.add(f"{a}.embedding_length", s.n_embd, "u32")
    w.add(f"{a}.block_count", s.n_layer, "u32")
    w.add(f"{a}.feed_forward_length", s.n_ff, "u32")
    w.add(f"{a}.rope.dimension_count", head_dim, "u32")
    w.add(f"{a}.attention.head_count", s.n_head, "u32")
    w.add(f"{a}.attention.head_count_kv", s.n_head_kv, "u32")
    if s.head_dim:
        w.add(f"{a}.attention.key_length", head_dim, "u32")
    w.add(f"{a}.attention.layer_norm_rms_epsilon", s.rms_eps, "f32")
    w.add(f"{a}.rope.freq_base", s.rope_freq_base, "f32")
    if s.n_expert:
        w.add(f"{a}.expert_count", s.n_expert, "u32")
        w.add(f"{a}.expert_used_count", s.n_expert_used, "u32")


def write_model(path: str | os.PathLike, spec: ModelSpec) -> None:
    rng = np.random.default_rng(spec.seed)
    s = spec
    head_dim = s.head_dim or s.n_embd // s.n_head
    features = ARCH_TENSORS[s.arch]
    w = GGUFWriter(path)
    w.add("general.architecture", s.arch)
    w.add("general.name", f"ferrollm synthetic {'moe' if s.n_expert else 'dense'} {s.weight_type}")
    add_llama_hparams(w, s)
    tok = s.tokenizer if s.tokenizer is not None else tiny_vocab(s.n_vocab)
    for key, value in {**tok, **s.extra_metadata}.items():
        w.add(key, value, METADATA_TYPES.get(key))

    pools: dict[tuple[str, int, float], Any] = {}

    def add_matrices(
        name: str, rows: int, cols: int, std: float, type_name: str, count: int = 1, row_scale=None
    ):
        """`count` rows x cols matrices (stacked: experts) of random weights, in full or, when
        large, as blocks sampled from a pool of the same type, row length and scale. A row that
        is not whole super-blocks gets llama.cpp's fallback type, as its quantizer does."""
        qt = _row_type(type_name, cols)
        shape = [cols, rows] + ([count] if count > 1 else [])
        if row_scale is not None:  # runs of rows at their own scale, each drawn in full
            cuts = [0] + [r for r in range(1, rows) if row_scale[r] != row_scale[r - 1]] + [rows]
            runs = [_weight(rng, b - a, cols, qt.name, std * row_scale[a]) for a, b in zip(cuts, cuts[1:])]
            if runs[0][1] is None:
                w.add_tensor(name, np.concatenate([d for d, _, _ in runs]))
            else:
                w.add_tensor(
                    name, np.concatenate([np.asarray(d).reshape(-1) for d, _, _ in runs]), qt.name, shape
                )
            return
        if s.pool_blocks and qt.block_bytes > 4 and rows * count * cols // qt.block_elems > s.pool_blocks:
            key = (qt.name, cols, std)
            if key not in pools:
                pool_rows = max(1, s.pool_blocks * qt.block_elems // cols)
                pools[key] = _weight(rng, pool_rows, cols, qt.name, std)[0]
            w.add_tensor(name, pools[key], qt.name, shape, sample_seed=int(rng.integers(1, 2**63)))
            return
        parts = [_weight(rng, rows, cols, qt.name, std) for _ in range(count)]
        if count == 1:
            w.add_tensor(name, *parts[0])
        elif parts[0][1] is None:  # float arrays: stack to (n_expert, rows, cols)
            w.add_tensor(name, np.stack([d for d, _, _ in parts]))
        else:
            stacked = np.concatenate([np.asarray(d).reshape(-1) for d, _, _ in parts])
            w.add_tensor(name, stacked, qt.name, shape)

    def matrix(
        name: str,
        rows: int,
        cols: int,
        std: float | None = None,
        type_name: str | None = None,
        row_scale=None,
    ):
        t = type_name or s.tensor_types.get(name, s.weight_type)
        add_matrices(name, rows, cols, std or cols**-0.5, t, row_scale=row_scale)

    outliers = np.arange(4) * (s.n_embd // 4) + 7 if s.trained_stats else np.arange(0)

    def norm(name: str, n: int = s.n_embd):
        if not s.trained_stats:
            w.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32))
            return
        g = np.exp(0.7 * rng.standard_normal(n)).clip(0.25, 4.0)
        if n == s.n_embd:  # as trained norms do, they take the outlier channels back down
            g[outliers] = 0.01
        w.add_tensor(name, g.astype(np.float32))

    # Sharp heads: q and k rows of every 4th KV head's group scaled so that their scores have
    # a std of ~25 (x5 each), after the outliers' share of the RMS and the norms' mean square.
    sharp = 5.0 * np.sqrt(1.0 + len(outliers) * 1e4 / s.n_embd) / np.sqrt(np.exp(0.98))
    sharp_kv = np.arange(s.n_head_kv) % 4 == 0 if s.trained_stats else np.zeros(s.n_head_kv, bool)
    group = s.n_head // s.n_head_kv
    q_scale = (
        np.repeat(np.where(np.repeat(sharp_kv, group), sharp, 1.0), head_dim) if sharp_kv.any() else None
    )
    k_scale = np.repeat(np.where(sharp_kv, sharp, 1.0), head_dim) if sharp_kv.any() else None

    def bias(name: str, n: int):
        w.add_tensor(name, (0.5 * rng.standard_normal(n)).astype(np.float32))

    embd_type = _row_type(s.tensor_types.get("token_embd.weight", s.weight_type), s.n_embd).name
    if s.trained_stats and embd_type in WRITABLE_TYPES:
        # Outlier channels: 4 columns 100x the rest, as the residual streams of trained models.
        embd = rng.standard_normal((s.n_vocab, s.n_embd)).astype(np.float32)
        embd[:, outliers] *= 100.0
        w.add_tensor("token_embd.weight", *quantize_tensor(embd, embd_type))
    else:
        matrix("token_embd.weight", s.n_vocab, s.n_embd, std=1.0)
    for layer in range(s.n_layer):
        p = f"blk.{layer}."
        q_dim, kv_dim = s.n_head * head_dim, s.n_head_kv * head_dim
        norm(p + "attn_norm.weight")
        if "fused_qkv" in features:
            matrix(p + "attn_qkv.weight", q_dim + 2 * kv_dim, s.n_embd)
        else:
            matrix(p + "attn_q.weight", q_dim, s.n_embd, row_scale=q_scale)
            matrix(p + "attn_k.weight", kv_dim, s.n_embd, row_scale=k_scale)
            matrix(p + "attn_v.weight", kv_dim, s.n_embd)
        if "qkv_bias" in features:
            for kind, n in (("q", q_dim), ("k", kv_dim), ("v", kv_dim)):
                bias(f"{p}attn_{kind}.bias", n)
        if "qk_norm" in features:
            norm(p + "attn_q_norm.weight", head_dim)
            norm(p + "attn_k_norm.weight", head_dim)
        matrix(p + "attn_output.weight", s.n_embd, q_dim)
        if "post_norms" in features:
            norm(p + "post_attention_norm.weight")
        norm(p + "ffn_norm.weight")
        if "post_norms" in features:
            norm(p + "post_ffw_norm.weight")
        if not s.n_expert:
            if "fused_gate_up" in features:
                matrix(p + "ffn_up.weight", 2 * s.n_ff, s.n_embd)
            else:
                matrix(p + "ffn_gate.weight", s.n_ff, s.n_embd)
                matrix(p + "ffn_up.weight", s.n_ff, s.n_embd)
            matrix(p + "ffn_down.weight", s.n_embd, s.n_ff)
            continue
        # Router logits of order 1-5, as in trained Mixtral layers.
        matrix(p + "ffn_gate_inp.weight", s.n_expert, s.n_embd, std=2.0 * s.n_embd**-0.5, type_name="F32")
        # Drawn in the same order for both layouts, so the two files hold the same experts.
        kinds = (("gate", s.n_ff, s.n_embd), ("up", s.n_ff, s.n_embd), ("down", s.n_embd, s.n_ff))
        for kind, rows, cols in kinds:
            if s.expert_layout == "split":
                for e in range(s.n_expert):
                    add_matrices(f"{p}ffn_{kind}.{e}.weight", rows, cols, cols**-0.5, s.weight_type)
            else:
                name = f"{p}ffn_{kind}_exps.weight"
                add_matrices(name, rows, cols, cols**-0.5, s.weight_type, count=s.n_expert)
    norm("output_norm.weight")
    if not s.tied_embeddings:
        matrix("output.weight", s.n_vocab, s.n_embd)
    w.write()
