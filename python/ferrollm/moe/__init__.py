"""``ferrollm moe``: a Mixtral "frankenMoE" from dense Llama/Mistral models with mergekit-moe's
YAML, written as GGUF of any type, tensor by tensor.

    ferrollm.moe("cognito.yml", "cognito-q4_k_m.gguf", outtype="Q4_K_M")

The base model gives every tensor but the MLPs; each expert model gives its MLPs as one
expert per layer; the routers come from the base model's hidden states for the experts'
prompts (computed by ferrollm's own engine: a Hugging Face base is first converted to a
temporary GGUF beside the output), from token embeddings, or at random (:mod:`.router`).
The configuration, models and shapes are checked before any tensor is written, and the
output appears only when complete.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping

import numpy as np

from ferrollm.atomic import check_output
from ferrollm.checkpoints.checkpoint import GGUFCheckpoint, HFCheckpoint
from ferrollm.checkpoints.convert import convert, size_label
from ferrollm.checkpoints.export import Progress, gguf_tensors, plan_types, write_gguf_model
from ferrollm.merge import gguf_metadata, read_config, resolver
from ferrollm.moe import config as moe_config
from ferrollm.moe import router
from ferrollm.moe.config import GATE_MODES, MoEConfig, MoEConfigError
from ferrollm.moe.plan import MoEError, MoEPlan
from ferrollm.text import hf_vocab
from ferrollm.text.tokenizer import Tokenizer

__all__ = ["GATE_MODES", "MoEConfig", "MoEConfigError", "MoEError", "MoEPlan", "moe"]


def _tokenizer(base) -> Tokenizer:
    if isinstance(base, GGUFCheckpoint):
        return Tokenizer(base.file.metadata)
    return Tokenizer(hf_vocab.gguf_vocab(base.path, int(base.config["vocab_size"])))


def _hidden_routers(plan: MoEPlan, tokenizer: Tokenizer, out_dir: str, threads, progress) -> np.ndarray:
    from ferrollm._core import Model

    cfg = plan.cfg
    prompts = [p for e in cfg.experts for p in e.positive_prompts + e.negative_prompts]
    n_ctx = max(len(router.prompt_tokens(tokenizer, p)) for p in prompts)
    count = [0]

    def step():
        count[0] += 1
        if progress:
            progress(count[0], len(prompts), "router prompts")

    with tempfile.TemporaryDirectory(prefix=".ferrollm-moe-", dir=out_dir) as tmp:
        path = plan.base.path
        if isinstance(plan.base, HFCheckpoint):  # the engine reads GGUF: the base's own dtype, exactly
            path = os.path.join(tmp, "base.gguf")
            first = next(n for n in plan.base.names() if len(plan.base.shape(n)) > 1)
            convert(plan.base.path, path, plan.base.stored_dtype(first), threads=threads, progress=progress)
        model = Model(path, n_ctx=n_ctx, n_threads=threads)
        try:
            summary = router.hidden_summary(model, plan.n_layer, step)
            return router.gate_rows(tokenizer, cfg.experts, plan.n_layer, summary)
        finally:
            model.close()


def compute_routers(plan: MoEPlan, out_dir: str = ".", threads: int | None = None,
                    progress: Progress | None = None) -> np.ndarray:  # fmt: skip
    """(n_layer, n_expert, n_embd) router rows for ``plan``'s gate_mode."""
    cfg = plan.cfg
    if cfg.gate_mode in ("random", "uniform_random"):
        return router.random_rows(
            cfg.gate_mode, cfg.random_seed, plan.n_layer, len(plan.experts), plan.n_embd
        )
    tokenizer = _tokenizer(plan.base)
    if cfg.gate_mode == "cheap_embed":
        summary = router.cheap_embed_summary(plan.base.get("model.embed_tokens.weight"))
        return router.gate_rows(tokenizer, cfg.experts, plan.n_layer, summary)
    return _hidden_routers(plan, tokenizer, out_dir, threads, progress)


def _metadata(plan: MoEPlan) -> list:
    md = gguf_metadata(plan)  # the base's (HF: from the Mixtral config, with expert counts)
    md = [m for m in md if m[0] != "general.size_label"]
    if isinstance(plan.base, GGUFCheckpoint):
        cfg = plan.config
        at = next(i for i, m in enumerate(md) if m[0] == "llama.feed_forward_length")
        md[at] = ("llama.feed_forward_length", "u32", int(cfg["intermediate_size"]))  # the experts' width
        at += 1
        md[at:at] = [("llama.expert_count", "u32", int(cfg["num_local_experts"])),
                     ("llama.expert_used_count", "u32", int(cfg["num_experts_per_tok"]))]  # fmt: skip
    label = size_label([(n, s) for n, s, _ in gguf_tensors(plan)])
    at = next((i for i, m in enumerate(md) if not m[0].startswith("general.")), len(md))
    md.insert(at, ("general.size_label", "str", label))
    return md


def moe(config: str | os.PathLike | MoEConfig | dict, out: str | os.PathLike, outtype: str | None = None,
        imatrix=None, models: Mapping[str, str] | None = None, threads: int | None = None,
        progress: Progress | None = None) -> dict[str, str]:  # fmt: skip
    """Build the MoE described by ``config`` (a YAML path, its mapping, or a parsed config) into
    the GGUF file ``out``. ``outtype``: f32, f16, bf16, q8_0, a tensor type or a mix (with
    ``imatrix`` for the low-bit ones); default: the config's dtype, else F16. Model references
    are paths (relative ones from the YAML's directory), or looked up in ``models``.
    Returns {tensor: type}."""
    cfg, base_dir = read_config(config, moe_config.load, moe_config.parse, moe_config.check)
    out = os.fspath(out)
    if not out.lower().endswith(".gguf"):
        raise ValueError(f"output {out!r}: ferrollm moe writes a .gguf file")
    resolve = resolver(base_dir, models)
    sources = [cfg.base_model, *(e.source_model for e in cfg.experts)]
    check_output(out, [config, imatrix, *(resolve(m) for m in sources)])
    plan = MoEPlan(cfg, resolve)
    try:
        outtype = outtype or (cfg.dtype or "F16").lower()
        shapes = [(n, s) for n, s, _ in gguf_tensors(plan)]
        plan_types(
            shapes, plan.config, outtype, imatrix is not None
        )  # an unknown type fails before the routers
        out_dir = os.path.dirname(os.path.abspath(out))
        plan.routers = compute_routers(plan, out_dir, threads, progress)
        router.warn_degenerate(plan.routers)
        return write_gguf_model(out, plan, _metadata(plan), outtype, imatrix=imatrix, threads=threads,
                                progress=progress)  # fmt: skip
    finally:
        plan.close()
