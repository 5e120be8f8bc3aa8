"""An EXL2 model directory (ExLlamaV2's ``convert.py -cf`` output) as a tensor source.

The directory is the original Hugging Face one (config.json, tokenizer files) with
``quantization_config.quant_method == "exl2"`` in its config and safetensors (``output.safetensors``
or ``output-0000N-of-0000M.safetensors``, any names do) in which every linear layer, the
``lm_head`` included unless it was kept at 16 bits, is an EXL2 layer (:mod:`ferrollm.checkpoints.exl2.linear`)
and everything else (embeddings, norms, Mixtral's routers) is float16 under its usual name.
Layers are shown as ``<layer>.weight`` in float32, dequantized when read, so the source plugs
into the same writer as :class:`ferrollm.checkpoints.checkpoint.HFCheckpoint`. Every layer's small tensors
(groups, permutation, shapes) are checked when the directory is opened, before anything is
written.
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np

from ferrollm.checkpoints.checkpoint import CheckpointError, n_heads, read_config
from ferrollm.checkpoints.exl2.linear import PARTS, EXL2Error, check_invperm, dequantize, groups_of
from ferrollm.checkpoints.safetensors_io import SafetensorsFile

_SUFFIXES = (*PARTS, "q_perm", "bias")  # q_perm: argsort(q_invperm), in some older files


def quant_method(model_dir: str | os.PathLike) -> str | None:
    """The ``quantization_config.quant_method`` of a Hugging Face directory's config, if any."""
    path = os.path.join(os.fspath(model_dir), "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            qc = json.load(f).get("quantization_config")
    except (OSError, ValueError, AttributeError):
        return None
    return str(qc.get("quant_method")).lower() if isinstance(qc, dict) else None


def is_exl2(model_dir: str | os.PathLike) -> bool:
    return quant_method(model_dir) == "exl2"


def linear_shapes(config: dict) -> dict[str, tuple[int, int]]:
    """(out, in) of every linear layer a llama/Mixtral config implies, by Hugging Face prefix."""
    h, ff = int(config["hidden_size"]), int(config["intermediate_size"])
    n_head, n_kv = n_heads(config)
    hd = int(config.get("head_dim") or h // n_head)
    shapes = {"lm_head": (int(config["vocab_size"]), h)}
    n_exp = int(config.get("num_local_experts") or 0)
    for i in range(int(config["num_hidden_layers"])):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj": (n_head * hd, h), p + "self_attn.k_proj": (n_kv * hd, h),
                       p + "self_attn.v_proj": (n_kv * hd, h), p + "self_attn.o_proj": (h, n_head * hd)})  # fmt: skip
        if not n_exp:
            shapes.update(
                {p + "mlp.gate_proj": (ff, h), p + "mlp.up_proj": (ff, h), p + "mlp.down_proj": (h, ff)}
            )
        for e in range(n_exp):
            q = f"{p}block_sparse_moe.experts.{e}."
            shapes.update({q + "w1": (ff, h), q + "w3": (ff, h), q + "w2": (h, ff)})
    return shapes


class EXL2Checkpoint:
    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.config = read_config(self.path, "an EXL2 model")
        files = sorted(glob.glob(os.path.join(self.path, "*.safetensors")))
        if not files:
            raise CheckpointError(f"{self.path}: no .safetensors files")
        self._files = [SafetensorsFile(p) for p in files]
        stored = [(f, name) for f in self._files for name in sorted(f.names())]
        quantized = {n.rpartition(".")[0] for _, n in stored if n.rpartition(".")[2] in PARTS}
        plain: dict[str, SafetensorsFile] = {}
        parts: dict[str, dict[str, SafetensorsFile]] = {}  # layer -> {part: file}
        self._order: list[str] = []
        for f, name in stored:
            key, _, part = name.rpartition(".")
            if key in quantized and part in _SUFFIXES:
                if key not in parts:
                    parts[key] = {}
                    self._order.append(f"{key}.weight")
                parts[key][part] = f
            else:
                plain[name] = f
                self._order.append(name)
        self._plain, self._parts = plain, parts
        self._shapes = {}
        expected = linear_shapes(self.config)
        for key, where in parts.items():
            self._shapes[key] = self._check_layer(key, where, expected.get(key))
        for key in expected:  # a layer stored neither quantized nor as a float matrix
            if key not in parts and f"{key}.weight" not in plain:
                if key == "lm_head" and self.config.get("tie_word_embeddings"):
                    continue
                raise EXL2Error(f"{self.path}: layer {key} is missing (no {key}.q_weight)")

    def _check_layer(self, key: str, where: dict, shape: tuple[int, int] | None) -> tuple[int, int]:
        for part in PARTS:
            if part not in where:
                raise EXL2Error(f"{self.path}: missing tensor {key}.{part}")
        if "bias" in where:
            raise EXL2Error(
                f"{self.path}: {key}.bias: linear layers with a bias are not supported (llama layout)"
            )
        qw_shape = where["q_weight"].shape(f"{key}.q_weight")
        if len(qw_shape) != 2:
            raise EXL2Error(f"{self.path}: {key}.q_weight has shape {qw_shape} (2-D expected)")
        invperm = where["q_invperm"].raw(f"{key}.q_invperm")
        rows = invperm.size
        out = shape[0] if shape else qw_shape[1]
        if shape and rows != shape[1]:
            raise EXL2Error(f"{self.path}: {key}.q_invperm has {rows} entries; the config gives {shape[1]} input "
                            "features")  # fmt: skip
        try:
            groups_of(key, where["q_groups"].raw(f"{key}.q_groups"), qw_shape[0], rows)
            p = check_invperm(key, invperm, rows)
            perm = (
                where["q_perm"].raw(f"{key}.q_perm").astype(np.int64).ravel() & 0xFFFF
                if "q_perm" in where
                else None
            )
            if perm is not None and not np.array_equal(perm, np.argsort(p)):
                raise EXL2Error(f"{key}.q_perm: not the inverse of {key}.q_invperm")
        except EXL2Error as e:
            raise EXL2Error(f"{self.path}: {e}") from None
        return (out, rows)

    def names(self) -> list[str]:
        return list(self._order)

    def __contains__(self, name: str) -> bool:
        return name in self._plain or name.removesuffix(".weight") in self._parts

    def _layer(self, name: str) -> str | None:
        key = name.removesuffix(".weight")
        return key if name.endswith(".weight") and key in self._parts else None

    def shape(self, name: str) -> tuple[int, ...]:
        key = self._layer(name)
        if key is not None:
            return self._shapes[key]
        return self._lookup(name).shape(name)

    def stored_dtype(self, name: str) -> str:
        """F16 for EXL2 layers: their dequantized values are float16 exactly."""
        return "F16" if self._layer(name) is not None else self._lookup(name).dtype(name)

    def get(self, name: str) -> np.ndarray:
        key = self._layer(name)
        if key is None:
            return self._lookup(name).get(name)
        where = self._parts[key]
        tensors = {part: f.raw(f"{key}.{part}") for part, f in where.items() if part in PARTS}
        try:
            return dequantize(key, tensors, self._shapes[key][0])
        except EXL2Error as e:
            raise EXL2Error(f"{self.path}: {e}") from None

    def _lookup(self, name: str) -> SafetensorsFile:
        try:
            return self._plain[name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor {name!r}") from None

    def close(self) -> None:
        for f in self._files:
            f.close()
