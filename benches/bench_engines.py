"""ferrollm against llama.cpp on the same file, side by side: decode and prefill tokens/s,
peak RSS, the bandwidth limit, and where ferrollm's time goes.

    python benches/bench_engines.py            # mixtral-shape-4L, the six target types
    python benches/bench_engines.py --quick    # Q4_0 and IQ2_XS, 2 repetitions: a few minutes
    python benches/bench_engines.py --shape mixtral-8x7b --types IQ2_XS --reps 1
    python benches/bench_engines.py --types Q4_K --deep 8192   # decode 64 tokens after 8192

Hygiene: the peer's build is printed (`llama_print_system_info`) and refused when it lacks a
SIMD feature this CPU has (AVX512, AVX512_VNNI, AVX512_VBMI: a peer built without native
flags is slowed, and the ratio would flatter us); the CPU time of every other process is
measured during each engine's run (from /proc/stat, less the worker's own), and a run where
other processes used more than 5% of a core is flagged NOT QUIET in the table and the JSON.

The models (random valid blocks in the shapes of ../shared/BENCHMARKS.md, head and embedding
typed as llama.cpp's quantizer leaves them) are written once into --models-dir (default
$FERROLLM_BENCH_MODELS or ~/.cache/ferrollm/bench-models), outside the repository.

Each engine runs in its own process (so that its peak RSS is its own): load, one warm-up
round, then --reps rounds of [prefill a --n-prompt token prompt from an empty cache; decode
--n-gen tokens greedily after it]; figures are medians. Both engines get the same file, the
same prompt, 2 threads, n_ctx = n_prompt + n_gen rounded up to 256, n_batch 512, F16 KV cache,
and the same greedy loop (eval one token, argmax of its logits in numpy). With --deep N: K cache
q8_0 (or --cache-type-k f16), V cache f16, one prefill of N tokens (timed), 8 warm-up tokens, then --reps rounds of
--n-gen decoded tokens deep in the context.

The peer is llama.cpp through llama-cpp-python (install: see docs/benchmarks.md). Writes
benches/results/engines.json (records as in ../shared/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET_TYPES = ["IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S",
                "Q4_0", "Q4_K", "Q5_K", "Q6_K", "Q8_0", "IQ4_NL", "IQ4_XS"]  # fmt: skip
# Other processes may use this much of a core (on average) before a run is flagged.
QUIET = 0.05
QUICK_TYPES = ["Q4_0", "IQ2_XS"]
ENGINES = ["ferrollm", "llama.cpp"]


def models_dir(arg: str | None) -> Path:
    d = Path(arg or os.environ.get("FERROLLM_BENCH_MODELS") or Path.home() / ".cache/ferrollm/bench-models")
    d.mkdir(parents=True, exist_ok=True)
    return d


def ensure_model(directory: Path, shape: str, qtype: str) -> Path:
    from ferrollm.gguf.synthetic_model import shape_spec, write_model

    # "-t": written with trained-like statistics (sharp heads, outlier channels, wide norms).
    path = directory / f"{shape}-{qtype}-t.gguf"
    if not path.exists():
        t0 = time.perf_counter()
        write_model(path, shape_spec(shape, qtype))
        os.sync()  # or the kernel's write-back runs beside the measurement
        print(f"  wrote {path} ({path.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - t0:.0f} s")
    return path


def bytes_per_decoded_token(path: Path) -> int:
    """Weight bytes one decoded token reads: every matrix, except that an MoE layer reads only
    n_expert_used of its n_expert experts, and the embedding only one row."""
    from ferrollm import gguf

    f = gguf.open(path)
    md = f.metadata
    arch = md["general.architecture"]
    used, total = md.get(f"{arch}.expert_used_count", 1), md.get(f"{arch}.expert_count", 1)
    n = 0
    for t in f.tensors:
        if t.name == "token_embd.weight":
            n += t.nbytes // t.shape[1]
        elif re.search(r"_exps\.|\.ffn_(gate|up|down)\.\d+\.", t.name):  # merged or split experts
            n += t.nbytes * used // total
        else:
            n += t.nbytes
    return n


# -- the worker: one engine in its own process ---------------------------------------------------


def vm_hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def worker(args: argparse.Namespace) -> dict:
    import numpy as np

    if args.deep:
        n_ctx = (args.deep + 8 + args.reps * args.n_gen + 1 + 255) // 256 * 256
    else:
        n_ctx = (args.n_prompt + args.n_gen + 1 + 255) // 256 * 256
    kw = {"n_ctx": n_ctx, "n_threads": args.threads, "n_batch": 512, "verbose": False}
    if args.deep and args.cache_type_k != "f16":  # V f16 (llama.cpp's GGML_TYPE_Q8_0 is 8)
        kw["type_k"] = "q8_0" if args.worker == "ferrollm" else 8
    t0 = time.perf_counter()
    if args.worker == "ferrollm":
        from ferrollm import Llama
        from ferrollm.generate.sampler import Sampler, SamplingParams

        llm = Llama(model_path=args.model, **kw)

        def last_logits():
            return llm.last_logits()
    else:
        from llama_cpp import Llama as PeerLlama

        llm = PeerLlama(model_path=args.model, **kw)

        n_vocab = llm.n_vocab()

        def last_logits():  # the context's own buffer: llama-cpp-python's eval copies nothing
            return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))

    load_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    if args.deep:
        return deep_worker(args, llm, last_logits, load_s, n_ctx, rng)
    prompt = [1] + rng.integers(3, 32000, args.n_prompt - 1).tolist()
    engine = llm.session.engine if args.worker == "ferrollm" else None
    prefill, decode, profiles, prefill_profiles, sampling = [], [], [], [], []
    for rep in range(args.reps + 1):  # round 0 is the warm-up
        llm.reset()
        if engine is not None:
            engine.take_profile()
        t = time.perf_counter()
        llm.eval(prompt)
        t_prefill = time.perf_counter() - t
        if engine is not None:
            prefill_profiles.append({**engine.take_profile(), "wall": t_prefill})
        token = int(np.argmax(last_logits()))
        t = time.perf_counter()
        for _ in range(args.n_gen):
            llm.eval([token])
            token = int(np.argmax(last_logits()))
        t_decode = time.perf_counter() - t
        if rep == 0:
            continue
        prefill.append(args.n_prompt / t_prefill)
        decode.append(args.n_gen / t_decode)
        if engine is not None:
            profiles.append({**engine.take_profile(), "wall": t_decode})
            # The sampler users get (top-k 40, top-p 0.95, min-p 0.05, temperature 0.8).
            sampler, logits = Sampler(SamplingParams()), last_logits()
            t = time.perf_counter()
            for _ in range(args.n_gen):
                sampler.sample(logits, prompt)
            sampling.append((time.perf_counter() - t) / args.n_gen)
    out = {
        "engine": args.worker,
        "load_s": load_s,
        "prefill_tok_s": statistics.median(prefill),
        "decode_tok_s": statistics.median(decode),
        "prefill_all": prefill,
        "decode_all": decode,
        "peak_rss_bytes": vm_hwm_bytes(),
        "n_ctx": n_ctx,
    }
    if profiles:
        # Per decoded token, median over rounds; python = wall - engine - argmax loop.
        per_token = {}
        for key in ("embed_norm", "attention", "router", "experts", "head", "wall"):
            per_token[key] = statistics.median(p[key] / args.n_gen for p in profiles)
        engine_s = sum(v for k, v in per_token.items() if k != "wall")
        per_token["python"] = per_token["wall"] - engine_s
        per_token["sampler"] = statistics.median(sampling)
        out["decode_profile_s_per_token"] = per_token
        per_token = {}
        for key in ("embed_norm", "attention", "router", "experts", "head", "wall"):
            per_token[key] = statistics.median(p[key] / args.n_prompt for p in prefill_profiles[1:])
        per_token["python"] = per_token["wall"] - sum(v for k, v in per_token.items() if k != "wall")
        out["prefill_profile_s_per_token"] = per_token
    return out


def deep_worker(args, llm, last_logits, load_s: float, n_ctx: int, rng) -> dict:
    """Decode after args.deep cached tokens: one timed prefill, 8 warm-up tokens, then rounds."""
    import numpy as np

    prompt = [1] + rng.integers(3, 32000, args.deep - 1).tolist()
    t = time.perf_counter()
    for start in range(0, len(prompt), 512):
        llm.eval(prompt[start : start + 512])
    prefill = args.deep / (time.perf_counter() - t)
    token = int(np.argmax(last_logits()))
    for _ in range(8):
        llm.eval([token])
        token = int(np.argmax(last_logits()))
    decode = []
    for _ in range(args.reps):
        t = time.perf_counter()
        for _ in range(args.n_gen):
            llm.eval([token])
            token = int(np.argmax(last_logits()))
        decode.append(args.n_gen / (time.perf_counter() - t))
    return {"engine": args.worker, "load_s": load_s, "prefill_tok_s": prefill, "prefill_all": [prefill],
            "decode_tok_s": statistics.median(decode), "decode_all": decode,
            "peak_rss_bytes": vm_hwm_bytes(), "n_ctx": n_ctx}  # fmt: skip


def busy_jiffies() -> int:
    """CPU time (clock ticks) all processes have spent, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return sum(fields) - fields[3] - fields[4]  # less idle and iowait


