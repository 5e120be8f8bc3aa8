"""EXL2 reading speed: dequantizing one layer of each of Mistral 7B's shapes (ExLlamaV2's
3.x-bpw preset: 8/4/3-bit groups with activation order), the whole model extrapolated from
them; and ``ferrollm convert`` of a Mistral-shaped EXL2 directory (``--layers``, 4096/14336,
vocab 32000) to F16 and Q4_K_M beside the same conversion of its dequantized float16
checkpoint, the difference being what reading EXL2 costs. Files are written by the tests'
packer (tests/exl2_models.py) into --scratch and deleted. Each timing is the median of
--repeat runs after a warm-up; results go to benches/results/exl2.json.

    python -m benches.bench_exl2 [--layers 1] [--repeat 3] [--scratch DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time

import ferrollm
import numpy as np
from ferrollm.checkpoints.exl2 import dequantize

from tests.support.exl2_models import pack_layer, write_exl2_model

PRESET = ([8, 4, 3], [0.05, 0.1, 0.85], {8: 32, 4: 128, 3: 128})  # ExLlamaV2's 3.x bpw layers
# (out, in) and count per layer of Mistral 7B's linear layers
MISTRAL = {"q_proj/o_proj": ((4096, 4096), 2), "k_proj/v_proj": ((1024, 4096), 2),
           "gate_proj/up_proj": ((14336, 4096), 2), "down_proj": ((4096, 14336), 1)}  # fmt: skip


def timed(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--scratch", default=None)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "exl2.json"))
    args = ap.parse_args()
    records = []
    rng = np.random.default_rng(0)
    per_layer = 0.0
    print(f"{'layer':<20} {'shape':>14} {'s':>7} {'Mweights/s':>11}")
    for name, ((out_f, in_f), count) in MISTRAL.items():
        t, _ = pack_layer((rng.standard_normal((out_f, in_f), dtype=np.float32) * 0.02), rng, *PRESET)
        s = timed(lambda t=t, o=out_f: dequantize("l", t, o), args.repeat)
        per_layer += s * count
        print(f"{name:<20} {f'{out_f}x{in_f}':>14} {s:7.3f} {out_f * in_f / s / 1e6:11.1f}")
        records.append({"bench": "exl2_dequant", "layer": name, "shape": [out_f, in_f], "s": s})
    head = 32000 * 4096 / (4096 * 14336) * per_layer / 7  # the head, at a matrix's rate (roughly)
    print(f"Mistral 7B, 32 layers and the head: about {32 * per_layer + head:.0f} s of dequantization")
    records.append({"bench": "exl2_dequant_7b_estimate", "s": 32 * per_layer + head})

    scratch = tempfile.mkdtemp(prefix="bench-exl2-", dir=args.scratch)
    try:
        shape = {
            "layers": args.layers,
            "hidden": 4096,
            "ff": 14336,
            "heads": 32,
            "kv_heads": 8,
            "vocab": 32000,
        }
        exl2, flt = os.path.join(scratch, "exl2"), os.path.join(scratch, "float")
        t = time.perf_counter()
        write_exl2_model(exl2, flt, arch="mistral", seed=1, shards=1, **shape)
        print(
            f"wrote the {args.layers}-layer EXL2 and float16 checkpoints in {time.perf_counter() - t:.0f} s"
        )
        print(f"{'convert':<10} {'outtype':<8} {'EXL2 s':>8} {'float16 s':>10}")
        out = os.path.join(scratch, "out.gguf")
        for outtype in ("f16", "Q4_K_M"):
            a = timed(lambda o=outtype: ferrollm.convert(exl2, out, o), args.repeat)
            b = timed(lambda o=outtype: ferrollm.convert(flt, out, o), args.repeat)
            print(f"{'':<10} {outtype:<8} {a:8.2f} {b:10.2f}")
            records.append({"bench": "exl2_convert", "model": f"mistral-shape-{args.layers}L", "outtype": outtype,
                            "exl2_s": a, "float16_s": b})  # fmt: skip
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(records, f, indent=1)


if __name__ == "__main__":
    main()
