"""Dequantization throughput per block type: GB/s of float32 output for ferrollm's scalar
reference, its SIMD kernels and gguf-py's numpy reference, on random valid blocks.

    python benches/bench_dequant.py [--elems N] [--reps 3] [--threads 2] [--types Q4_K,IQ2_XS]

Each figure is the median of --reps timed runs after one warm-up. Writes
benches/results/dequant.json (records as in ../shared/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

TYPES = ["F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
         "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_NL", "IQ4_XS"]  # fmt: skip


def median_seconds(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--elems", type=int, default=4096 * 4096, help="elements per tensor")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--types", default=",".join(TYPES))
    p.add_argument("--no-numpy", action="store_true", help="skip the gguf-py reference")
    args = p.parse_args()
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)  # before the Rust pool starts

    import ferrollm
    import numpy as np
    from ferrollm.gguf.synthetic import random_blocks
    from ferrollm.quant.block_types import quant_type

    gq = None
    if not args.no_numpy:
        try:
            from gguf import GGMLQuantizationType
            from gguf import quants as gq
        except ImportError:
            print("gguf not installed: skipping the numpy reference", file=sys.stderr)

    simd = ferrollm.quant.block_types.isa_active()
    rng = np.random.default_rng(0)
    records = []
    print(f"dequantization, {args.elems:,} elements per tensor, {args.threads} threads, "
          f"median of {args.reps}; GB/s of float32 output")  # fmt: skip
    print(f"{'type':<8} {'bpw':>5} {'scalar':>8} {'simd':>8} {'tier':>7} {'speedup':>8} {'numpy':>8}")
    for name in args.types.split(","):
        qt = quant_type(name)
        n_blocks = args.elems // qt.block_elems
        blocks = random_blocks(qt.name, n_blocks, rng).reshape(-1)
        out_gb = n_blocks * qt.block_elems * 4 / 1e9
        row = {}
        out = np.empty(
            n_blocks * qt.block_elems, np.float32
        )  # preallocated: time the kernel, not page faults
        for label, isa in [("scalar", "scalar"), ("simd", simd)]:

            def run(blocks=blocks, name=qt.name, isa=isa, out=out):
                ferrollm.dequantize(blocks, name, isa=isa, out=out)

            row[label] = out_gb / median_seconds(run, args.reps)
        if gq is not None:
            qtype = GGMLQuantizationType[qt.name]

            def run_numpy(blocks=blocks, qtype=qtype):
                gq.dequantize(blocks, qtype)

            row["numpy"] = out_gb / median_seconds(run_numpy, max(1, args.reps // 3))
        tier = ferrollm.quant.block_types.kernel_isa(qt.name)
        np_text = f"{row['numpy']:8.2f}" if "numpy" in row else f"{'-':>8}"
        print(f"{qt.name:<8} {qt.bits_per_weight:5.2f} {row['scalar']:8.2f} {row['simd']:8.2f} {tier:>7} "
              f"{row['simd'] / row['scalar']:7.1f}x {np_text}")  # fmt: skip
        for engine, gbs in row.items():
            records.append({
                "bench": "dequant", "qtype": qt.name, "threads": args.threads,
                "engine": "gguf-py" if engine == "numpy" else "ferrollm",
                "kernel": tier if engine == "simd" else engine, "out_gb_s": round(gbs, 3),
                "n_elements": n_blocks * qt.block_elems, "cpu": platform.processor() or platform.machine(),
            })  # fmt: skip
    out = Path(__file__).parent / "results" / "dequant.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(records, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
