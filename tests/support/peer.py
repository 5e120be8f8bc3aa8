"""llama.cpp (through llama-cpp-python) as the peer of the agreement tests and benches: its
logits and perplexity on a file, Mistral's real tokenizer and the texts they run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from ferrollm.quant.quality import Scorer, log_softmax

try:
    import mistral_common

    MISTRAL_MODEL = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
except ImportError:  # the suites that need it skip themselves
    MISTRAL_MODEL = None
HELDOUT = (Path(__file__).parent.parent / "data" / "heldout.txt").read_text(encoding="utf-8")

TEXT = (
    "A chat between a user and a thinking artificial intelligence assistant. The assistant describes its "
    "thought process and gives helpful and detailed answers to the user's questions.\nUser: Out of six apples "
    "three are bad. What is the probability that at least one apple will be bad when selecting two apples?\nAI:"
)


def open_peer(path, **kw):
    import llama_cpp

    return llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=2, verbose=False, **kw)


def peer_logits(path: str, tokens: list[int], overrides: dict | None = None) -> np.ndarray:
    import llama_cpp

    peer = llama_cpp.Llama(model_path=path, n_ctx=256, logits_all=True, verbose=False, kv_overrides=overrides)
    peer.eval(tokens)
    out = np.array(peer.scores[: len(tokens)], dtype=np.float64)
    peer.close()
    return out


def peer_perplexity(path, n_ctx: int, n_chunks: int) -> float:
    """llama.cpp's logits (logits_all=True) on the same chunks, scored with the same rule."""
    chunks = Scorer(path, n_ctx).chunks(HELDOUT, n_chunks)
    peer = open_peer(path, logits_all=True)
    nll = []
    for chunk in chunks:
        peer.reset()
        peer.eval(chunk)
        logp = log_softmax(np.asarray(peer.scores[:n_ctx]))
        nll += [-logp[i, chunk[i + 1]] for i in range(n_ctx // 2, n_ctx - 1)]
    return math.exp(float(np.mean(nll)))
