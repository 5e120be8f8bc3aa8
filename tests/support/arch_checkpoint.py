"""Run by the oracle virtualenv's python (torch, transformers), not imported by the suite:
``python arch_checkpoint.py SPEC.json OUT_DIR``. Writes a tiny random checkpoint of the case's
architecture with ``transformers`` (config.json, model.safetensors, a tokenizer the converter
accepts), then the forward pass in float32 with eager attention on the case's token sequence:
OUT_DIR/tokens.json and OUT_DIR/logits.npy ([n_tokens, n_vocab]).

The weights are transformers' own initialisation with a wider ``initializer_range`` (so attention
is sharp enough for rope, windows and soft-capping to change the logits), and every 1-D tensor
(norm weights, biases) moved off its initial value (so a norm offset or a dropped bias shows)."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny_tokenizers import bpe_tokenizer


def spm_truncated(src: str, dst: str, vocab_size: int) -> None:
    """Mistral's tokenizer.model cut to its first vocab_size pieces (<unk>, <s>, </s>, the 256
    byte pieces, then the most frequent merges): phi3's converter wants no more pieces than ids."""
    from sentencepiece import sentencepiece_model_pb2

    m = sentencepiece_model_pb2.ModelProto()
    with open(src, "rb") as f:
        m.ParseFromString(f.read())
    del m.pieces[vocab_size:]
    with open(dst, "wb") as f:
        f.write(m.SerializeToString())


def write_tokenizer(out: str, spec: dict, vocab_size: int) -> None:
    tc = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
          "add_eos_token": False}  # fmt: skip
    if spec["tokenizer"] == "spm":
        spm_truncated(spec["spm_model"], os.path.join(out, "tokenizer.model"), vocab_size)
        tc["tokenizer_class"] = "LlamaTokenizer"
    else:
        bpe_tokenizer(os.path.join(out, "tokenizer.json"), vocab_size)
        tc["tokenizer_class"] = "PreTrainedTokenizerFast"
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(tc, f)


def perturb(model: torch.nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                scale = 0.2 if name.endswith("bias") else 0.1
                p.add_(scale * torch.randn(p.shape, generator=gen))


def main(spec_path: str, out: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    os.makedirs(out, exist_ok=True)
    cfg = AutoConfig.for_model(spec["model_type"], **spec["config"])
    cfg.architectures = [spec["hf_class"]]
    torch.manual_seed(spec["seed"])
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    gen = torch.Generator().manual_seed(spec["seed"] + 1)
    perturb(model, gen)
    model.eval()
    model.save_pretrained(out)
    write_tokenizer(out, spec, cfg.vocab_size)
    rng = np.random.default_rng(spec["seed"] + 2)
    tokens = [1] + rng.integers(3, cfg.vocab_size, spec["n_tokens"] - 1).tolist()
    with torch.no_grad():
        logits = model(torch.tensor([tokens]), use_cache=False).logits[0].float().numpy()
    np.save(os.path.join(out, "logits.npy"), logits)
    with open(os.path.join(out, "tokens.json"), "w") as f:
        json.dump(tokens, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
