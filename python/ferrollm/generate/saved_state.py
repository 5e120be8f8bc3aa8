"""Saved evaluation state (``Llama.save_state`` / ``Llama.load_state``), llama-cpp-python's
``LlamaState``: the tokens evaluated, their logits, the KV cache rows that hold them, and the
sampler's generator, so that a restored model continues exactly as the original did.

The KV rows come from the engine (``Model.save_kv`` / ``Model.load_kv``: bytes of sequence 0
and its length). A state carries a fingerprint of the model that made it (the GGUF header, the
file's size, samples of its tensor data, the effective configuration) and of its KV cache
types: loading it into another model, or a cache of other types, is a ValueError that says so.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

if TYPE_CHECKING:
    from ferrollm.gguf import GGUFFile
    from ferrollm.llama import Llama

# Tensor data sampled for the fingerprint: enough to tell two fine-tunes of one shape apart,
# cheap on a large file.
_SAMPLES, _SAMPLE_BYTES = 16, 4096


class LlamaState:
    """llama-cpp-python's fields (``input_ids``, ``scores``, ``n_tokens``, ``llama_state``,
    ``llama_state_size``, ``seed``) and ferrollm's checks (``model_fingerprint``, ``kv_types``)
    and generator state (``rng_state``)."""

    def __init__(
        self,
        input_ids: np.ndarray,
        scores: np.ndarray,
        n_tokens: int,
        llama_state: bytes,
        llama_state_size: int,
        seed: int,
        model_fingerprint: str = "",
        kv_types: tuple[str, str] = ("F16", "F16"),
        rng_state: dict[str, Any] | None = None,
    ):
        self.input_ids = input_ids
        self.scores = scores
        self.n_tokens = n_tokens
        self.llama_state = llama_state
        self.llama_state_size = llama_state_size
        self.seed = seed
        self.model_fingerprint = model_fingerprint
        self.kv_types = tuple(kv_types)
        self.rng_state = rng_state

    def __repr__(self) -> str:
        return f"LlamaState(n_tokens={self.n_tokens}, {self.llama_state_size} bytes of KV cache)"

    # An .npz of plain arrays (no pickle: a cache directory's files may not be trusted).
    def write(self, f: BinaryIO) -> None:
        meta = {"n_tokens": self.n_tokens, "seed": self.seed, "model_fingerprint": self.model_fingerprint,
                "kv_types": list(self.kv_types), "rng_state": self.rng_state}  # fmt: skip
        np.savez(
            f,
            input_ids=np.asarray(self.input_ids, dtype=np.intc),
            scores=np.asarray(self.scores, dtype=np.float32),
            llama_state=np.frombuffer(self.llama_state, dtype=np.uint8),
            meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        )

    @classmethod
    def read(cls, f: BinaryIO | str | os.PathLike) -> LlamaState:
        with np.load(f, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes())
            kv = z["llama_state"].tobytes()
            return cls(z["input_ids"], z["scores"], meta["n_tokens"], kv, len(kv), meta["seed"],
                       meta["model_fingerprint"], tuple(meta["kv_types"]), meta["rng_state"])  # fmt: skip

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        self.write(buf)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> LlamaState:
        return cls.read(io.BytesIO(data))


def model_fingerprint(path: str, file: GGUFFile, config: dict[str, Any]) -> str:
    """What a saved KV cache continues: the file's header, samples of its data, and the
    engine's configuration (which includes kv_overrides' effect), less the cache types."""
    h = hashlib.sha256()
    with open(path, "rb") as raw:
        h.update(raw.read(file.data_offset))  # magic, metadata, tensor infos
        data_size = file.file_size - file.data_offset
        for i in range(_SAMPLES):
            raw.seek(file.data_offset + data_size * i // _SAMPLES)
            h.update(raw.read(_SAMPLE_BYTES))
    h.update(str(file.file_size).encode())
    config = {k: v for k, v in config.items() if k not in ("type_k", "type_v")}
    h.update(json.dumps(config, sort_keys=True).encode())
    return h.hexdigest()


def kv_types(llm: Llama) -> tuple[str, str]:
    c = llm.session.engine.config()
    return c["type_k"], c["type_v"]


def save(llm: Llama) -> LlamaState:
    session = llm.session
    with session.exclusive():
        kv = session.engine.save_kv(0)
        return LlamaState(
            input_ids=np.array(llm.input_ids, dtype=np.intc),
            scores=llm.scores.copy(),
            n_tokens=llm.n_tokens,
            llama_state=kv,
            llama_state_size=len(kv),
            seed=getattr(llm, "seed", 0xFFFFFFFF),
            model_fingerprint=llm.fingerprint,
            kv_types=kv_types(llm),
            rng_state=llm.rng.bit_generator.state,
        )


def check(llm: Llama, state: LlamaState) -> None:
    if not isinstance(state, LlamaState):
        raise TypeError(f"load_state expects a LlamaState (from save_state), not {type(state).__name__}")
    if state.model_fingerprint != llm.fingerprint:
        raise ValueError(
            f"this state was saved by another model (or the same file with other settings) than "
            f"{os.path.basename(llm.model_path)}: a KV cache only continues the model that made it"
        )
    if tuple(state.kv_types) != kv_types(llm):
        raise ValueError(
            f"this state holds a {'/'.join(state.kv_types)} KV cache (type_k/type_v) but this Llama's "
            f"cache is {'/'.join(kv_types(llm))}: open it with the same type_k and type_v"
        )
    if state.n_tokens > llm.n_ctx():
        raise ValueError(f"this state holds {state.n_tokens} tokens, more than n_ctx={llm.n_ctx()}")
    if len(state.input_ids) != state.n_tokens:
        raise ValueError(f"corrupt state: {len(state.input_ids)} token ids for n_tokens={state.n_tokens}")


def load(llm: Llama, state: LlamaState) -> None:
    check(llm, state)
    session = llm.session
    engine = session.engine
    tokens = [int(t) for t in state.input_ids]
    with session.exclusive():
        if state.n_tokens == 0:
            engine.truncate(0)  # an empty state: nothing cached
        else:
            engine.load_kv(bytes(state.llama_state), 0)  # ValueError if the shape differs
        if engine.n_past != state.n_tokens:
            engine.truncate(0)
            session.set([], [])
            raise ValueError(
                f"corrupt state: the cache holds {engine.n_past} tokens, the state {state.n_tokens}"
            )
        session.set(tokens, [np.array(state.scores, dtype=np.float32)] if len(state.scores) else [])
        if state.rng_state is not None:
            llm.rng.bit_generator.state = state.rng_state
