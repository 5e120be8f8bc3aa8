"""mergekit-moe's YAML: a base model, experts with the prompts that should reach them, and how
the routers are made.

    base_model: mistral-7b/
    gate_mode: hidden            # hidden (alias hidden_last), cheap_embed, random, uniform_random
    dtype: bfloat16
    experts_per_token: 2
    experts:
      - source_model: code-7b/
        positive_prompts: ["def fibonacci(n):"]
        negative_prompts: ["Once upon a time"]   # optional
        residual_scale: 1.0                      # optional: multiplies the expert's down_proj
      - source_model: story-7b/
        positive_prompts: ["Once upon a time"]

``random_seed`` (ours, default 0) seeds ``random``/``uniform_random`` routers and
``noise_scale``. The checks are mergekit's (``is_bad_config``), made errors that say what to fix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import yaml

from ferrollm.merge.config import DTYPES

GATE_MODES = ("hidden", "hidden_last", "cheap_embed", "random", "uniform_random")
PROMPTED = ("hidden", "hidden_last", "cheap_embed")  # modes whose routers come from prompts
_KNOWN_KEYS = {"base_model", "experts", "gate_mode", "experts_per_token", "dtype", "random_seed",
               "architecture", "shared_experts"}  # fmt: skip
_EXPERT_KEYS = {"source_model", "positive_prompts", "negative_prompts", "noise_scale", "residual_scale"}


class MoEConfigError(ValueError):
    pass


@dataclass
class Expert:
    source_model: str
    positive_prompts: list[str] = field(default_factory=list)
    negative_prompts: list[str] = field(default_factory=list)
    noise_scale: float | None = None
    residual_scale: float | None = None


@dataclass
class MoEConfig:
    base_model: str
    experts: list[Expert]
    gate_mode: str = "hidden"
    experts_per_token: int = 2
    dtype: str | None = None  # F32/F16/BF16: the default output type, as mergekit's out dtype
    random_seed: int = 0


def _prompts(raw, where: str) -> list[str]:
    if raw is None:
        return []
    if isinstance(raw, str) or not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
        raise MoEConfigError(f"{where}: expected a list of strings, got {raw!r}")
    return list(raw)


def _scale(raw, where: str) -> float | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise MoEConfigError(f"{where}: expected a number, got {raw!r}")
    return float(raw)


def _expert(raw, i: int) -> Expert:
    where = f"experts[{i}]"
    if not isinstance(raw, dict) or "source_model" not in raw:
        raise MoEConfigError(f"{where}: each expert is a mapping with a source_model, got {raw!r}")
    unknown = set(raw) - _EXPERT_KEYS
    if unknown:
        raise MoEConfigError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))} "
                             f"(known: {', '.join(sorted(_EXPERT_KEYS))})")  # fmt: skip
    return Expert(str(raw["source_model"]), _prompts(raw.get("positive_prompts"), f"{where}.positive_prompts"),
                  _prompts(raw.get("negative_prompts"), f"{where}.negative_prompts"),
                  _scale(raw.get("noise_scale"), f"{where}.noise_scale"),
                  _scale(raw.get("residual_scale"), f"{where}.residual_scale"))  # fmt: skip


def parse(text_or_dict: str | dict) -> MoEConfig:
    raw = yaml.safe_load(text_or_dict) if isinstance(text_or_dict, str) else text_or_dict
    if not isinstance(raw, dict):
        raise MoEConfigError("a MoE configuration is a YAML mapping")
    unknown = set(raw) - _KNOWN_KEYS
    if unknown:
        raise MoEConfigError(f"unknown configuration key(s): {', '.join(sorted(map(str, unknown)))} "
                             f"(known: {', '.join(sorted(_KNOWN_KEYS))})")  # fmt: skip
    if raw.get("shared_experts"):
        raise MoEConfigError("shared_experts: the Mixtral output has no shared experts (mergekit writes those "
                             "only for Qwen2-MoE/DeepSeek outputs)")  # fmt: skip
    if str(raw.get("architecture") or "mixtral").lower() != "mixtral":
        raise MoEConfigError(f"architecture: {raw['architecture']!r} is not written; ferrollm writes Mixtral")
    if not raw.get("base_model"):
        raise MoEConfigError("base_model is missing")
    experts_raw = raw.get("experts")
    if not isinstance(experts_raw, list) or not experts_raw:
        raise MoEConfigError("experts: expected a non-empty list of {source_model, positive_prompts, ...}")
    mode = str(raw.get("gate_mode", "hidden"))
    if mode not in GATE_MODES:
        raise MoEConfigError(f"unknown gate_mode {mode!r} (one of {', '.join(GATE_MODES)})")
    k = raw.get("experts_per_token", 2)
    if isinstance(k, bool) or not isinstance(k, int):
        raise MoEConfigError(f"experts_per_token: expected an integer, got {k!r}")
    dtype = raw.get("dtype")
    if dtype is not None and str(dtype) not in DTYPES:
        raise MoEConfigError(f"dtype: unknown dtype {dtype!r} (one of {', '.join(DTYPES)})")
    cfg = MoEConfig(str(raw["base_model"]), [_expert(e, i) for i, e in enumerate(experts_raw)], mode, k,
                    DTYPES[str(dtype)] if dtype is not None else None, int(raw.get("random_seed", 0)))  # fmt: skip
    check(cfg)
    return cfg


def check(cfg: MoEConfig) -> None:
    """mergekit's refusals: these configurations build a model that cannot route."""
    n = len(cfg.experts)
    if not 1 <= cfg.experts_per_token <= n:
        raise MoEConfigError(f"experts_per_token = {cfg.experts_per_token} must be between 1 and the number "
                             f"of experts ({n})")  # fmt: skip
    if cfg.gate_mode not in PROMPTED:
        return
    for i, e in enumerate(cfg.experts):
        if not e.positive_prompts:
            raise MoEConfigError(f"experts[{i}] ({e.source_model}) has no positive_prompts (gate_mode "
                                 f"{cfg.gate_mode} builds its router row from them)")  # fmt: skip
    keys = {(tuple(e.positive_prompts), tuple(e.negative_prompts)) for e in cfg.experts}
    if n > 1 and len(keys) == 1:
        raise MoEConfigError("every expert has the same positive and negative prompts: their router rows would be "
                             "identical (give each expert prompts for what should reach it)")  # fmt: skip


def load(path: str | os.PathLike) -> MoEConfig:
    try:
        with open(path, encoding="utf-8") as f:
            return parse(f.read())
    except yaml.YAMLError as e:
        raise MoEConfigError(f"{path}: not valid YAML: {e}") from None
    except UnicodeDecodeError as e:
        raise MoEConfigError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