def run_worker(engine: str, model: Path, args: argparse.Namespace) -> dict | None:
    """Runs one engine in its own process; adds `foreign_cpu` (cores' worth of CPU that other
    processes used while it ran)."""
    import resource

    cmd = [sys.executable, __file__, "--worker", engine, "--model", str(model), "--reps", str(args.reps),
           "--n-prompt", str(args.n_prompt), "--n-gen", str(args.n_gen), "--threads", str(args.threads),
           "--deep", str(args.deep)]  # fmt: skip
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}  # numpy's idle BLAS threads spin on our cores
    hz = os.sysconf("SC_CLK_TCK")
    own0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0, t0 = busy_jiffies(), time.perf_counter()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
    busy1, wall = busy_jiffies(), time.perf_counter() - t0
    own1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        print(f"  {engine} failed (exit {proc.returncode}): {proc.stderr.strip()[-600:]}")
        return None
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    own = (own1.ru_utime + own1.ru_stime) - (own0.ru_utime + own0.ru_stime)
    result["foreign_cpu"] = max(0.0, ((busy1 - busy0) / hz - own) / wall)
    return result


def peer_build_problem() -> str | None:
    """Why the installed peer's build would slow it on this CPU, or None: a SIMD feature the
    CPU has that llama.cpp was built without."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode()
    print(f"peer build: {info.strip()}")
    flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[-1].split("\n", 1)[0].split()
    wanted = {"avx512f": "AVX512", "avx512_vnni": "AVX512_VNNI", "avx512vbmi": "AVX512_VBMI", "avx2": "AVX2"}
    missing = [name for flag, name in wanted.items() if flag in flags and f"{name} = 1" not in info]
    return f"llama.cpp was built without {', '.join(missing)}" if missing else None


# -- the driver ---------------------------------------------------------------------------------


def peer_available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="mixtral-shape-4L")
    p.add_argument("--types", help=f"comma-separated (default: {','.join(TARGET_TYPES)})")
    p.add_argument("--quick", action="store_true", help=f"{','.join(QUICK_TYPES)}, 2 rounds, 32 tokens")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--n-prompt", type=int, default=512)
    p.add_argument("--n-gen", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--deep", type=int, default=0, help="decode after this many cached tokens")
    p.add_argument("--cache-type-k", default="q8_0", choices=["q8_0", "f16"], help="with --deep (V is f16)")
    p.add_argument("--allow-slow-peer", action="store_true", help="measure a peer built without native SIMD")
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument("--models-dir")
    p.add_argument(
        "--file", help="measure this GGUF (e.g. the embedded demo model: --file demo) instead of a shape"
    )
    p.add_argument("--delete-models", action="store_true", help="remove each model after its run")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "engines.json"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    if args.quick:
        args.reps, args.n_gen = min(args.reps, 2), 32
    types = (args.types or ",".join(QUICK_TYPES if args.quick else TARGET_TYPES)).upper().split(",")
    if args.file:  # one given file: its name stands for the shape, its layers' type for the type
        from ferrollm import demo_model_path, gguf

        path = Path(demo_model_path() if args.file == "demo" else args.file)
        args.shape = path.stem
        types = [gguf.open(path).tensor("blk.0.attn_q.weight").type]
    engines = args.engines.split(",")
    if "llama.cpp" in engines and not peer_available():
        print("llama-cpp-python is not installed: measuring ferrollm alone (see docs/benchmarks.md)")
        engines.remove("llama.cpp")
    peer_problem = peer_build_problem() if "llama.cpp" in engines else None
    if peer_problem and not args.allow_slow_peer:
        print(f"refusing the peer: {peer_problem}; rebuild it with native flags (docs/benchmarks.md) "
              "or pass --allow-slow-peer")  # fmt: skip
        return 2
    busy0 = busy_jiffies()
    time.sleep(1.0)
    before = (busy_jiffies() - busy0) / os.sysconf("SC_CLK_TCK")
    if before > 0.2:
        print(f"WARNING: other processes used {before:.2f} cores in the second before the run")

    import numpy as np
    from ferrollm import _core
    from ferrollm.gguf.plan import plan

    buf = np.random.default_rng(0).integers(0, 256, size=1 << 30, dtype=np.uint8)
    bandwidth = _core.read_bandwidth(buf.nbytes, 5, _core.ThreadPool(args.threads))
    del buf
    print(f"{args.shape}, {args.threads} threads, prompt {args.n_prompt}, {args.n_gen} generated, "
          f"{args.reps} rounds after a warm-up; memory read {bandwidth:.1f} GB/s; "
          f"{_core.isa_active()} kernels")  # fmt: skip
    directory = models_dir(args.models_dir)
    records, rows = [], []
    for qtype in types:
        if not args.file:
            path = ensure_model(directory, args.shape, qtype)
        size = path.stat().st_size
        results = {e: run_worker(e, path, args) for e in engines}
        touched = bytes_per_decoded_token(path)
        limit = bandwidth * 1e9 / touched
        for engine, r in results.items():
            if r is None:
                continue
            kv = plan(path, n_ctx=r["n_ctx"]).kv_bytes
            common = {"model": args.shape, "qtype": qtype, "threads": args.threads, "engine": engine,
                      "n_prompt": args.deep or args.n_prompt, "n_gen": args.n_gen,
                      "foreign_cpu": round(r["foreign_cpu"], 3), "quiet": r["foreign_cpu"] <= QUIET,
                      "peer_build_ok": peer_problem is None}  # fmt: skip
            if args.deep:
                records += [
                    {"bench": "decode_deep", **common, "n_cached": args.deep, "type_k": "q8_0", "type_v": "f16",
                     "tok_s": round(r["decode_tok_s"], 3), "all": r["decode_all"]},
                    {"bench": "prefill_deep", **common, "tok_s": round(r["prefill_tok_s"], 3)},
                ]  # fmt: skip
                continue
            records += [
                {"bench": "decode", **common, "tok_s": round(r["decode_tok_s"], 3),
                 "bandwidth_limit_tok_s": round(limit, 3), "bytes_per_token": touched,
                 "read_gb_s": round(bandwidth, 2), "all": r["decode_all"]},
                {"bench": "prefill", **common, "tok_s": round(r["prefill_tok_s"], 3), "all": r["prefill_all"]},
                {"bench": "rss", **common, "peak_rss_mib": round(r["peak_rss_bytes"] / 2**20),
                 "file_mib": round(size / 2**20), "kv_cache_mib": round(kv / 2**20, 1), "load_s": round(r["load_s"], 2)},
            ]  # fmt: skip
            if "decode_profile_s_per_token" in r:
                records.append({"bench": "profile", **common, "s_per_token": r["decode_profile_s_per_token"]})
                records.append(
                    {"bench": "prefill_profile", **common, "s_per_token": r["prefill_profile_s_per_token"]}
                )
        rows.append((qtype, size, touched, limit, results))
        print_row(rows[-1], engines)
    print_table(rows, engines)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(records, indent=1))
    print(f"wrote {args.out}")
    return 0


def print_row(row, engines) -> None:
    qtype, _size, _touched, _limit, results = row
    for e in engines:
        r = results.get(e)
        if r:
            noisy = (
                ""
                if r["foreign_cpu"] <= QUIET
                else f"  NOT QUIET: other processes used {r['foreign_cpu']:.2f} cores"
            )
            print(f"  {qtype:<8} {e:<10} decode {r['decode_tok_s']:7.2f} tok/s  prefill {r['prefill_tok_s']:7.2f} "
                  f"tok/s  peak RSS {r['peak_rss_bytes'] / 2**20:7.0f} MiB  (load {r['load_s']:.1f} s){noisy}")  # fmt: skip


def print_table(rows, engines) -> None:
    peer = "llama.cpp" in engines
    print()
    head = f"{'type':<8} {'file MiB':>9} {'decode':>8} {'% limit':>8}"
    head += (
        f" {'peer':>7} {'ratio':>6} {'prefill':>8} {'peer':>7} {'ratio':>6} {'RSS MiB':>8} {'peer':>7}"
        if peer
        else f" {'prefill':>8} {'RSS MiB':>8}"
    )
    print(head)
    for qtype, size, touched, limit, results in rows:
        f = results.get("ferrollm")
        if not f:
            continue
        line = (
            f"{qtype:<8} {size / 2**20:9.0f} {f['decode_tok_s']:8.2f} {100 * f['decode_tok_s'] / limit:7.0f}%"
        )
        g = results.get("llama.cpp") if peer else None
        if g:
            line += (f" {g['decode_tok_s']:7.2f} {f['decode_tok_s'] / g['decode_tok_s']:5.2f}x"
                     f" {f['prefill_tok_s']:8.2f} {g['prefill_tok_s']:7.2f} {f['prefill_tok_s'] / g['prefill_tok_s']:5.2f}x"
                     f" {f['peak_rss_bytes'] / 2**20:8.0f} {g['peak_rss_bytes'] / 2**20:7.0f}")  # fmt: skip
        else:
            line += f" {f['prefill_tok_s']:8.2f} {f['peak_rss_bytes'] / 2**20:8.0f}"
        if any(r["foreign_cpu"] > QUIET for r in results.values() if r):
            line += "  NOT QUIET"
        print(line)
    print("\nferrollm decode, ms per token by component (Python = wall - engine - greedy argmax loop):")
    keys = ("attention", "router", "experts", "head", "embed_norm", "python", "sampler", "wall")
    print(f"{'type':<8} " + " ".join(f"{k:>10}" for k in keys) + f" {'python %':>9}")
    for qtype, _, _, _, results in rows:
        prof = (results.get("ferrollm") or {}).get("decode_profile_s_per_token")
        if prof:
            print(
                f"{qtype:<8} "
                + " ".join(f"{1e3 * prof[k]:10.3f}" for k in keys)
                + f" {100 * prof['python'] / prof['wall']:8.2f}%"
            )
    print("\nferrollm prefill, ms per prompt token by component (Python = wall - engine):")
    keys = ("attention", "router", "experts", "head", "embed_norm", "python", "wall")
    print(f"{'type':<8} " + " ".join(f"{k:>10}" for k in keys))
    for qtype, _, _, _, results in rows:
        prof = (results.get("ferrollm") or {}).get("prefill_profile_s_per_token")
        if prof:
            print(f"{qtype:<8} " + " ".join(f"{1e3 * prof[k]:10.3f}" for k in keys))


if __name__ == "__main__":
    sys.exit(main())
