"""Write the fuzzers' seed corpora (valid inputs of every kind) into fuzz/corpus/<target>/.

    python fuzz/make_seeds.py

gguf_parse / model_load: tiny models (dense and MoE, both expert layouts, tied head, float,
legacy, K and IQ weights) and block files of every type; dequantize / matmul: a type selector
byte then random valid blocks; quantize: float rows.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from ferrollm.gguf.synthetic import random_blocks, write_synthetic_gguf
from ferrollm.gguf.synthetic_model import ModelSpec, write_model
from ferrollm.quant import block_types

CORPUS = Path(__file__).parent / "corpus"
TYPE_ORDER = list(block_types.TYPES)  # the Rust GgmlType::ALL order: the fuzzers' selector byte indexes it

MODELS = {
    "dense_f32": ModelSpec(n_vocab=260, n_embd=32, n_ff=64, n_layer=1, n_head=4, n_head_kv=2, n_ctx_train=16),
    "dense_q8_0": ModelSpec(n_vocab=260, n_embd=32, n_ff=64, n_layer=1, n_head=4, n_head_kv=2, weight_type="Q8_0"),
    "moe_q4_0": ModelSpec(n_vocab=260, n_embd=32, n_ff=64, n_layer=1, n_head=4, n_head_kv=1, n_expert=4,
                          weight_type="Q4_0"),
    "moe_split_q8_0": ModelSpec(n_vocab=260, n_embd=32, n_ff=64, n_layer=1, n_head=4, n_head_kv=2, n_expert=3,
                                n_expert_used=1, weight_type="Q8_0", expert_layout="split"),
    "tied_f16": ModelSpec(n_vocab=260, n_embd=32, n_ff=32, n_layer=2, n_head=2, n_head_kv=2, weight_type="F16",
                          tied_embeddings=True),
    "dense_q4_k": ModelSpec(n_vocab=260, n_embd=256, n_ff=256, n_layer=1, n_head=4, n_head_kv=4, weight_type="Q4_K"),
    "moe_iq2_xs": ModelSpec(n_vocab=260, n_embd=256, n_ff=256, n_layer=1, n_head=4, n_head_kv=2, n_expert=2,
                            n_expert_used=1, weight_type="IQ2_XS", tied_embeddings=True),
}  # fmt: skip


def main() -> None:
    rng = np.random.default_rng(0)
    for target in ("gguf_parse", "model_load", "dequantize", "matmul", "quantize"):
        shutil.rmtree(CORPUS / target, ignore_errors=True)
        (CORPUS / target).mkdir(parents=True)
    for name, spec in MODELS.items():
        write_model(CORPUS / "model_load" / f"{name}.gguf", spec)
        shutil.copy(CORPUS / "model_load" / f"{name}.gguf", CORPUS / "gguf_parse" / f"{name}.gguf")
    write_synthetic_gguf(CORPUS / "gguf_parse" / "every_type.gguf", rows=1, row_len=256, seed=0)
    for name in TYPE_ORDER:
        t = block_types.TYPES[name]
        if not t.can_dequantize:
            continue
        selector = TYPE_ORDER.index(name)
        raw = random_blocks(name, 2, rng, 1.0).tobytes()
        (CORPUS / "dequantize" / name.lower()).write_bytes(bytes([selector]) + raw)
        acts = rng.integers(0, 256, 2 * t.block_elems, dtype=np.uint8).tobytes()
        (CORPUS / "matmul" / name.lower()).write_bytes(bytes([selector]) + raw + acts)
    for i, scale in enumerate([1e-3, 1.0, 100.0]):
        (CORPUS / "quantize" / f"rows_{i}").write_bytes(
            (rng.standard_normal(512) * scale).astype("<f4").tobytes()
        )
    total = sum(f.stat().st_size for f in CORPUS.rglob("*") if f.is_file())
    print(
        f"wrote {sum(1 for f in CORPUS.rglob('*') if f.is_file())} seeds, {total / 1024:.0f} KiB, into {CORPUS}"
    )


if __name__ == "__main__":
    main()
