"""ferrollm's quantizer against llama.cpp's, type by type, on the embedded demo model with the
same importance matrix: perplexity and KL-divergence on held-out text, file size, and time.

    python benches/bench_quantize.py [--base FILE] [--types IQ2_XS,Q4_K_M] [--chunks 32]
                                     [--calib-chunks 100] [--imatrix FILE]

1. The importance matrix is collected by ferrollm over calibration text: Python standard-library
   sources of the running interpreter (the demo model's training domain) minus the held-out files.
2. Each type is written twice from the same base and imatrix: by `ferrollm.quantize` and by
   llama.cpp's `llama_model_quantize` (llama-cpp-python, `pip install '.[peer]'`). Tensor
   types ("pure" rows) put every block matrix in that type on both sides and the token
   embedding (the tied head; no imatrix covers it, and llama.cpp aborts on 1-2 bit types
   without one) in Q8_0; named mixes use each engine's own per-tensor rules (the same rules,
   so the same tensor types).
3. Both files are scored by ferrollm against the base's log-probabilities on
   tests/data/heldout.txt. Writes benches/results/quantize.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from bench_quality import weight_bits  # benches/ is on sys.path when run as a script
from ferrollm import collect_imatrix, demo_model_path, kl_divergence, perplexity, quantize_file
from ferrollm.quant.imatrix import Imatrix
from ferrollm.quant.peer import peer_quantize

ROOT = Path(__file__).resolve().parent.parent
HELDOUT = ROOT / "tests" / "data" / "heldout.txt"
PURE_TYPES = ["Q8_0", "Q6_K", "Q5_K", "Q5_1", "Q5_0", "Q4_K", "Q4_1", "Q4_0", "IQ4_XS", "IQ4_NL", "Q3_K", "IQ3_S",
              "IQ3_XXS", "Q2_K", "IQ2_S", "IQ2_XS", "IQ2_XXS", "IQ1_M", "IQ1_S"]  # fmt: skip
MIXES = ["Q5_K_M", "Q4_K_M", "Q3_K_M", "IQ3_M", "IQ3_XS", "IQ2_M"]


def calibration_text(max_chars: int) -> str:
    """Standard-library sources, sorted, every third file, skipping the held-out ones."""
    held = set(re.findall(r"^# ---- Lib/(.+?) ----$", HELDOUT.read_text(encoding="utf-8"), re.MULTILINE))
    lib = Path(sysconfig.get_paths()["stdlib"])
    parts, size = [], 0
    for i, p in enumerate(sorted(lib.rglob("*.py"))):
        rel = p.relative_to(lib).as_posix()
        if i % 3 or rel in held or "site-packages" in rel:
            continue
        text = p.read_text(encoding="utf-8", errors="replace")
        parts.append(f"# ---- Lib/{rel} ----\n{text}")
        size += len(parts[-1])
        if size >= max_chars:
            break
    return "\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default=demo_model_path())
    ap.add_argument("--types", default=",".join(PURE_TYPES + MIXES))
    ap.add_argument("-c", "--ctx-size", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=32, help="held-out chunks scored")
    ap.add_argument("--calib-chunks", type=int, default=100, help="calibration chunks of 512 tokens")
    ap.add_argument("--imatrix", help="use this importance matrix instead of collecting one")
    ap.add_argument("-t", "--threads", type=int, default=2)
    args = ap.parse_args()
    types = [t.strip().upper() for t in args.types.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        if args.imatrix:
            im = Imatrix.load(args.imatrix)
        else:
            im, calib_ppl = collect_imatrix(args.base, calibration_text(4_000_000), n_ctx=512,
                                            n_chunks=args.calib_chunks, dataset="python-stdlib")  # fmt: skip
            im.save(os.path.join(tmp, "imatrix.dat"))
            print(f"imatrix: {im.chunk_count} chunks of 512 tokens, calibration PPL {calib_ppl:.3f}, "
                  f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
        base_lp = os.path.join(tmp, "base.logp")
        base = perplexity(args.base, HELDOUT.read_text(encoding="utf-8"), args.ctx_size, args.chunks,
                          save_logprobs=base_lp)  # fmt: skip
        print(
            f"base {os.path.basename(args.base)}: PPL {base.ppl:.4f} ({base.n_tokens_scored} tokens scored)"
        )
        print("| type | engine | bpw | quantize s | PPL | mean KLD | 99% KLD | top-1 % |")
        print("|---|---|---|---|---|---|---|---|")
        for t in types:
            pure = t in PURE_TYPES
            for engine in ("ferrollm", "llama.cpp"):
                path = os.path.join(tmp, f"{t}-{engine}.gguf")
                start = time.perf_counter()
                embd = "Q8_0" if pure else None
                if engine == "ferrollm":
                    quantize_file(args.base, path, t, imatrix=im, pure=pure, threads=args.threads,
                                  token_embedding_type=embd)  # fmt: skip
                else:
                    peer_quantize(
                        args.base, path, t, im, pure=pure, threads=args.threads, token_embedding_type=embd
                    )
                seconds = time.perf_counter() - start
                k = kl_divergence(path, base_lp)
                row = {"qtype": t, "pure": pure, "engine": engine, "bpw": weight_bits(path), "quantize_s": seconds,
                       **k.to_dict()}  # fmt: skip
                rows.append(row)
                print(f"| {t} | {engine} | {row['bpw']:.3f} | {seconds:.2f} | {k.ppl:.4f} | {k.kld_mean:.5f} | "
                      f"{k.kld_p99:.4f} | {100 * k.top1_agreement:.2f} |", flush=True)  # fmt: skip
    out = ROOT / "benches" / "results" / "quantize.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"base": os.path.basename(args.base), "base_ppl": base.to_dict(),
                               "imatrix_chunks": im.chunk_count, "rows": rows}, indent=1))  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
