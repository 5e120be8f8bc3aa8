"""Small batches: the cost of one product with 1..16 activation rows (a server's decoding
slots, speculative decoding's guesses, prefill's first tiles) per weight type, against the same
rows run one at a time.

    python benches/bench_batches.py [--types IQ2_XS,Q4_K] [--shape 4096x4096] [--reps 20]

One thread and its CPU time (the minimum over the repetitions), so that other processes on the
machine change the figures little; the matrix fits no cache level the product relies on. Prints
ms per call and the ratio to one row; writes benches/results/batches.json (records as in
../shared/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

TYPES = ["Q4_0", "Q8_0", "IQ4_NL", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ1_S", "IQ1_M", "IQ2_XXS",
         "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_XS"]  # fmt: skip
BATCHES = [1, 2, 3, 4, 6, 8, 16]


def cpu_ms(call, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.thread_time()
        call()
        best = min(best, time.thread_time() - t0)
    return best * 1e3


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--types", default=",".join(TYPES))
    p.add_argument("--shape", default="4096x4096", help="rows x cols")
    p.add_argument("--reps", type=int, default=20)
    args = p.parse_args()

    import numpy as np
    from ferrollm import _core
    from ferrollm.gguf.synthetic import random_blocks
    from ferrollm.quant.block_types import quant_type

    rows, cols = (int(v) for v in args.shape.split("x"))
    pool = _core.ThreadPool(1)
    print(f"{rows}x{cols}, 1 thread, ms of CPU per call (x: ratio to 1 row); 'rows alone': the "
          f"batch's rows one call each")  # fmt: skip
    print(f"{'type':<8}" + "".join(f"{n:>13}" for n in BATCHES) + f"{'4 rows alone':>14}")
    records = []
    for name in args.types.split(","):
        qt = quant_type(name)
        w = random_blocks(qt.name, rows * cols // qt.block_elems, np.random.default_rng(0), 0.02).reshape(-1)
        x = np.random.default_rng(1).standard_normal((max(BATCHES), cols)).astype(np.float32)
        line, single = f"{qt.name:<8}", None
        for n in BATCHES:
            xs = x[:n]
            _core.matmul(w, qt.name, rows, cols, xs, pool=pool)
            ms = cpu_ms(
                lambda xs=xs, w=w, t=qt.name: _core.matmul(w, t, rows, cols, xs, pool=pool), args.reps
            )
            single = single or ms
            line += f"{ms:>7.2f} {ms / single:>4.1f}x"
            records.append({"bench": "small_batch", "qtype": qt.name, "threads": 1, "engine": "ferrollm",
                            "shape": f"{rows}x{cols}", "n_tokens": n, "cpu_ms": round(ms, 3),
                            "ratio_to_one": round(ms / single, 3)})  # fmt: skip
        alone = sum(
            cpu_ms(
                lambda xr=x[r : r + 1], w=w, t=qt.name: _core.matmul(w, t, rows, cols, xr, pool=pool),
                args.reps,
            )
            for r in range(4)
        )
        records.append({"bench": "small_batch_rows_alone", "qtype": qt.name, "threads": 1,
                        "engine": "ferrollm", "shape": f"{rows}x{cols}", "n_tokens": 4,
                        "cpu_ms": round(alone, 3)})  # fmt: skip
        print(line + f"{alone:>14.2f}", flush=True)
    out = Path(__file__).parent / "results" / "batches.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(records, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
