"""Run by the oracle virtualenv's python: ``python arch_ablation.py HF_DIR OVERRIDES.json OUT.npy``.
The forward pass of a checkpoint written by arch_checkpoint.py with some of its configuration
changed (a feature switched off: no sliding window, plain rope, no soft-capping...), same weights and
tokens. The suite checks each such ablation moves the logits well past the tolerance, so that an
engine ignoring the feature fails the comparison with transformers."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM


def main(hf_dir: str, overrides_path: str, out: str) -> None:
    with open(overrides_path) as f:
        overrides = json.load(f)
    cfg = AutoConfig.from_pretrained(hf_dir)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    model = AutoModelForCausalLM.from_pretrained(
        hf_dir, config=cfg, attn_implementation="eager", dtype=torch.float32
    )
    model.eval()
    with open(os.path.join(hf_dir, "tokens.json")) as f:
        tokens = json.load(f)
    with torch.no_grad():
        logits = model(torch.tensor([tokens]), use_cache=False).logits[0].float().numpy()
    np.save(out, logits)


if __name__ == "__main__":
    main(*sys.argv[1:4])
