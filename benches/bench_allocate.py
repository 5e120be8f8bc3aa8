"""Size against quality (``size_quality`` in ../shared/BENCHMARKS.md): allocation by measurement
against llama.cpp's fixed mixes on the embedded demo model.

    flock /tmp/ferrollm-heavy.lock python benches/bench_allocate.py [--chunks 24] [--validate 6]
    flock /tmp/ferrollm-heavy.lock python benches/bench_allocate.py --anchors 0 --no-curve  # no proxy

The source is the F32 export of the embedded model (its Q8_0 values, exactly). The importance
matrix is collected by ferrollm on the calibration text (the first 60,000 characters of
tests/data/heldout.txt) and saved in llama.cpp's legacy format, which llama-quantize reads.
llama-quantize makes each mix (IQ1_M ... Q5_K_M) from the same F32 file and imatrix; ferrollm
allocates a file of exactly the same size (--target-size), and a curve of allocations from
1.75 to 6.5 bpw. Every file is scored the same way, by ferrollm's KL-divergence against the F32
model on held-out text: the rest of heldout.txt, which neither the imatrix nor the measurement
saw. ``--validate N`` also measures every type of N tensors directly, to check the proxy
that places the types between the measured anchors.

Writes benches/results/size_quality.json and benches/results/size_quality.png (with --anchors
other than 4: size_quality-anchorsN.json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benches" / "results"
from ferrollm import collect_imatrix, demo_model_path, gguf, kl_divergence, perplexity, quantize_file
from ferrollm.quant.allocate import Target, plan_allocation, quantize_to_target
from ferrollm.quant.allocate.layout import Slot
from ferrollm.quant.allocate.measure import ModelWriter, anchor_types, calibration_chunks, measurement_base
from ferrollm.quant.allocate.probe import KLDProbe
from ferrollm.quant.imatrix import Imatrix
from ferrollm.quant.writer import ProgressBar, keeps_f32, quantize_tensor

MIXES = ["IQ1_M", "IQ2_XXS", "IQ2_M", "IQ3_XS", "IQ3_M", "Q3_K_M", "Q4_K_M", "Q5_K_M"]
LLAMA_QUANTIZE = os.environ.get("FERROLLM_LLAMA_QUANTIZE", "/work/peer/server-build/bin/llama-quantize")
CALIBRATION_CHARS = 60000
# llama.cpp's n_embd x n_ff x ... of Mixtral 8x7B, for the measurement time estimate.
MIXTRAL_WEIGHTS = 46.70e9
MIXTRAL_TENSORS = 32 * 7 + 2  # attn q/k/v/o and the three stacked expert tensors per layer, embedding, head
MIXTRAL_PREFILL_TOK_S = 20.4  # ferrollm, IQ2_XS, 2 threads (benches/results/engines-8x7b.json)
# Weights --error-rows 1024 quantizes per non-anchor type: expert gate/up 30.07B x 1024/14336,
# expert down 15.03B x 1024/4096, attn q/o 1.07B / 4, k/v 0.27B whole, embedding and head 0.26B / 31.
MIXTRAL_SAMPLED_WEIGHTS = 6.46e9


def weight_bpw(path) -> tuple[float, int]:
    """(bpw over the weight matrices, norms and routers excluded: ferrollm.quant.allocate's definition;
    file bytes)."""
    with gguf.open(path) as f:
        mats = [t for t in f.tensors if not keeps_f32(t.name, t.numpy_shape)]
        return 8 * sum(t.nbytes for t in mats) / sum(t.n_elements for t in mats), os.path.getsize(path)


def load_average() -> float:
    return os.getloadavg()[0]


def score(path, base_lp) -> dict:
    k = kl_divergence(path, base_lp)
    bpw, size = weight_bpw(path)
    return {"bpw": bpw, "file_bytes": size, "kld_mean": k.kld_mean, "kld_err": k.kld_err, "kld_p99": k.kld_p99,
            "top1_agreement": k.top1_agreement, "ppl": k.ppl, "ln_ppl_ratio": k.ln_ppl_ratio}  # fmt: skip


def validate(src, imatrix_path, calibration, measurement, n_tensors: int, tmp) -> list[dict]:
    """Direct KLD of every candidate type of ``n_tensors`` tensors, against the loss the
    measurement placed there from its anchors."""
    im = Imatrix.load(imatrix_path)
    rows = []
    with gguf.open(src) as f:
        names = [n for n in measurement.tensors if n != "token_embd.weight"]
        picks = [names[i] for i in np.linspace(0, len(names) - 1, n_tensors).round().astype(int)]
        picks = ["token_embd.weight", *picks[: n_tensors - 1]]
        chunks = calibration_chunks(f, calibration, 512, measurement.key["n_tokens"])
        base = os.path.join(tmp, "vbase.gguf")
        slots = tuple(Slot(t.name, t.numpy_shape, ()) for t in f.tensors if t.name in measurement.tensors)
        measurement_base(f, slots, base)
        probe = KLDProbe(base, chunks, 512)
        with gguf.open(base) as b:
            writer = ModelWriter(b)
            for name in picks:
                info = f.tensor(name)
                values = f.dequantize(name).reshape(info.numpy_shape)
                n_mat = int(np.prod(info.numpy_shape[:-2])) if len(info.numpy_shape) > 2 else 1
                imx = im.for_tensor(name, n_mat, info.numpy_shape[-1])
                entry = measurement.tensors[name]["types"]
                anchors = {t for t, e in entry.items() if "kld" in e}
                for t, e in entry.items():
                    if t in anchors or t == "Q8_0":
                        continue
                    path = os.path.join(tmp, "v.gguf")
                    writer.write(path, name, t, quantize_tensor(values, t, imx)[0])
                    direct = probe.kld(path)
                    rows.append({"tensor": name, "type": t, "proxy": e["loss"], "direct": direct})
                    print(f"  {name:<30} {t:<8} proxy {e['loss']:.3e} direct {direct:.3e}", flush=True)
    return rows


def estimate_8x7b(m) -> dict:
    """Measurement time of Mixtral 8x7B on this machine, from the demo model's rates (printed)."""
    n_weights = sum(e["elements"] for e in m.tensors.values())
    n_types = len(next(iter(m.tensors.values()))["types"])
    n_anchor = sum(len(anchor_types(tuple(e["types"]), m.key["anchors"])) for e in m.tensors.values())
    quant_rate = n_weights * n_types / m.seconds["quantize"]  # weights quantized per second
    kld_each = m.seconds["kld"] / n_anchor
    est_quant = MIXTRAL_WEIGHTS * n_types / quant_rate
    est_kld = MIXTRAL_TENSORS * 4 * m.key["n_tokens"] / MIXTRAL_PREFILL_TOK_S
    # --error-rows 1024 --anchors 2 --measure-tokens 512: the anchors quantize whole, the rest sampled
    lite_quant = (2 * MIXTRAL_WEIGHTS + (n_types - 2) * MIXTRAL_SAMPLED_WEIGHTS) / quant_rate
    lite_kld = MIXTRAL_TENSORS * 2 * 512 / MIXTRAL_PREFILL_TOK_S
    estimate = {"quantize_s": est_quant, "kld_s": est_kld, "total_h": (est_quant + est_kld) / 3600,
                "lite_quantize_s": lite_quant, "lite_kld_s": lite_kld, "lite_total_h": (lite_quant + lite_kld) / 3600,
                "quant_rate_weights_s": quant_rate, "kld_eval_s_demo": kld_each}  # fmt: skip
    print(f"\nmeasurement on the demo model: {m.seconds['total']:.0f} s ({m.seconds['quantize']:.0f} s quantizing "
          f"{n_types} types x {n_weights / 1e6:.1f}M weights, {m.seconds['kld']:.0f} s for {n_anchor} KLD passes of "
          f"{m.key['n_tokens']} tokens, {kld_each:.1f} s each)")  # fmt: skip
    print(f"8x7B estimate (same 2 cores): quantizing {n_types} types x 46.7B weights at {quant_rate / 1e6:.2f}M/s = "
          f"{est_quant / 3600:.1f} h; {MIXTRAL_TENSORS} tensors x 4 anchors x {m.key['n_tokens']} tokens at "
          f"{MIXTRAL_PREFILL_TOK_S} tok/s = {est_kld / 3600:.1f} h")  # fmt: skip
    print(f"  with --error-rows 1024 --anchors 2 --measure-tokens 512: {lite_quant / 3600:.1f} h quantizing, "
          f"{lite_kld / 3600:.1f} h of KLD passes")  # fmt: skip
    return estimate


