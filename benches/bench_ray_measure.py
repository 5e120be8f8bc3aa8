"""The `--target-bpw` measurement of the embedded model, locally and as Ray tasks on a local
2-node cluster (one CPU per task): wall times, the task work summed over tasks, and the
overhead per task, from which the time on N machines can be estimated (docs/usage/cluster.md).

    python -m benches.bench_ray_measure

Needs ferrollm[ray]. Results: benches/results/ray_measure.json.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from ferrollm import demo_model_path
from ferrollm.quant.allocate import Target, quantize_to_target

from tests.support import ray_cluster
from tests.support.peer import HELDOUT

ROOT = Path(__file__).resolve().parent.parent
MEASURE = {"types": ("Q2_K", "Q4_K", "Q6_K", "Q8_0"), "anchors": 2, "n_tokens": 256}


def main() -> int:
    text = HELDOUT[:20000]
    with tempfile.TemporaryDirectory() as d:
        local = quantize_to_target(demo_model_path(), f"{d}/l.gguf", Target(bpw=4.5), calibration=text,
                                   measurement=f"{d}/l.json", threads=2, **MEASURE).measurement  # fmt: skip
        with ray_cluster.cluster() as cluster:
            on_ray = quantize_to_target(demo_model_path(), f"{d}/r.gguf", Target(bpw=4.5), calibration=text,
                                        measurement=f"{d}/r.json", ray_address=cluster.address, **MEASURE).measurement  # fmt: skip
    n = len(local.tensors)
    s, r = local.seconds, on_ray.seconds
    work = r["quantize"] + r["kld"]
    overhead = ((r["total"] - r["base"]) * 2 - work) / n
    print(f"embedded model, {n} tensors, {MEASURE}")
    print(f"  local, 2 threads:          {s['total']:6.1f} s (base {s['base']:.1f}, quantize {s['quantize']:.1f}, "
          f"KLD {s['kld']:.1f})")  # fmt: skip
    print(f"  2 nodes x 1 CPU per task:  {r['total']:6.1f} s; task work summed {work:.1f} s")
    print(f"  overhead per task: {overhead:.2f} s")
    out = ROOT / "benches" / "results" / "ray_measure.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"bench": "ray_measure", "tensors": n, "local_s": s, "ray_s": r,
                               "overhead_s_per_task": overhead}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
