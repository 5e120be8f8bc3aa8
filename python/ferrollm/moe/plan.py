"""A Mixtral assembled from dense Llama/Mistral models, as a tensor source (``names``/``shape``/
``get``/``config``, Hugging Face names, classic expert layout) for the GGUF writer.

- Everything but the MLP comes from the base model (embedding, attention, norms, head).
- Layer i's expert e is expert model e's ``model.layers.i.mlp`` (gate_proj -> w1, down_proj
  -> w2, up_proj -> w3); ``residual_scale`` multiplies its down_proj, ``noise_scale`` adds
  seeded Gaussian noise to all three.
- Layer i's router (``block_sparse_moe.gate.weight``) is row e of ``routers[i]``.

Models and shapes are checked when the plan is made, before any tensor is read.
"""

from __future__ import annotations

import os

import numpy as np

from ferrollm.checkpoints.checkpoint import open_checkpoint
from ferrollm.moe.config import MoEConfig

DENSE = ("LlamaForCausalLM", "MistralForCausalLM")  # one GGUF architecture (llama)
_MLP = {"w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"}  # Mixtral expert matrix -> dense MLP part


class MoEError(ValueError):
    pass


class MoEPlan:
    def __init__(self, cfg: MoEConfig, resolve_model=None):
        self.cfg = cfg
        resolve_model = resolve_model or (lambda m: m)
        self._open: dict[str, object] = {}
        try:
            self.base = self._checkpoint(resolve_model(cfg.base_model), "base_model")
            self.experts = [self._checkpoint(resolve_model(e.source_model), f"experts[{i}]")
                            for i, e in enumerate(cfg.experts)]  # fmt: skip
            self.n_layer = int(self.base.config["num_hidden_layers"])
            self.n_embd = int(self.base.config["hidden_size"])
            self._check_experts()
        except BaseException:
            self.close()
            raise
        self.routers: np.ndarray | None = None  # (n_layer, n_expert, n_embd), set before reading
        ff = self.experts[0].shape("model.layers.0.mlp.gate_proj.weight")[0]
        n_head = int(self.base.config["num_attention_heads"])
        self.config = dict(self.base.config, architectures=["MixtralForCausalLM"], model_type="mixtral",
                           intermediate_size=ff, num_local_experts=len(self.experts),
                           num_experts_per_tok=cfg.experts_per_token,
                           head_dim=self.base.config.get("head_dim") or self.n_embd // n_head)  # fmt: skip
        self._names = self._plan_names()

    def _checkpoint(self, path: str, where: str):
        if path in self._open:
            return self._open[path]
        if not os.path.exists(path):
            raise MoEError(f"{where}: model {path!r} not found (a Hugging Face directory or .gguf file; "
                           "models are not downloaded)")  # fmt: skip
        ck = open_checkpoint(path)
        self._open[path] = ck
        arch = (ck.config.get("architectures") or ["?"])[0]
        if arch not in DENSE:
            kind = (
                "a mixture of experts" if ck.config.get("num_local_experts") else "not a Llama/Mistral model"
            )
            raise MoEError(f"{where}: {path} is a {arch} ({kind}); the base and the experts must be dense "
                           "Llama/Mistral models")  # fmt: skip
        return ck

    def _check_experts(self) -> None:
        first = None
        for i, (e, ck) in enumerate(zip(self.cfg.experts, self.experts)):
            where = f"experts[{i}] ({e.source_model})"
            layers, embd = int(ck.config["num_hidden_layers"]), int(ck.config["hidden_size"])
            if (layers, embd) != (self.n_layer, self.n_embd):
                raise MoEError(f"{where} has {layers} layers of width {embd}; the base has {self.n_layer} of "
                               f"width {self.n_embd} (experts must have the base's shape)")  # fmt: skip
            for layer in range(self.n_layer):
                for part in _MLP.values():
                    name = f"model.layers.{layer}.mlp.{part}.weight"
                    if name not in ck:
                        raise MoEError(f"{where} has no {name} (not a dense model?)")
            shapes = {p: tuple(ck.shape(f"model.layers.0.mlp.{p}.weight")) for p in _MLP.values()}
            if first is None:
                first = (i, shapes)
            elif shapes != first[1]:
                raise MoEError(f"{where}: MLP shapes {shapes} differ from experts[{first[0]}]'s {first[1]} "
                               "(a layer's experts are stacked into one tensor)")  # fmt: skip

    def _plan_names(self) -> list[str]:
        """The base's tensors in its order, each layer's MLP replaced by the router then the
        experts' w1/w2/w3 (GGUF: ffn_gate_inp, ffn_gate_exps, ffn_down_exps, ffn_up_exps)."""
        out, done = [], set()
        for name in self.base.names():
            parts = name.split(".")
            if len(parts) < 4 or parts[0] != "model" or parts[1] != "layers" or parts[3] != "mlp":
                out.append(name)
                continue
            layer = int(parts[2])
            if layer in done:
                continue
            done.add(layer)
            prefix = f"model.layers.{layer}.block_sparse_moe"
            out.append(f"{prefix}.gate.weight")
            for w in _MLP:
                out += [f"{prefix}.experts.{e}.{w}.weight" for e in range(len(self.experts))]
        return out

    def _expert_source(self, name: str) -> tuple[int, int, str, int] | None:
        """(layer, expert, dense MLP name, projection index) of an expert matrix name."""
        parts = name.split(".")
        if len(parts) == 8 and parts[3] == "block_sparse_moe" and parts[4] == "experts":
            layer, e, w = int(parts[2]), int(parts[5]), parts[6]
            return layer, e, f"model.layers.{layer}.mlp.{_MLP[w]}.weight", list(_MLP).index(w)
        return None

    # The tensor source interface.
    def names(self) -> list[str]:
        return list(self._names)

    def __contains__(self, name: str) -> bool:
        return name in self._names

    def shape(self, name: str) -> tuple[int, ...]:
        if name.endswith("block_sparse_moe.gate.weight"):
            return (len(self.experts), self.n_embd)
        src = self._expert_source(name)
        if src:
            return tuple(self.experts[src[1]].shape(src[2]))
        return tuple(self.base.shape(name))

    def get(self, name: str) -> np.ndarray:
        if name.endswith("block_sparse_moe.gate.weight"):
            if self.routers is None:
                raise MoEError("the routers have not been computed")
            return np.ascontiguousarray(self.routers[int(name.split(".")[2])])
        src = self._expert_source(name)
        if src is None:
            return self.base.get(name)
        layer, e, dense, proj = src
        w, spec = self.experts[e].get(dense), self.cfg.experts[e]
        if spec.noise_scale:
            rng = np.random.default_rng([self.cfg.random_seed, layer, e, proj])
            w = w + (rng.standard_normal(w.shape) * spec.noise_scale).astype(np.float32)
        if spec.residual_scale is not None and proj == 1:  # down_proj writes into the residual stream
            w = w * np.float32(spec.residual_scale)
        return w

    def close(self) -> None:
        for ck in self._open.values():
            ck.close()
        self._open.clear()
