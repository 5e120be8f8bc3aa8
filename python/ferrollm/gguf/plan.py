"""``ferrollm plan``: the RAM a run of a GGUF file needs, before loading it.

What a run holds resident, each part computed from the file's header alone:

- the weights: the whole file is memory-mapped and every page of it is read (a prompt routes
  tokens to every expert), so its size counts in full; nothing is copied into anonymous
  memory (no repacking);
- the KV cache: layers x context x KV width x (K + V bytes per element of their types), the
  "Max RAM required" column of the model cards adds exactly this to the file size; a
  sliding-window layer holds its window and a batch rather than the context;
- the engine's buffers for one batch of ``n_batch`` tokens (activations, quantized
  activations, the SwiGLU intermediates, logits) and the batched product's per-thread tile;
- a fixed overhead: the Python interpreter with numpy and ferrollm loaded, and the tokenizer.

The benchmark (``benches/bench_engines.py``) checks the prediction against the peak RSS it
measures.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ferrollm import _core, gguf
from ferrollm.quant.block_types import quant_type

# Interpreter + numpy + ferrollm's extension + a 32000-piece tokenizer, as measured on
# x86-64 Linux (VmRSS after loading the embedded model's tokenizer, weights excluded).
FIXED_OVERHEAD_BYTES = 64 << 20
KV_TYPE_NAMES = ("F16", "Q8_0", "Q4_0")


@dataclass(frozen=True)
class RamPlan:
    path: str
    n_ctx: int
    type_k: str
    type_v: str
    n_batch: int
    file_bytes: int
    kv_bytes: int
    compute_bytes: int
    overhead_bytes: int
    mem_total_bytes: int | None
    mem_available_bytes: int | None

    @property
    def total_bytes(self) -> int:
        return self.file_bytes + self.kv_bytes + self.compute_bytes + self.overhead_bytes

    @property
    def fits(self) -> bool | None:
        """Whether the run fits in this machine's RAM (None where it cannot be read)."""
        return None if self.mem_total_bytes is None else self.total_bytes <= self.mem_total_bytes

    def report(self) -> str:
        gib = 2.0**30
        lines = [
            f"{os.path.basename(self.path)}: context {self.n_ctx}, KV {self.type_k}/{self.type_v}, batch {self.n_batch}",
            f"  weights (memory-mapped file) {self.file_bytes / gib:8.2f} GiB",
            f"  KV cache                     {self.kv_bytes / gib:8.2f} GiB",
            f"  compute buffers              {self.compute_bytes / gib:8.2f} GiB",
            f"  interpreter and tokenizer    {self.overhead_bytes / gib:8.2f} GiB",
            f"  max RAM required             {self.total_bytes / gib:8.2f} GiB ({self.total_bytes / 1e9:.1f} GB)",
        ]
        if self.mem_total_bytes is None:
            lines.append("  this machine's memory is unknown")
        else:
            avail = (
                ""
                if self.mem_available_bytes is None
                else f", {self.mem_available_bytes / gib:.1f} GiB available now"
            )
            verdict = (
                "fits"
                if self.fits
                else "does NOT fit: the kernel will re-read weights from disk on every token (very slow); "
                "use a smaller quant or context"
            )
            lines.append(f"  this machine: {self.mem_total_bytes / gib:.1f} GiB RAM{avail}: {verdict}")
        return "\n".join(lines)


def meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes (empty where there is none)."""
    out = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    out[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    except OSError:
        pass
    return out


def _kv_elem_bytes(type_name: str) -> float:
    t = quant_type(type_name)
    if t.name not in KV_TYPE_NAMES:
        raise ValueError(f"KV cache type {type_name!r} is not supported (f16, q8_0, q4_0)")
    return t.block_bytes / t.block_elems


def max_context(md: dict) -> int:
    """The longest context the engine accepts for a file's metadata: the trained one, or
    what its rope scaling stretches the original context to (rust/model/config.rs)."""
    arch = md.get("general.architecture", "llama")
    trained = int(md.get(f"{arch}.context_length", 4096))
    scaling = md.get(f"{arch}.rope.scaling.type", "none")
    if scaling == "none":
        return trained
    orig = int(md.get(f"{arch}.rope.scaling.original_context_length", trained))
    return max(trained, int(orig * float(md.get(f"{arch}.rope.scaling.factor", 1.0))))


def plan(
    path: str | os.PathLike,
    n_ctx: int = 4096,
    type_k: str = "F16",
    type_v: str = "F16",
    n_batch: int = 512,
    n_threads: int = 2,
) -> RamPlan:
    """The RAM a run of ``path`` with this context needs; ``n_ctx`` 0 takes the trained
    context, and a context past it is capped there (as loading would refuse it)."""
    f = gguf.open(path)
    md = f.metadata
    arch = md.get("general.architecture", "llama")

    def hp(key: str, default: int = 0) -> int:
        return int(md.get(f"{arch}.{key}", default))

    n_embd = hp("embedding_length")
    n_head = hp("attention.head_count", 1)
    n_head_kv = hp("attention.head_count_kv", n_head)
    head_dim = hp("attention.key_length", n_embd // max(n_head, 1))
    n_ff, n_expert = hp("feed_forward_length"), hp("expert_count")
    if n_expert:
        n_ff = hp("expert_feed_forward_length", n_ff)
    n_ctx_max = max_context(md)
    n_ctx = min(hp("context_length", 4096), n_ctx_max) if n_ctx <= 0 else min(n_ctx, n_ctx_max)
    n_vocab = len(md.get("tokenizer.ggml.tokens", [])) or 32000

    kv_width = n_head_kv * head_dim
    # Per layer: the context, or a sliding-window layer's ring (the engine's own arithmetic).
    positions = sum(_core.kv_layer_positions(os.fspath(path), n_ctx, n_batch))
    kv_bytes = int(positions * kv_width * (_kv_elem_bytes(type_k) + _kv_elem_bytes(type_v)))

    # One batch's buffers, as the engine sizes them (rust/model/mod.rs, ffn.rs, gemm.rs).
    n = max(1, min(n_batch, n_ctx))
    q_dim = n_head * head_dim
    floats = n * (3 * n_embd + 2 * q_dim + 2 * kv_width)  # x, normed, proj; q, attn; k, v
    floats += n * 2 * n_ff  # SwiGLU gate and up
    if n_expert:
        floats += n * (2 * n_embd + n_expert)  # expert input/output rows, router logits
    floats += n_head * (n_ctx + n * head_dim)  # attention scores and per-head outputs
    floats += n_vocab * 2  # the last token's logits (engine and numpy)
    widest = max(n_embd, n_ff)
    act_bytes = n * widest * 2  # quantized activations and the batched product's copy
    tile_bytes = n_threads * widest * 16 * 2  # per-thread panel of 16 unpacked rows
    compute_bytes = 4 * floats + act_bytes + tile_bytes
    info = meminfo()
    return RamPlan(
        path=os.fspath(path),
        n_ctx=n_ctx,
        type_k=quant_type(type_k).name,
        type_v=quant_type(type_v).name,
        n_batch=n_batch,
        file_bytes=os.path.getsize(path),
        kv_bytes=kv_bytes,
        compute_bytes=compute_bytes,
        overhead_bytes=FIXED_OVERHEAD_BYTES,
        mem_total_bytes=info.get("MemTotal"),
        mem_available_bytes=info.get("MemAvailable"),
    )
