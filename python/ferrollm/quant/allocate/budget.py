"""Targets of an allocation and the byte budget each one means.

- ``bpw``: the allocated weight matrices may hold at most bpw x weights / 8 bytes (see
  ``layout`` for what bpw counts);
- ``file_bytes``: the whole output file is at most this many bytes (to match another file's
  size exactly);
- ``ram_bytes`` with a context: the file plus what a run with that context holds besides it
  (KV cache, compute buffers, interpreter: ``plan``'s arithmetic) is at most this many bytes.

A target outside what the candidate types can reach is refused before anything is measured.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ferrollm.gguf import plan
from ferrollm.quant.allocate.layout import Layout

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MIB": 1 << 20, "G": 1 << 30, "GIB": 1 << 30,
          "T": 1 << 40, "TIB": 1 << 40, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}  # fmt: skip


def parse_size(text: str | int) -> int:
    """Bytes from ``16GiB``, ``16G`` (binary), ``17.2GB`` (decimal) or a plain number of bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).upper() if m else None
    if not m or unit not in _UNITS:
        raise ValueError(f"not a size: {text!r} (examples: 16GiB, 16G, 17.2GB, 123456789)")
    return int(float(m.group(1)) * _UNITS[unit])


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if abs(n) < 2**30 else f"{n / 2**30:.2f} GiB"


@dataclass(frozen=True)
class Target:
    bpw: float | None = None
    file_bytes: int | None = None
    ram_bytes: int | None = None
    n_ctx: int = 4096  # with ram_bytes: the context of the run
    type_k: str = "F16"
    type_v: str = "F16"
    n_batch: int = 512
    n_threads: int = 2

    def describe(self) -> str:
        if self.bpw is not None:
            return f"{self.bpw:g} bpw"
        if self.file_bytes is not None:
            return f"a file of at most {self.file_bytes} bytes"
        return f"{_mib(self.ram_bytes or 0)} of RAM at context {self.n_ctx}"


@dataclass(frozen=True)
class Budget:
    """Capacity in bytes of either the allocated weights (``weights``) or the whole file."""

    kind: str  # "weights" or "file"
    capacity: int
    note: str = ""

    def cost(self, layout: Layout, slot, type_name: str) -> int:
        return layout.padded(slot, type_name) if self.kind == "file" else slot.nbytes(type_name)

    def used(self, layout: Layout, types: dict[str, str]) -> int:
        return layout.file_bytes(types) if self.kind == "file" else layout.weight_bytes(types)


def budget(target: Target, layout: Layout, src_path: str) -> Budget:
    """The budget ``target`` means for ``layout``; ValueError when no allocation meets it."""
    given = [x for x in (target.bpw, target.file_bytes, target.ram_bytes) if x is not None]
    if len(given) != 1:
        raise ValueError("give exactly one target: bpw, file size or RAM")
    small, large = layout.extreme(False), layout.extreme(True)
    if target.bpw is not None:
        lo, hi = layout.bpw(small), layout.bpw(large)
        if not lo <= target.bpw <= hi:
            side = "below the smallest" if target.bpw < lo else "above the largest"
            raise ValueError(f"target {target.bpw:g} bpw is {side} allocation: the candidate types reach "
                             f"{lo:.4f} to {hi:.4f} bpw on this model")  # fmt: skip
        return Budget("weights", int(target.bpw * layout.n_weights / 8))
    lo, hi = layout.file_bytes(small), layout.file_bytes(large)
    if target.file_bytes is not None:
        if not lo <= target.file_bytes <= hi:
            side = "below the smallest" if target.file_bytes < lo else "above the largest"
            raise ValueError(f"target size {target.file_bytes} bytes is {side} file the candidate types give: "
                             f"{lo} to {hi} bytes ({_mib(lo)} to {_mib(hi)})")  # fmt: skip
        return Budget("file", target.file_bytes)
    p = plan.plan(src_path, n_ctx=target.n_ctx, type_k=target.type_k, type_v=target.type_v,
                  n_batch=target.n_batch, n_threads=target.n_threads)  # fmt: skip
    besides = p.kv_bytes + p.compute_bytes + p.overhead_bytes
    room = target.ram_bytes - besides
    ctx = f"context {p.n_ctx}" + (
        f" (the trained context; {target.n_ctx} asked)" if p.n_ctx < target.n_ctx else ""
    )
    if room < lo:
        raise ValueError(
            f"no allocation fits in {_mib(target.ram_bytes)}: the smallest file is {_mib(lo)}, and a run at {ctx} "
            f"needs {_mib(p.kv_bytes)} of KV cache, {_mib(p.compute_bytes)} of buffers and "
            f"{_mib(p.overhead_bytes)} for the interpreter: {_mib(lo + besides)} in all, "
            f"{_mib(lo + besides - target.ram_bytes)} more than the budget (a smaller context or KV cache type helps)"
        )
    note = (f"{_mib(target.ram_bytes)} of RAM at {ctx}: KV cache {_mib(p.kv_bytes)}, buffers "
            f"{_mib(p.compute_bytes)}, interpreter {_mib(p.overhead_bytes)}, file at most {_mib(room)}")  # fmt: skip
    if room > hi:
        note += f"; the largest allocation ({_mib(hi)}) fits"
    return Budget("file", min(room, hi), note)
