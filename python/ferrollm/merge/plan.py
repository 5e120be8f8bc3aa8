"""From a merge configuration to a tensor source: which output tensors, from which inputs, with
which parameters (mergekit's planning), checked before a single tensor is read.

Layers are taken slice by slice and renumbered in order (so passthrough slices stack into a
frankenmerge); inside a slice, layer i of n sits at t = i / (n - 1) of the gradients (t = 1
when n = 1). The embedding comes from the first slice's sources and the final norm and head
from the last slice's, at t = 0.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from ferrollm.checkpoints.checkpoint import open_checkpoint
from ferrollm.checkpoints.safetensors_io import bf16_to_f32, f32_to_bf16
from ferrollm.merge.config import FilterUse, MergeConfig, evaluate, scalars
from ferrollm.merge.methods import METHODS, REQUIRED, Context, MergeMethod

_PRE = ("model.embed_tokens.weight",)
_POST = ("model.norm.weight", "lm_head.weight")
_BOUNDED = {"slerp": ("t",), "ties": ("density",), "dare_ties": ("density",), "dare_linear": ("density",)}


class MergeError(ValueError):
    pass


@dataclass
class Job:
    """One output tensor: the inputs ((model, input tensor name), base first when the method
    has one) and the parameters resolved for it."""

    name: str
    inputs: list[tuple[str, str]]
    base: bool
    shared: dict
    per_model: list[dict]


def _resolve(method: MergeMethod, cfg: MergeConfig, sl, sources, names, out_name, t, uses):
    def lookup(param, scopes, tensor_name):
        for scope in scopes:
            if param in scope:
                v = evaluate(scope[param], tensor_name, t, uses, param)
                if v is not None:
                    return v
        return None

    shared = {}
    for param, default in method.shared.items():
        v = lookup(param, [sl.parameters, cfg.parameters], out_name)
        if v is None:
            if default is REQUIRED:
                raise MergeError(f"{cfg.method}: parameter {param!r} has no value for {out_name}")
            v = default
        shared[param] = v
    per_model = []
    for src, in_name in zip(sources, names):
        if method.needs_base and src.model == _base_of(cfg, sl):
            continue
        values = {}
        for param, default in method.per_model.items():
            v = lookup(param, [src.parameters, sl.parameters, cfg.parameters], in_name)
            if v is None:
                if default is REQUIRED:
                    raise MergeError(
                        f"{cfg.method}: parameter {param!r} has no value for {src.model}: {in_name}"
                    )
                v = default
            values[param] = v
        per_model.append(values)
    return shared, per_model


def _base_of(cfg: MergeConfig, sl) -> str | None:
    return sl.base_model or cfg.base_model


class MergePlan:
    """The merge as a tensor source (``names``/``shape``/``get``/``config``), checked."""

    def __init__(self, cfg: MergeConfig, resolve_model=None):
        self.cfg = cfg
        if cfg.method not in METHODS:
            raise MergeError(f"unknown merge method {cfg.method!r}; known: {', '.join(METHODS)}")
        self.method = METHODS[cfg.method]
        self._check_parameter_names()
        resolve_model = resolve_model or (lambda m: m)
        self.models = {}
        for m in cfg.models:
            path = resolve_model(m)
            if not os.path.exists(path):
                raise MergeError(f"model {m!r} not found at {path} (a Hugging Face directory or .gguf file; "
                                 "models are not downloaded)")  # fmt: skip
            self.models[m] = open_checkpoint(path)
        self._check_architectures()
        self.jobs = self._plan()
        self._check_shapes()
        base = cfg.base_model or cfg.slices[0].sources[0].model
        n_layers = sum(
            (s.sources[0].layer_range[1] - s.sources[0].layer_range[0]) if s.sources[0].layer_range else
            int(self.models[s.sources[0].model].config["num_hidden_layers"]) for s in cfg.slices
        )  # fmt: skip
        self.base = self.models[base]
        self.config = dict(self.base.config, num_hidden_layers=n_layers)
        self._by_name = {j.name: j for j in self.jobs}

    def _check_parameter_names(self) -> None:
        m, cfg = self.method, self.cfg
        known = set(m.shared) | set(m.per_model)
        scopes = [("parameters", cfg.parameters)] + [
            (f"slices[{i}]", s.parameters) for i, s in enumerate(cfg.slices)
        ]
        scopes += [(f"{src.model}", src.parameters) for s in cfg.slices for src in s.sources]
        for where, params in scopes:
            for name, setting in params.items():
                if name not in known:
                    raise MergeError(f"{where}: {cfg.method} has no parameter {name!r} (it takes: "
                                     f"{', '.join(sorted(known)) or 'none'})")  # fmt: skip
                for v in scalars(setting):
                    # mergekit's parameters are numbers (or flags): a string is a typo.
                    if isinstance(v, str) or (isinstance(v, float) and math.isnan(v)):
                        raise MergeError(f"{where}: {name} = {v!r} is not a number")
                    if name in _BOUNDED.get(cfg.method, ()) and not 0 <= v <= 1:
                        raise MergeError(f"{where}: {name} = {v!r} is outside [0, 1]")
        for i, sl in enumerate(cfg.slices):
            n = len(sl.sources) + (
                1 if m.needs_base and _base_of(cfg, sl) not in [s.model for s in sl.sources] else 0
            )
            if n < m.min_inputs or (m.max_inputs is not None and n > m.max_inputs):
                want = f"{m.min_inputs}" + ("+" if m.max_inputs is None else f"..{m.max_inputs}")
                raise MergeError(f"slices[{i}]: {cfg.method} takes {want} models (base included), got {n}")
            if m.needs_base and not _base_of(cfg, sl):
                raise MergeError(f"{cfg.method} needs a base_model")

    def _check_architectures(self) -> None:
        archs = {m: (c.config.get("architectures") or ["?"])[0] for m, c in self.models.items()}
        if len(set(archs.values())) > 1:
            raise MergeError(
                "models of different architectures: " + ", ".join(f"{m} is {a}" for m, a in archs.items())
            )

    def _layer_names(self, model: str, layer: int) -> list[str]:
        ck = self.models[model]
        n = int(ck.config["num_hidden_layers"])
        if not 0 <= layer < n:
            raise MergeError(f"layer {layer} is out of range for {model} ({n} layers)")
        prefix = f"model.layers.{layer}."
        return [name[len(prefix) :] for name in ck.names() if name.startswith(prefix)]

    def _plan(self) -> list[Job]:
        cfg, uses = self.cfg, FilterUse()
        jobs: list[Job] = []

        def add(out_name, sl, sources, in_names, t):
            for src, name in zip(sources, in_names):
                if name not in self.models[src.model]:
                    raise MergeError(f"tensor {name} is missing from {src.model}")
            shared, per_model = _resolve(self.method, cfg, sl, sources, in_names, out_name, t, uses)
            base = _base_of(cfg, sl) if self.method.needs_base else None
            inputs = [(s.model, n) for s, n in zip(sources, in_names)]
            if base is not None:
                inputs.sort(key=lambda i: i[0] != base)  # base first, the rest in config order
                if inputs[0][0] != base:
                    inputs.insert(0, (base, in_names[0]))
            jobs.append(Job(out_name, inputs, base is not None, shared, per_model))

        first, last = cfg.slices[0], cfg.slices[-1]
        for name in _PRE:
            add(name, first, first.sources, [name] * len(first.sources), 0.0)
        out_layer = 0
        for sl in cfg.slices:
            lr = sl.sources[0].layer_range or (
                0,
                int(self.models[sl.sources[0].model].config["num_hidden_layers"]),
            )
            n = lr[1] - lr[0]
            for i in range(n):
                t = i / (n - 1) if n > 1 else 1.0
                layers = [(s.layer_range[0] if s.layer_range else 0) + i for s in sl.sources]
                for part in self._layer_names(sl.sources[0].model, layers[0]):
                    in_names = [f"model.layers.{layer}.{part}" for layer in layers]
                    add(f"model.layers.{out_layer}.{part}", sl, sl.sources, in_names, t)
                out_layer += 1
        for name in _POST:
            if all(name in self.models[s.model] for s in last.sources):
                add(name, last, last.sources, [name] * len(last.sources), 0.0)
        unused = uses.report()
        if unused:
            raise MergeError(
                "filter(s) that match no tensor: " + ", ".join(f"{p}: filter {f!r}" for p, f in unused)
            )
        return jobs

    def _check_shapes(self) -> None:
        for job in self.jobs:
            shapes = {m: self.models[m].shape(n) for m, n in job.inputs}
            if len(set(shapes.values())) > 1:
                raise MergeError(f"models of different shapes at {job.name}: "
                                 + ", ".join(f"{m} {list(s)}" for m, s in shapes.items()))  # fmt: skip

    # The tensor source interface.
    def names(self) -> list[str]:
        return [j.name for j in self.jobs]

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def shape(self, name: str) -> tuple[int, ...]:
        m, n = self._by_name[name].inputs[0]
        return self.models[m].shape(n)

    def get(self, name: str) -> np.ndarray:
        job = self._by_name[name]
        tensors = [self._load(m, n) for m, n in job.inputs]
        base = tensors.pop(0) if job.base else None
        return self.method.fn(base, tensors, job.shared, job.per_model, Context(name, self.cfg.random_seed))

    def _load(self, model: str, name: str) -> np.ndarray:
        """An input tensor as float32, rounded to the merge's dtype as mergekit rounds inputs
        on load (a no-op, skipped, where the file stores that dtype)."""
        ck = self.models[model]
        values = ck.get(name)
        if ck.stored_dtype(name) == self.cfg.dtype:
            return values
        if self.cfg.dtype == "BF16":
            return bf16_to_f32(f32_to_bf16(values))
        if self.cfg.dtype == "F16":
            return values.astype(np.float16).astype(np.float32)
        return values

    def close(self) -> None:
        for ck in self.models.values():
            ck.close()
