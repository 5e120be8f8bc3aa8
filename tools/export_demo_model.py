"""Export the trained demo model (``tools/train_demo_model.py`` shards) to GGUF with ferrollm's
own writer, and check the file against the training network's float32 logits.

    python tools/export_demo_model.py --ckpt ckpt --out demo-f16.gguf --type F16
    python tools/export_demo_model.py --ckpt ckpt --out python/ferrollm/data/demo-moe-q8_0.gguf --type Q8_0

The metadata is what llama.cpp expects of a Mixtral file (arch ``llama``, expert keys) with the
Mistral SentencePiece tokenizer from ``mistral-common`` written as llama.cpp's converter does.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from ferrollm.gguf import GGUFWriter
from ferrollm.gguf.synthetic_model import METADATA_TYPES, ModelSpec, add_llama_hparams
from ferrollm.quant.writer import FILE_TYPE_IDS, keeps_f32, quantize_tensor
from ferrollm.text.tokenizer import sentencepiece_metadata

sys.path.insert(0, str(Path(__file__).parent))
from build_demo_corpus import mistral_tokenizer_model


def load_shards(ckpt: Path) -> tuple[dict, dict[str, np.ndarray]]:
    card = json.loads((ckpt / "card.json").read_text())
    tensors: dict[str, np.ndarray] = {}
    for shard in card["shards"]:
        with np.load(ckpt / shard) as z:
            tensors.update({k: z[k].astype(np.float32) for k in z.files})
    return card, tensors


def write_demo_gguf(card: dict, tensors: dict[str, np.ndarray], out: Path, type_name: str) -> None:
    s = card["shape"]
    w = GGUFWriter(out)
    w.add("general.architecture", "llama")
    w.add("general.name", "ferrollm demo MoE 4x18M (Python stdlib)")
    w.add(
        "general.description",
        "Trained by ferrollm's tools/train_demo_model.py on the Python standard library's source "
        f"({card['steps']} steps, {card['tokens_seen']:,} tokens, held-out loss {card['heldout_loss']:.3f})",
    )
    w.add("general.license", "MIT")
    w.add("general.file_type", FILE_TYPE_IDS[type_name.upper()], "u32")
    spec = ModelSpec(n_vocab=s["n_vocab"], n_embd=s["n_embd"], n_layer=s["n_layer"], n_head=s["n_head"],
                     n_head_kv=s["n_head_kv"], n_ff=s["n_ff"], n_ctx_train=s["n_ctx"], n_expert=s["n_expert"],
                     n_expert_used=s["n_expert_used"], rope_freq_base=s["rope_base"], rms_eps=s["rms_eps"])  # fmt: skip
    add_llama_hparams(w, spec)
    w.add("llama.vocab_size", s["n_vocab"], "u32")
    for key, value in sentencepiece_metadata(mistral_tokenizer_model()).items():
        w.add(key, value, METADATA_TYPES.get(key))
    for name, values in tensors.items():
        t = "F32" if keeps_f32(name, values.shape) else type_name
        w.add_tensor(name, *quantize_tensor(values, t))
    w.write()


def check_against_training(ckpt: Path, path: Path) -> float:
    """Cosine between the engine's logits and the training network's, at the check positions."""
    from ferrollm import _core

    check = np.load(ckpt / "check.npz")
    model = _core.Model(str(path), n_ctx=len(check["tokens"]))
    logits = np.asarray(model.eval(check["tokens"].tolist(), True))[-len(check["logits"]) :]
    ref = check["logits"]
    cos = (logits * ref).sum(1) / np.linalg.norm(logits, axis=1) / np.linalg.norm(ref, axis=1)
    return float(cos.min())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--type", default="Q8_0")
    args = ap.parse_args()
    card, tensors = load_shards(args.ckpt)
    write_demo_gguf(card, tensors, args.out, args.type.upper())
    cos = check_against_training(args.ckpt, args.out)
    print(f"{args.out}: {args.out.stat().st_size / 2**20:.1f} MiB; min cosine vs training logits {cos:.6f}")


if __name__ == "__main__":
    main()
