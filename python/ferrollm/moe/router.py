"""Router rows (``ffn_gate_inp``) for a MoE built from dense models, as mergekit-moe makes them.

Every mode gives one unit vector per layer and expert, (n_layer, n_expert, n_embd):

- ``hidden`` (= ``hidden_last``): each prompt is run through the base model; the residual
  stream entering layer i at the prompt's last token, averaged over the expert's prompts, is
  layer i's row (Hugging Face's ``hidden_states[i]``: index 0 is the embedding output).
- ``cheap_embed``: the token embeddings of all the expert's prompts summed and normalised; the
  same row for every layer.
- Negative prompts: their vector (the same statistic) is subtracted before the final
  normalisation.
- ``random``: standard normal rows; ``uniform_random``: U(-1/sqrt(n_embd), 1/sqrt(n_embd))
  (torch.nn.Linear's initialisation). Seeded; not normalised, as mergekit.

Prompts are tokenized as mergekit does: the BOS token's text, then the prompt, special tokens
parsed and nothing else added (so BOS, then the text as it follows a special token).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

from ferrollm.moe.config import Expert
from ferrollm.text.tokenizer import Tokenizer

Summary = Callable[[list[list[int]]], np.ndarray]  # token lists -> (n_layer or 1, n_embd)


def prompt_tokens(tokenizer: Tokenizer, prompt: str) -> list[int]:
    bos = tokenizer.tokens[tokenizer.bos_id] if tokenizer.bos_id >= 0 else ""
    ids = tokenizer.encode(bos + prompt, add_bos=False, special=True)
    if not ids:
        raise ValueError(f"prompt {prompt!r} has no tokens (the vocabulary has no BOS token)")
    return ids


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-8)


def gate_rows(tokenizer: Tokenizer, experts: list[Expert], n_layer: int, summary: Summary) -> np.ndarray:
    """(n_layer, n_expert, n_embd) float32 from a per-prompt-set ``summary``."""
    rows = []
    for e in experts:
        v = summary([prompt_tokens(tokenizer, p) for p in e.positive_prompts])
        if e.negative_prompts:
            v = v - summary([prompt_tokens(tokenizer, p) for p in e.negative_prompts])
        rows.append(np.broadcast_to(_unit(v), (n_layer, v.shape[-1])))
    return np.stack(rows, axis=1).astype(np.float32)


def cheap_embed_summary(embed: np.ndarray) -> Summary:
    """The sum of every prompt token's embedding row, normalised."""

    def summary(prompts: list[list[int]]) -> np.ndarray:
        total = sum(embed[ids].astype(np.float64).sum(axis=0) for ids in prompts)
        return _unit(total)[None]

    return summary


def hidden_summary(model, n_layer: int, progress: Callable[[], None] | None = None) -> Summary:
    """The mean over prompts of the last token's residual stream entering each layer;
    ``model`` is a ``ferrollm._core.Model`` of the base."""

    def summary(prompts: list[list[int]]) -> np.ndarray:
        total = 0.0
        for ids in prompts:
            model.truncate(0)
            total = total + model.hidden_states(ids)[:n_layer, -1, :].astype(np.float64)
            if progress:
                progress()
        model.truncate(0)
        return total / len(prompts)

    return summary


def random_rows(mode: str, seed: int, n_layer: int, n_expert: int, n_embd: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if mode == "random":
        return rng.standard_normal((n_layer, n_expert, n_embd)).astype(np.float32)
    bound = np.sqrt(1.0 / n_embd)
    return rng.uniform(-bound, bound, (n_layer, n_expert, n_embd)).astype(np.float32)


def warn_degenerate(rows: np.ndarray, threshold: float = 5.0) -> list[int]:
    """Layers whose rows are close to linearly dependent (condition number above
    ``threshold``, mergekit's test): some experts there will rarely be chosen."""
    bad = [i for i, r in enumerate(rows) if len(r) > 1 and np.linalg.cond(r.astype(np.float64)) > threshold]
    if bad:
        warnings.warn(f"router rows of layer(s) {', '.join(map(str, bad))} are nearly dependent (condition "
                      f"number > {threshold}): the experts' prompts may be too similar", stacklevel=3)  # fmt: skip
    return bad
