"""Agreement figures with llama.cpp (llama-cpp-python) on the peer suite's synthetic models:
min cosine over all positions and over clearly-routed ones, and top-1 agreement.
Writes benches/results/agreement.json.  Needs llama-cpp-python, sentencepiece, mistral-common."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
from ferrollm import Llama
from ferrollm.gguf.synthetic_model import ModelSpec, write_model
from ferrollm.text.tokenizer import sentencepiece_metadata

from tests.support.model_helpers import ROUTER_MARGIN, cosines
from tests.support.peer import MISTRAL_MODEL, TEXT, peer_logits
from tests.support.reference_model import ReferenceModel


def main() -> None:
    vocab = sentencepiece_metadata(str(MISTRAL_MODEL))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n_expert, used in [(0, None), (8, None), (8, 3)]:
            for wt in ["F16", "Q8_0", "Q4_0", "Q4_K", "Q6_K", "IQ4_XS"]:
                path = f"{tmp}/{wt}_{n_expert}.gguf"
                if not Path(path).exists():
                    write_model(path, ModelSpec(n_vocab=32000, n_embd=256, n_ff=512, n_head=8, n_head_kv=2,
                                                n_expert=n_expert, weight_type=wt, n_ctx_train=512, tokenizer=vocab,
                                                seed=5))  # fmt: skip
                overrides = {"llama.expert_used_count": used} if used else None
                llm = Llama(path, n_ctx=256, logits_all=True, kv_overrides=overrides, verbose=False)
                tokens = llm.tokenize(TEXT.encode())
                llm.eval(tokens)
                peer = peer_logits(path, tokens, overrides)
                cos = cosines(llm.scores, peer)
                clear = np.ones(len(tokens), bool)
                if n_expert:
                    ref = ReferenceModel(path, n_expert_used=used)
                    ref.logits(tokens)
                    clear = ref.router_margin >= ROUTER_MARGIN
                row = {
                    "type": wt, "experts": n_expert, "used": used or (2 if n_expert else 0), "positions": len(tokens),
                    "min_cos_all": float(cos.min()), "min_cos_clear": float(cos[clear].min()),
                    "ambiguous": int((~clear).sum()),
                    "top1_agree": float((llm.scores.argmax(1) == peer.argmax(1)).mean()),
                }  # fmt: skip
                rows.append(row)
                print(
                    f"{wt:7} experts {n_expert} used {row['used']}: min cos {row['min_cos_all']:.6f} all, "
                    f"{row['min_cos_clear']:.6f} clear routing ({row['ambiguous']} near-ties of {len(tokens)}), "
                    f"top-1 {row['top1_agree']:.3f}"
                )
    out = Path(__file__).parent / "results" / "agreement.json"
    out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
