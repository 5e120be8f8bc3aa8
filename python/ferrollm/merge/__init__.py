"""``ferrollm merge``: mergekit's YAML, run tensor by tensor into GGUF or a Hugging Face directory.

    ferrollm.merge("pearl.yml", "pearl-q4_k_m.gguf", outtype="Q4_K_M")
    ferrollm.merge("pearl.yml", "pearl-hf/")          # a safetensors directory

Inputs are Hugging Face directories or GGUF files (quantized ones are dequantized on the fly).
Methods: linear, slerp, nearswap, task_arithmetic, ties, dare_ties, dare_linear, model_stock,
passthrough (``methods.METHODS``). The configuration is checked whole (method, parameters,
filters, models, shapes) before any tensor is read, and the output appears only when complete.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from ferrollm.atomic import check_output
from ferrollm.checkpoints.checkpoint import HFCheckpoint
from ferrollm.checkpoints.convert import llama_metadata
from ferrollm.checkpoints.export import Progress, write_gguf_model, write_hf_model
from ferrollm.merge import config as merge_config
from ferrollm.merge.config import MergeConfig, MergeConfigError
from ferrollm.merge.methods import METHODS
from ferrollm.merge.plan import MergeError, MergePlan

__all__ = ["METHODS", "MergeConfig", "MergeConfigError", "MergeError", "MergePlan", "merge"]


def read_config(config, load: Callable, parse: Callable, check: Callable | None = None):
    """(parsed config, the directory relative model paths start from) for a YAML path, a
    mapping, or a config already parsed (then checked with ``check``)."""
    if isinstance(config, (str, os.PathLike)):
        return load(config), os.path.dirname(os.path.abspath(os.fspath(config)))
    if isinstance(config, dict):
        return parse(config), None
    if check is not None:
        check(config)
    return config, None


def resolver(base_dir: str | None, models: Mapping[str, str] | None) -> Callable[[str], str]:
    """Model references to paths: ``models`` first, then paths as given, then relative to
    the configuration's directory."""

    def resolve(ref: str) -> str:
        if models and ref in models:
            return os.fspath(models[ref])
        if os.path.isabs(ref) or base_dir is None or os.path.exists(ref):
            return ref
        return os.path.join(base_dir, ref)

    return resolve


def gguf_metadata(plan: MergePlan) -> list:
    """The output's metadata: the base's (a GGUF's, less its quantization keys; a Hugging
    Face model's as the converter writes it), with the planned layer count."""
    base = plan.base
    if isinstance(base, HFCheckpoint):
        return llama_metadata(plan.config, base.path)
    md = base.file.metadata
    types = base.file.metadata_types
    out = []
    for key, value in md.items():
        if key == "general.alignment" or key.startswith("quantize."):
            continue
        if key == "llama.block_count":
            value = int(plan.config["num_hidden_layers"])
        out.append((key, types[key], value))
    return out


def merge(config: str | os.PathLike | MergeConfig | dict, out: str | os.PathLike, outtype: str | None = None,
          imatrix=None, models: Mapping[str, str] | None = None, threads: int | None = None,
          progress: Progress | None = None) -> dict[str, str] | None:  # fmt: skip
    """Run the merge ``config`` (a YAML path, YAML text as a dict, or a parsed config) into ``out``:
    a ``.gguf`` file (``outtype``: f32/f16/bf16/q8_0, a tensor type or a mix; default: the
    config's dtype) or else a Hugging Face directory in the config's dtype. Model references
    are paths (relative ones from the YAML's directory, or the working directory), or looked
    up in ``models``. Returns {tensor: type} for a GGUF."""
    cfg, base_dir = read_config(config, merge_config.load, merge_config.parse)
    resolve = resolver(base_dir, models)
    check_output(out, [config, imatrix, *(resolve(m) for m in cfg.models)])
    plan = MergePlan(cfg, resolve)
    try:
        dtype = cfg.out_dtype or cfg.dtype
        if os.fspath(out).lower().endswith(".gguf"):
            outtype = outtype or (dtype or "F16").lower()
            return write_gguf_model(out, plan, gguf_metadata(plan), outtype, imatrix=imatrix, threads=threads,
                                    progress=progress)  # fmt: skip
        if outtype and outtype.upper() not in ("F32", "F16", "BF16"):
            raise ValueError(
                f"a Hugging Face directory is written in F32, F16 or BF16, not {outtype} (write .gguf)"
            )
        tokenizer_dir = plan.base.path if isinstance(plan.base, HFCheckpoint) else None
        write_hf_model(out, plan, (outtype or dtype or "BF16").upper(), tokenizer_dir, progress)
        return None
    finally:
        plan.close()
