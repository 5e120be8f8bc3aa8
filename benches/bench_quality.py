"""Quantization quality of the embedded demo model on held-out text: perplexity and
KL-divergence (llama.cpp's definitions) of every type our quantizer writes, against a base.

    python -m benches.bench_quality [--base FILE] [-c 512] [--chunks 40] [--types Q4_0,Q4_K] [--peer]

The base defaults to the shipped Q8_0 model; the figures in the notes use the F16 export of the
training checkpoint (tools/export_demo_model.py --type F16). Each type is quantized from the
base's values ("pure": every matrix, embedding/head included; norms and routers F32). With
--peer, llama.cpp (llama-cpp-python) scores each file too. Writes benches/results/quality.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
from ferrollm import demo_model_path, gguf, kl_divergence, perplexity, quantize_file
from ferrollm.quant.writer import WRITABLE_TYPES

DEFAULT_TYPES = ["F16", "Q8_0", "Q6_K", "Q5_K", "Q5_1", "Q5_0", "Q4_K", "Q4_1", "Q4_0", "IQ4_XS", "IQ4_NL",
                 "Q3_K", "Q2_K"]  # fmt: skip


def weight_bits(path: str) -> float:
    """Bits per weight over the quantized matrices (norms/routers excluded)."""
    with gguf.open(path) as f:
        mats = [t for t in f.tensors if len(t.shape) >= 2 and "gate_inp" not in t.name]
        return 8 * sum(t.nbytes for t in mats) / sum(t.n_elements for t in mats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default=demo_model_path())
    ap.add_argument("-f", "--file", default=str(ROOT / "tests" / "data" / "heldout.txt"))
    ap.add_argument("-c", "--ctx-size", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=40)
    ap.add_argument("--types", default=",".join(DEFAULT_TYPES))
    ap.add_argument("--peer", action="store_true", help="also llama.cpp's perplexity of each file")
    args = ap.parse_args()
    types = [t.strip().upper() for t in args.types.split(",")]
    for t in types:
        if t not in WRITABLE_TYPES:
            sys.exit(f"cannot write {t}; writable: {', '.join(WRITABLE_TYPES)}")
    text = Path(args.file).read_text(encoding="utf-8")
    if args.peer:
        from tests.support.peer import HELDOUT, peer_perplexity

        assert HELDOUT == text, "--peer scores tests/data/heldout.txt only"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base_lp = os.path.join(tmp, "base.logp")
        t0 = time.time()
        base = perplexity(args.base, text, args.ctx_size, args.chunks, save_logprobs=base_lp)
        print(f"base {os.path.basename(args.base)}: PPL {base.ppl:.4f} +/- {base.ppl_err:.4f} "
              f"({base.n_chunks} chunks of {args.ctx_size}, {base.n_tokens_scored} tokens, {time.time() - t0:.0f} s)")  # fmt: skip
        head = f"{'type':8} {'bpw':>6} {'MiB':>6} {'PPL':>16} {'ln(Q/base)':>10} {'mean KLD':>9} {'99% KLD':>8} {'top-1 %':>8}"
        print(head + ("  PPL llama.cpp" if args.peer else ""))
        for t in types:
            path = os.path.join(tmp, f"{t}.gguf")
            t1 = time.time()
            quantize_file(args.base, path, t, pure=True)
            q_seconds = time.time() - t1
            k = kl_divergence(path, base_lp)
            row = {"bench": "quality", "model": "ferrollm-demo", "qtype": t, "engine": "ferrollm",
                   "bpw": weight_bits(path), "size_mib": os.path.getsize(path) / 2**20,
                   "quantize_s": q_seconds, "n_ctx": args.ctx_size, **k.to_dict()}  # fmt: skip
            line = (f"{t:8} {row['bpw']:6.2f} {row['size_mib']:6.1f} {k.ppl:8.4f} +/- {k.ppl_err:.4f} "
                    f"{k.ln_ppl_ratio:10.5f} {k.kld_mean:9.5f} {k.kld_p99:8.4f} {100 * k.top1_agreement:8.2f}")  # fmt: skip
            if args.peer:
                row["ppl_llama_cpp"] = peer_perplexity(path, args.ctx_size, args.chunks)
                line += f"  {row['ppl_llama_cpp']:.4f}"
            print(line, flush=True)
            rows.append(row)
    out = ROOT / "benches" / "results" / "quality.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"base": os.path.basename(args.base), "base_ppl": base.to_dict(), "rows": rows}, indent=1)
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