def plot(records, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    curve = sorted((r["bpw"], r["kld_mean"]) for r in records if r["kind"] == "curve")
    ax.plot(*zip(*curve), "o-", color="tab:blue", label="ferrollm allocation (--target-bpw)")
    for kind, style, label in (
        ("llama.cpp", "s", "llama.cpp mix"),
        ("matched", "^", "ferrollm at the mix's size"),
    ):
        pts = [r for r in records if r["kind"] == kind]
        ax.plot([r["bpw"] for r in pts], [r["kld_mean"] for r in pts], style, linestyle="none",
                color="tab:red" if kind == "llama.cpp" else "tab:green", label=label)  # fmt: skip
        if kind == "llama.cpp":
            for r in pts:
                ax.annotate(r["qtype"], (r["bpw"], r["kld_mean"]), textcoords="offset points", xytext=(4, 4),
                            fontsize=8)  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("bits per weight (weight matrices)")
    ax.set_ylabel("mean KLD vs F32 (held-out text)")
    ax.set_title("ferrollm demo model (Mixtral 4x, 18M): size against quality")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunks", type=int, default=24, help="held-out chunks of 512 tokens scored per file")
    ap.add_argument("--measurement", default=None, help="default: benches/results/<name>-measurement.json")
    ap.add_argument("--anchors", type=int, default=4, help="KLD-measured types per tensor (0: all, no proxy)")
    ap.add_argument("--no-curve", action="store_true", help="only the mixes' sizes")
    ap.add_argument("--validate", type=int, default=0, help="check the proxy on this many tensors")
    ap.add_argument("--step", type=float, default=0.25)
    args = ap.parse_args()
    name = "size_quality" if args.anchors == 4 else f"size_quality-anchors{args.anchors}"
    args.measurement = args.measurement or str(RESULTS / f"{name}-measurement.json")
    anchors = None if args.anchors == 0 else args.anchors
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = (ROOT / "tests" / "data" / "heldout.txt").read_text(encoding="utf-8")
    calibration, heldout = text[:CALIBRATION_CHARS], text[CALIBRATION_CHARS:]
    records: list[dict] = []
    common = {"bench": "size_quality", "model": "ferrollm-demo", "threads": os.cpu_count()}
    with tempfile.TemporaryDirectory(
        prefix="bench-allocate-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
    ) as tmp:
        src = os.path.join(tmp, "demo-f32.gguf")
        quantize_file(demo_model_path(), src, "F32", pure=True)
        imatrix_path = os.path.join(tmp, "imatrix.dat")
        t0 = time.perf_counter()
        im, _ = collect_imatrix(src, calibration, n_ctx=512, dataset="heldout.txt[:60000]")
        im.save(imatrix_path)
        print(
            f"imatrix: {len(im.entries)} entries, {im.chunk_count} chunks, {time.perf_counter() - t0:.1f} s"
        )
        base_lp = os.path.join(tmp, "base.logp")
        base = perplexity(src, heldout, 512, args.chunks, save_logprobs=base_lp)
        print(f"base F32: PPL {base.ppl:.4f} on {base.n_tokens_scored} held-out tokens")

        # llama.cpp's mixes, from the same F32 file and importance matrix.
        for mix in MIXES:
            out = os.path.join(tmp, f"llama-{mix}.gguf")
            run = subprocess.run([LLAMA_QUANTIZE, "--imatrix", imatrix_path, src, out, mix, "2"],
                                 check=False, capture_output=True, text=True)  # fmt: skip
            if run.returncode or "loaded 32 importance matrix entries" not in run.stderr + run.stdout:
                sys.exit(f"llama-quantize {mix} failed or ignored the imatrix:\n{run.stderr[-2000:]}")
            r = {**common, "kind": "llama.cpp", "qtype": mix, "engine": "llama.cpp", **score(out, base_lp)}
            records.append(r)
            os.unlink(out)
            print(f"llama.cpp {mix:<8} {r['bpw']:6.3f} bpw {r['file_bytes']:>9} bytes  KLD {r['kld_mean']:.5f}",
                  flush=True)  # fmt: skip

        # The measurement (or the saved one), timed.
        t0, load0 = time.perf_counter(), load_average()
        first = plan_allocation(src, Target(bpw=4.0), imatrix_path, calibration, args.measurement, anchors=anchors,
                                progress=ProgressBar(sys.stderr), log=print)  # fmt: skip
        m = first.measurement
        measure_s = m.seconds.get("total", time.perf_counter() - t0)
        print(f"measurement: {measure_s:.0f} s ({m.seconds}), load average {load0:.1f} -> {load_average():.1f}"
              + ("" if first.measured else " (reused from " + args.measurement + ")"))  # fmt: skip

        def allocated(target: Target, kind: str, qtype: str) -> dict:
            out = os.path.join(tmp, "ours.gguf")
            res = quantize_to_target(src, out, target, imatrix=imatrix_path, measurement=args.measurement,
                                     anchors=anchors)  # fmt: skip
            r = {**common, "kind": kind, "qtype": qtype, "engine": "ferrollm", "predicted_kld": res.allocation.loss,
                 "types": res.allocation.types, **score(out, base_lp)}  # fmt: skip
            os.unlink(out)
            return r

        print(f"\n{'mix':<8} {'bytes':>9} {'bpw':>6} {'llama.cpp KLD':>14} {'ferrollm KLD':>13} {'ratio':>6}")
        for peer in [r for r in records if r["kind"] == "llama.cpp"]:
            r = allocated(Target(file_bytes=peer["file_bytes"]), "matched", peer["qtype"])
            records.append(r)
            print(f"{peer['qtype']:<8} {peer['file_bytes']:>9} {r['bpw']:6.3f} {peer['kld_mean']:14.5f} "
                  f"{r['kld_mean']:13.5f} {r['kld_mean'] / peer['kld_mean']:6.3f}"
                  f"{'' if r['file_bytes'] <= peer['file_bytes'] else '  SIZE!'}", flush=True)  # fmt: skip

        print(f"\n{'target':>6} {'bpw':>6} {'bytes':>9} {'KLD':>9} {'predicted':>9}")
        for bpw in [] if args.no_curve else np.arange(1.75, 6.5 + 1e-9, args.step):
            r = allocated(Target(bpw=float(bpw)), "curve", f"alloc@{bpw:.2f}")
            r["target_bpw"] = float(bpw)
            records.append(r)
            print(f"{bpw:6.2f} {r['bpw']:6.3f} {r['file_bytes']:>9} {r['kld_mean']:9.5f} {r['predicted_kld']:9.5f}",
                  flush=True)  # fmt: skip

        validation = validate(src, imatrix_path, calibration, m, args.validate, tmp) if args.validate else []

    estimate = estimate_8x7b(m)
    if validation:
        ratio = np.array([np.log(v["proxy"] / v["direct"]) for v in validation if v["direct"] > 0])
        print(f"proxy vs direct KLD over {len(ratio)} (tensor, type) pairs: median |log ratio| "
              f"{np.median(np.abs(ratio)):.3f}, 90% {np.percentile(np.abs(ratio), 90):.3f}")  # fmt: skip
    out = {"records": records, "measurement_seconds": m.seconds, "measurement_key": m.key,
           "estimate_8x7b": estimate, "validation": validation, "load_average_end": load_average()}  # fmt: skip
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=1))
    if not args.no_curve:
        plot(records, RESULTS / f"{name}.png")
    print(f"wrote {RESULTS / name}.json" + ("" if args.no_curve else " and .png"))


if __name__ == "__main__":
    main()
