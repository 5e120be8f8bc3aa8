"""Model checkpoints as one kind of tensor source, whatever they are stored as.

A source has a Hugging Face ``config`` (dict), ``names()`` in file order, ``shape(name)`` and
``get(name)`` (float32, numpy order), all under Hugging Face llama names in Hugging Face
layout (:mod:`ferrollm.llama_layout`), Mixtral experts one matrix per expert. Tensors are read
one at a time from memory maps whose pages are released after each read, so a pass over a
model holds one tensor (plus what the caller keeps).

- :class:`HFCheckpoint`: a Hugging Face directory (config.json and safetensors, single or
  sharded, F32/F16/BF16). The fused expert layout transformers 5 writes
  (``mlp.experts.gate_up_proj``/``down_proj``, router ``mlp.gate``) is shown as the classic one.
- :class:`GGUFCheckpoint`: a GGUF file of any type, dequantized on the fly.
"""

from __future__ import annotations

import glob
import json
import mmap
import os
import re
from typing import Any

import numpy as np

from ferrollm.checkpoints import llama_layout
from ferrollm.checkpoints.safetensors_io import SafetensorsFile
from ferrollm.gguf import GGUFFile
from ferrollm.quant import block_types

ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "MixtralForCausalLM")
_FUSED = re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)")
_CLASSIC_EXPERT = re.compile(r"model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.(w[123])\.weight")


class CheckpointError(ValueError):
    pass


def n_heads(config: dict) -> tuple[int, int]:
    n_head = int(config["num_attention_heads"])
    return n_head, int(config.get("num_key_value_heads") or n_head)


