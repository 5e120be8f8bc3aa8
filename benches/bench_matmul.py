"""Quantized matrix products per weight type: decode matvec in GB/s of weights streamed, next
to the machine's memory-read bandwidth measured in the same run, and prefill matmul in
GFLOP/s-equivalent (2 * rows * cols * tokens / seconds).

    python benches/bench_matmul.py [--types Q4_0,Q4_K] [--buffer-mib 1536] [--tokens 512]

The matvec shapes are a Mixtral expert's up/gate projection (14336 x 4096) and its down
projection (4096 x 14336). Each type's matrices fill a buffer larger than the last-level cache
and the timed calls cycle through them, so every call streams its weights from memory, as a
model's decode does; each figure is the median of the calls after one warm-up pass. Writes
benches/results/matmul.json (records as in ../shared/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

TYPES = ["F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL", "Q2_K", "Q3_K", "Q4_K",
         "Q5_K", "Q6_K", "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_XS"]  # fmt: skip
TARGET_TYPES = ("Q4_0", "Q8_0", "Q4_K", "IQ4_XS")
SHAPES = {"up": (14336, 4096), "down": (4096, 14336)}


def fill_valid_blocks(buf, type_name: str, rng) -> None:
    """Make the random bytes of ``buf`` valid blocks of ``type_name`` (finite scales), in
    chunks so that no large temporary is made."""
    from ferrollm.gguf import synthetic
    from ferrollm.quant.block_types import quant_type

    if type_name in synthetic.FLOAT_TYPES:
        return  # any bits are a float; NaN/inf only make figures meaningless, not slower
    bb = quant_type(type_name).block_bytes
    blocks = buf[: buf.size // bb * bb].reshape(-1, bb)
    fields = synthetic.n_scale_fields(type_name)
    for start in range(0, blocks.shape[0], 1 << 20):
        part = blocks[start : start + (1 << 20)]
        synthetic.set_scales(part, type_name, rng.uniform(-1, 1, size=(part.shape[0], fields)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--types", default=",".join(TYPES))
    p.add_argument("--buffer-mib", type=int, default=1536, help="weights per type (> LLC)")
    p.add_argument("--tokens", type=int, default=512, help="activation rows of the matmul")
    p.add_argument("--matmul-shape", default="4096x4096", help="rows x cols of the matmul")
    p.add_argument("--reps", type=int, default=3, help="timed matmul calls (median)")
    args = p.parse_args()

    import ferrollm
    import numpy as np
    from ferrollm import _core
    from ferrollm.quant.block_types import quant_type

    rng = np.random.default_rng(0)
    pools = {1: _core.ThreadPool(1), 2: _core.ThreadPool(2)}
    raw = rng.integers(0, 256, size=args.buffer_mib << 20, dtype=np.uint8)
    read_bw = {t: _core.read_bandwidth(raw.nbytes, 5, pool) for t, pool in pools.items()}
    records = [
        {"bench": "memory_read", "threads": t, "engine": "ferrollm", "gb_s": round(bw, 2),
         "buffer_mib": args.buffer_mib}
        for t, bw in read_bw.items()
    ]  # fmt: skip
    print(f"memory read: {read_bw[1]:.1f} GB/s (1 thread), {read_bw[2]:.1f} GB/s (2 threads), "
          f"{args.buffer_mib} MiB buffer; SIMD tier {ferrollm.quant.block_types.isa_active()}")  # fmt: skip
    mm_rows, mm_cols = (int(v) for v in args.matmul_shape.split("x"))
    print(f"matvec GB/s of weights (fraction of read bandwidth); matmul {args.tokens} x "
          f"{mm_cols} by {mm_rows} x {mm_cols}, GFLOP/s, 2 threads")  # fmt: skip
    header = f"{'type':<8} {'bpw':>5} {'tier':>6}"
    for shape in SHAPES:
        header += f" {shape + ' 1T':>14} {shape + ' 2T':>14}"
    print(header + f" {'matmul':>8}")

    for name in args.types.split(","):
        qt = quant_type(name)
        tier = _core.dot_isa(qt.name)
        fill_valid_blocks(raw, qt.name, rng)
        line = f"{qt.name:<8} {qt.bits_per_weight:>5.2f} {tier:>6}"
        for shape, (rows, cols) in SHAPES.items():
            size = rows * cols // qt.block_elems * qt.block_bytes
            n_mats = max(1, raw.nbytes // size)
            weights = raw[: n_mats * size]
            x = rng.standard_normal(cols).astype(np.float32)
            for threads, pool in pools.items():
                seconds, _ = _core.time_matvec(
                    weights, qt.name, rows, cols, x, max(9, 2 * n_mats), None, pool
                )
                gb_s = size / seconds / 1e9
                fraction = gb_s / read_bw[threads]
                line += f" {gb_s:>7.1f} ({fraction:>4.0%})"
                records.append({
                    "bench": "kernel", "qtype": qt.name, "threads": threads, "engine": "ferrollm",
                    "shape": f"{rows}x{cols}", "isa": tier, "gb_s": round(gb_s, 2),
                    "read_gb_s": round(read_bw[threads], 2), "fraction_of_read": round(fraction, 3),
                    "us_per_call": round(seconds * 1e6, 1),
                })  # fmt: skip
        w = raw[: mm_rows * mm_cols // qt.block_elems * qt.block_bytes]
        x = rng.standard_normal((args.tokens, mm_cols)).astype(np.float32)
        _core.matmul(w, qt.name, mm_rows, mm_cols, x, None, pools[2])  # warm-up
        times = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            _core.matmul(w, qt.name, mm_rows, mm_cols, x, None, pools[2])
            times.append(time.perf_counter() - t0)
        gflops = 2 * mm_rows * mm_cols * args.tokens / statistics.median(times) / 1e9
        records.append({
            "bench": "matmul", "qtype": qt.name, "threads": 2, "engine": "ferrollm", "isa": tier,
            "shape": f"{mm_rows}x{mm_cols}", "n_tokens": args.tokens, "gflop_s": round(gflops, 2),
        })  # fmt: skip
        print(line + f" {gflops:>8.1f}", flush=True)

    short = [r for r in records if r.get("bench") == "kernel" and r["threads"] == 2
             and r["qtype"] in TARGET_TYPES and r["fraction_of_read"] < 0.8]  # fmt: skip
    if short:
        print("below 80% of read bandwidth on 2 threads: "
              + ", ".join(sorted({f"{r['qtype']} ({r['shape']})" for r in short})))  # fmt: skip
    for r in records:
        r["machine"] = platform.machine()
    out = Path(__file__).parent / "results" / "matmul.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(records, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
