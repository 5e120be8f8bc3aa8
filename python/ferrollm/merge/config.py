"""mergekit's YAML: which models, which layers, which method, which parameters.

    merge_method: slerp
    base_model: A
    slices:                                   # or models: [{model: A, parameters: {...}}, ...]
      - sources: [{model: A, layer_range: [0, 32]}, {model: B, layer_range: [0, 32]}]
    parameters:
      t: [{filter: self_attn, value: [0, 0.5, 1]}, {value: 0.5}]
    dtype: bfloat16

A parameter is a number, a list of numbers (a gradient over a slice's layers: t = i / (n-1)
picks a point between neighbouring entries), or a list of ``{filter, value}`` of which the first
whose filter is a substring of the tensor name wins (no filter: matches all). Resolution order
is mergekit's: the source's own parameters, the slice's, then the top level.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import yaml

DTYPES = {
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "fp32": "F32",
    "fp16": "F16",
    "bf16": "BF16",
}
_KNOWN_KEYS = {"merge_method", "base_model", "dtype", "out_dtype", "parameters", "models", "slices", "random_seed",
               "tokenizer_source", "tokenizer", "chat_template", "name"}  # fmt: skip


class MergeConfigError(ValueError):
    pass


@dataclass
class Source:
    model: str
    layer_range: tuple[int, int] | None  # None: every layer (the ``models:`` form)
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class Slice:
    sources: list[Source]
    parameters: dict[str, Any] = field(default_factory=dict)
    base_model: str | None = None


@dataclass
class MergeConfig:
    method: str
    slices: list[Slice]
    base_model: str | None = None
    dtype: str | None = None  # F32/F16/BF16: inputs are rounded to it, as mergekit loads them
    out_dtype: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    random_seed: int = 0
    from_models: bool = False  # written with ``models:`` rather than ``slices:``

    @property
    def models(self) -> list[str]:
        seen = dict.fromkeys(s.model for sl in self.slices for s in sl.sources)
        if self.base_model:
            seen.setdefault(self.base_model)
        return list(seen)


def _dtype(value, key: str) -> str | None:
    if value is None:
        return None
    if str(value) not in DTYPES:
        raise MergeConfigError(f"{key}: unknown dtype {value!r} (one of {', '.join(DTYPES)})")
    return DTYPES[str(value)]


def _params(raw, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise MergeConfigError(f"{where}: parameters must be a mapping, got {raw!r}")
    for name, setting in raw.items():
        _check_setting(setting, f"{where}.{name}")
    return dict(raw)


def _check_setting(setting, where: str) -> None:
    if isinstance(setting, (int, float, bool, str)):
        return
    if isinstance(setting, dict):
        setting = [setting]
    if not isinstance(setting, list) or not setting:
        raise MergeConfigError(
            f"{where}: expected a value, a list of values or of {{filter, value}}, got {setting!r}"
        )
    if all(isinstance(v, (int, float, bool, str)) for v in setting):
        return
    for cond in setting:
        if not isinstance(cond, dict) or "value" not in cond or set(cond) - {"filter", "value"}:
            raise MergeConfigError(f"{where}: each entry needs 'value' and optionally 'filter', got {cond!r}")
        _check_setting(cond["value"], where)


def parse(text_or_dict: str | dict) -> MergeConfig:
    raw = yaml.safe_load(text_or_dict) if isinstance(text_or_dict, str) else text_or_dict
    if not isinstance(raw, dict):
        raise MergeConfigError("a merge configuration is a YAML mapping")
    unknown = set(raw) - _KNOWN_KEYS
    if unknown:
        raise MergeConfigError(f"unknown configuration key(s): {', '.join(sorted(map(str, unknown)))}")
    if "merge_method" not in raw:
        raise MergeConfigError("merge_method is missing")
    if bool(raw.get("models")) == bool(raw.get("slices")):
        raise MergeConfigError("give exactly one of 'models' and 'slices'")
    base = raw.get("base_model")
    if raw.get("slices"):
        slices = []
        for i, sl in enumerate(raw["slices"]):
            sources = []
            for j, s in enumerate(sl.get("sources") or []):
                lr = s.get("layer_range")
                if not (
                    isinstance(lr, list)
                    and len(lr) == 2
                    and all(isinstance(x, int) for x in lr)
                    and lr[0] < lr[1]
                ):
                    raise MergeConfigError(
                        f"slices[{i}].sources[{j}]: layer_range must be [start, end), got {lr!r}"
                    )
                sources.append(
                    Source(
                        str(s["model"]),
                        (lr[0], lr[1]),
                        _params(s.get("parameters"), f"slices[{i}].sources[{j}]"),
                    )
                )
            if not sources:
                raise MergeConfigError(f"slices[{i}] has no sources")
            lengths = {s.layer_range[1] - s.layer_range[0] for s in sources}
            if len(lengths) > 1:
                raise MergeConfigError(
                    f"slices[{i}]: every source must span the same number of layers, got {sorted(lengths)}"
                )
            slices.append(Slice(sources, _params(sl.get("parameters"), f"slices[{i}]"), sl.get("base_model")))
        from_models = False
    else:
        sources = [Source(str(m["model"]), None, _params(m.get("parameters"), f"models[{i}]"))
                   for i, m in enumerate(raw["models"])]  # fmt: skip
        slices, from_models = [Slice(sources)], True
    return MergeConfig(
        method=str(raw["merge_method"]), slices=slices, base_model=str(base) if base else None,
        dtype=_dtype(raw.get("dtype"), "dtype"), out_dtype=_dtype(raw.get("out_dtype"), "out_dtype"),
        parameters=_params(raw.get("parameters"), "parameters"), random_seed=int(raw.get("random_seed", 0)),
        from_models=from_models,
    )  # fmt: skip


def load(path: str | os.PathLike) -> MergeConfig:
    try:
        with open(path, encoding="utf-8") as f:
            return parse(f.read())
    except yaml.YAMLError as e:
        raise MergeConfigError(f"{path}: not valid YAML: {e}") from None
    except UnicodeDecodeError as e:
        raise MergeConfigError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None


class FilterUse:
    """Which ``filter`` strings matched some tensor: a filter that never matches is a mistake
    (a typo, or another architecture's names) that mergekit passes over silently."""

    def __init__(self):
        self.seen: dict[tuple[str, str], bool] = {}

    def report(self) -> list[tuple[str, str]]:
        return [key for key, hit in self.seen.items() if not hit]


def evaluate(setting, tensor_name: str, t: float, uses: FilterUse | None = None, param: str = ""):
    """The value of one parameter setting for ``tensor_name`` at layer position ``t`` in [0, 1]."""
    if isinstance(setting, dict):
        setting = [setting]
    if isinstance(setting, (int, float, bool, str)):
        return setting
    if all(isinstance(v, (int, float, bool, str)) for v in setting):
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in setting):
            return setting[int(t * (len(setting) - 1))]
        scaled = t * (len(setting) - 1)
        i0 = int(scaled)
        i1 = min(len(setting) - 1, i0 + 1)
        frac = scaled - i0
        return (1 - frac) * setting[i0] + frac * setting[i1]
    chosen = None
    for cond in setting:
        f = cond.get("filter")
        hit = f is None or f == "*" or f in tensor_name
        if uses is not None and f not in (None, "*"):
            uses.seen[(param, f)] = uses.seen.get((param, f), False) or hit
        if hit and chosen is None:
            chosen = cond  # the first match wins; later filters are still recorded as used or not
    return None if chosen is None else evaluate(chosen["value"], tensor_name, t, uses, param)


def scalars(setting) -> list:
    """Every literal value in a setting (to range-check before any tensor is read)."""
    if isinstance(setting, dict):
        setting = [setting]
    if isinstance(setting, (int, float, bool, str)):
        return [setting]
    out = []
    for v in setting:
        out.extend(scalars(v["value"]) if isinstance(v, dict) else [v])
    return out