class _Indexed:
    """A checkpoint whose tensors are found through ``_where`` (name -> where it is stored)."""

    path: str
    _where: dict

    def _lookup(self, name: str):
        try:
            return self._where[name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor {name!r}") from None


def read_json(path: str, data: bytes | None = None) -> Any:
    """A JSON file (or ``data`` read from it), with errors that name the file."""
    try:
        if data is None:
            with open(path, "rb") as f:
                data = f.read()
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: JSON nested too deeply") from None


# The config.json keys every supported architecture's converter reads.
REQUIRED_CONFIG = ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size")


def read_config(path: str, kind: str) -> dict:
    """A checkpoint directory's config.json, of an architecture this converter handles."""
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise CheckpointError(f"{path}: no config.json (not {kind} directory)")
    config = read_json(cfg_path)
    if not isinstance(config, dict):
        raise CheckpointError(f"{cfg_path}: a JSON object is expected, not {type(config).__name__}")
    arch = (config.get("architectures") or ["?"])[0]
    if arch not in ARCHITECTURES:
        raise CheckpointError(
            f"{path}: architecture {arch} is not supported (only {', '.join(ARCHITECTURES)})"
        )
    for key in REQUIRED_CONFIG:
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            got = "missing" if key not in config else f"{value!r}"
            raise CheckpointError(f"{cfg_path}: {key} must be a positive whole number ({got}); a {arch} "
                                  f"config needs {', '.join(REQUIRED_CONFIG)}")  # fmt: skip
    return config


class HFCheckpoint(_Indexed):
    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.config = read_config(self.path, "a Hugging Face model")
        files = sorted(glob.glob(os.path.join(self.path, "*.safetensors")))
        if not files:
            raise CheckpointError(
                f"{self.path}: no .safetensors files (PyTorch .bin checkpoints are not read)"
            )
        self._files = [SafetensorsFile(p) for p in files]
        self._where: dict[str, tuple[SafetensorsFile, str, tuple]] = {}  # name -> (file, stored name, part)
        for f in self._files:
            for stored in sorted(f.names()):
                self._add_stored(f, stored)

    def _add_stored(self, f: SafetensorsFile, stored: str) -> None:
        m = _FUSED.fullmatch(stored)
        if not m:
            name = re.sub(r"\.mlp\.gate\.weight$", ".block_sparse_moe.gate.weight", stored)
            self._where[name] = (f, stored, ())
            return
        layer, kind = m.groups()
        n_exp, rows, _ = f.shape(stored)
        for e in range(n_exp):
            prefix = f"model.layers.{layer}.block_sparse_moe.experts.{e}"
            if kind == "down_proj":
                self._where[f"{prefix}.w2.weight"] = (f, stored, (e, 0, rows))
            else:  # gate then up, halves of one matrix
                self._where[f"{prefix}.w1.weight"] = (f, stored, (e, 0, rows // 2))
                self._where[f"{prefix}.w3.weight"] = (f, stored, (e, rows // 2, rows))

    def names(self) -> list[str]:
        return [n for n in self._where if not n.endswith("rotary_emb.inv_freq")]

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def shape(self, name: str) -> tuple[int, ...]:
        f, stored, part = self._lookup(name)
        shape = f.shape(stored)
        return (part[2] - part[1], *shape[2:]) if part else shape

    def stored_dtype(self, name: str) -> str:
        f, stored, _ = self._lookup(name)
        return f.dtype(stored)

    def get(self, name: str) -> np.ndarray:
        f, stored, part = self._lookup(name)
        return f.get(stored, part)

    def close(self) -> None:
        for f in self._files:
            f.close()


class GGUFCheckpoint(_Indexed):
    """A llama/Mixtral GGUF under Hugging Face names and layout, with a config read from its
    metadata. Stacked expert tensors are cut per expert before dequantizing."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.file = GGUFFile(self.path)
        md = self.file.metadata
        arch = md.get("general.architecture")
        if arch != "llama":
            raise CheckpointError(f"{self.path}: GGUF architecture {arch!r} is not supported (only llama)")
        k = lambda key, default=None: md.get(f"llama.{key}", default)
        n_exp = int(k("expert_count", 0) or 0)
        vocab = len(md.get("tokenizer.ggml.tokens", [])) or k("vocab_size")
        self.config = {
            "architectures": ["MixtralForCausalLM" if n_exp else "LlamaForCausalLM"],
            "model_type": "mixtral" if n_exp else "llama",
            "hidden_size": k("embedding_length"), "num_hidden_layers": k("block_count"),
            "intermediate_size": k("feed_forward_length"), "num_attention_heads": k("attention.head_count"),
            "num_key_value_heads": k("attention.head_count_kv", k("attention.head_count")),
            "rms_norm_eps": k("attention.layer_norm_rms_epsilon", 1e-5), "rope_theta": k("rope.freq_base", 10000.0),
            "max_position_embeddings": k("context_length", 4096), "vocab_size": vocab,
            "tie_word_embeddings": "output.weight" not in {t.name for t in self.file.tensors},
        }  # fmt: skip
        if n_exp:
            self.config.update(num_local_experts=n_exp, num_experts_per_tok=int(k("expert_used_count", 2)))
        self._heads = n_heads(self.config)
        self._where: dict[str, tuple] = {}  # hf name -> (tensor info, expert index or None)
        for info in self.file.tensors:
            try:
                hf = llama_layout.hf_names_of(info.name, n_exp)
            except KeyError:
                continue
            for e, name in enumerate(hf):
                self._where[name] = (info, e if "_exps" in info.name else None)
        with open(self.path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def names(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def shape(self, name: str) -> tuple[int, ...]:
        info, e = self._lookup(name)
        return info.numpy_shape[1:] if e is not None else info.numpy_shape

    def stored_dtype(self, name: str) -> str:
        return self._lookup(name)[0].type

    def get(self, name: str) -> np.ndarray:
        info, e = self._lookup(name)
        shape = info.numpy_shape[1:] if e is not None else info.numpy_shape
        nbytes = info.nbytes // info.numpy_shape[0] if e is not None else info.nbytes
        begin = self.file.data_offset + info.offset + (e or 0) * nbytes
        raw = np.frombuffer(self._map, np.uint8, nbytes, begin)
        values = block_types.dequantize(raw, info.type).reshape(shape)
        del raw
        lo = begin // mmap.PAGESIZE * mmap.PAGESIZE  # release the pages just read
        self._map.madvise(mmap.MADV_DONTNEED, lo, begin + nbytes - lo)
        return llama_layout.to_hf_layout(name, values, *self._heads)

    def close(self) -> None:
        self._map.close()


def open_checkpoint(path: str | os.PathLike):
    """A Hugging Face directory or a .gguf file."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return HFCheckpoint(path)
    if os.path.isfile(path):
        return GGUFCheckpoint(path)
    raise CheckpointError(f"model {path!r} not found (a Hugging Face directory or a .gguf file)")
