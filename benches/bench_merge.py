"""A SLERP merge of two ~1.1B-parameter bfloat16 checkpoints into Q4_K_M GGUF: `ferrollm merge`
straight to Q4_K_M, against mergekit followed by llama.cpp's convert_hf_to_gguf.py (to a BF16
GGUF) and llama-quantize. Measured: wall time and peak RSS of every step and in total.
Targets (issue 18): ferrollm at most half the pipeline's wall time, and under 1 GB peak RSS.

    python benches/bench_merge.py                          # both sides, models in /work/bench-models
    python benches/bench_merge.py --models DIR --out F.json
    python benches/bench_merge.py --ours-only              # no mergekit / llama-quantize needed

The inputs are two random Llama checkpoints in TinyLlama's shape (22 layers, d_model 2048, ffn
5632, 32 heads / 4 KV heads, vocab 32000: 1.10B parameters, 2.2 GB each in BF16) with Mistral's
real tokenizer.model (from mistral-common), written once into --models (merge-src-a,
merge-src-b) tensor by tensor, so the writer never holds more than one tensor. The YAML is the
seed 004 (Pearl-7B-slerp) gradient: self_attn t from 0 to 1, mlp t from 1 to 0, the rest 0.5,
base model a, dtype bfloat16. Both sides get the same YAML.

Protocol: both checkpoints are read once before timing (page cache warm), the page cache's dirty
pages are flushed (`sync`, untimed) before each step; each step is one process, run once (they
are long), its peak RSS that process's ru_maxrss (os.wait4, what `/usr/bin/time -v` reports).
The CPU time other processes used during each step (from /proc/stat, less the step's own) is
reported, and a step where they used more than 0.1 core is flagged NOT QUIET. Every tool runs
with its defaults on all cores: mergekit-yaml with --no-write-model-card (and --lazy-unpickle
--low-cpu-memory, which do nothing for safetensors on a CPU), convert_hf_to_gguf.py --outtype
bf16, llama-quantize ... Q4_K_M.

Peers: mergekit-yaml from $MERGEKIT_YAML or /work/venv-oracle/bin/mergekit-yaml;
convert_hf_to_gguf.py from $LLAMA_CPP_DIR (default: the llama-cpp-python sdist's vendored
llama.cpp) run by mergekit's Python; llama-quantize from $LLAMA_QUANTIZE (default
/work/peer/server-build/bin/llama-quantize; build it with `cmake --build BUILD --target
llama-quantize`).

Afterwards, a sanity check (not a test): both Q4_K_M files open in ferrollm with the same
tensor names and types, a few of ferrollm's merged tensors (float32, before quantization) agree
with mergekit's within bfloat16 rounding, and the Q4_K_M tensors of each side are as far from
mergekit's merged tensors as each other. Intermediates go to --scratch and are deleted (unless
--keep). Results are appended to benches/results/merge.json (records as in
../shared/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_engines import busy_jiffies

# Other processes may use this much of a core (on average) during a step before it is flagged.
QUIET = 0.1
PIPELINE = "mergekit+llama.cpp"
MODEL = "tinyllama-shape-1.1B"
SHAPE = {"layers": 22, "hidden": 2048, "ff": 5632, "heads": 32, "kv_heads": 4, "vocab": 32000}
LLAMA_CPP = "/work/peer/llama_cpp_python-0.3.36/vendor/llama.cpp"
YAML = """slices:
  - sources:
      - model: {a}
        layer_range: [0, {n}]
      - model: {b}
        layer_range: [0, {n}]
merge_method: slerp
base_model: {a}
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: bfloat16
"""


# -- the inputs -----------------------------------------------------------------------------------


def checkpoint_plan() -> list[tuple[str, tuple[int, ...]]]:
    h, ff, v = SHAPE["hidden"], SHAPE["ff"], SHAPE["vocab"]
    kv = SHAPE["kv_heads"] * (h // SHAPE["heads"])
    plan = [("model.embed_tokens.weight", (v, h))]
    for i in range(SHAPE["layers"]):
        p = f"model.layers.{i}."
        plan += [(p + "input_layernorm.weight", (h,)), (p + "self_attn.q_proj.weight", (h, h)),
                 (p + "self_attn.k_proj.weight", (kv, h)), (p + "self_attn.v_proj.weight", (kv, h)),
                 (p + "self_attn.o_proj.weight", (h, h)), (p + "post_attention_layernorm.weight", (h,)),
                 (p + "mlp.gate_proj.weight", (ff, h)), (p + "mlp.up_proj.weight", (ff, h)),
                 (p + "mlp.down_proj.weight", (h, ff))]  # fmt: skip
    return plan + [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]


def mistral_tokenizer() -> Path:
    import mistral_common

    path = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"  # 32000 pieces
    if not path.is_file():
        sys.exit(
            f"no {path}: Mistral's tokenizer.model comes from mistral-common (pip install mistral-common)"
        )
    return path


def ensure_checkpoint(path: Path, seed: int) -> None:
    """A random BF16 Llama checkpoint, written tensor by tensor; config.json last, as the mark
    of a complete directory."""
    from ferrollm.checkpoints import safetensors_io

    if (path / "config.json").is_file():
        return
    t0 = time.perf_counter()
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    plan = checkpoint_plan()

    def values():
        for name, shape in plan:
            x = rng.standard_normal(shape, dtype=np.float32)
            if len(shape) == 1:  # norms around 1
                yield x * np.float32(0.1) + np.float32(1)
            else:
                yield x * np.float32(0.02)

    safetensors_io.write_stream(path / "model.safetensors", [(n, s, "BF16") for n, s in plan], values(),
                                {"format": "pt"})  # fmt: skip
    shutil.copyfile(mistral_tokenizer(), path / "tokenizer.model")
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
         "add_eos_token": False, "tokenizer_class": "LlamaTokenizer", "model_max_length": 2048}))  # fmt: skip
    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": SHAPE["hidden"],
        "intermediate_size": SHAPE["ff"], "num_hidden_layers": SHAPE["layers"],
        "num_attention_heads": SHAPE["heads"], "num_key_value_heads": SHAPE["kv_heads"],
        "vocab_size": SHAPE["vocab"], "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
        "hidden_act": "silu", "torch_dtype": "bfloat16",
    }  # fmt: skip
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    os.sync()  # or the write-back runs beside the measurement
    size = (path / "model.safetensors").stat().st_size
    print(f"  wrote {path} ({size / 2**30:.2f} GiB) in {time.perf_counter() - t0:.0f} s")


def warm(paths: list[Path]) -> None:
    """Read every file once, so that each side starts from the same warm page cache."""
    t0, n = time.perf_counter(), 0
    for d in paths:
        for f in sorted(d.iterdir()):
            with open(f, "rb", buffering=0) as fh:
                while chunk := fh.read(1 << 24):
                    n += len(chunk)
    print(f"  read {n / 2**30:.2f} GiB of inputs in {time.perf_counter() - t0:.1f} s (page cache warm)")


# -- running a step -------------------------------------------------------------------------------


def run_step(name: str, cmd: list[str], log: Path, env: dict | None = None) -> dict:
    """One process: wall time, its ru_maxrss (os.wait4: what /usr/bin/time -v reports), its CPU
    time, and the cores' worth of CPU other processes used while it ran."""
    os.sync()
    hz = os.sysconf("SC_CLK_TCK")
    with open(log, "w") as out:
        busy0, t0 = busy_jiffies(), time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(proc.pid, 0)
        wall, busy1 = time.perf_counter() - t0, busy_jiffies()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-1500:]
        raise RuntimeError(f"{name} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    cpu = usage.ru_utime + usage.ru_stime
    foreign = max(0.0, ((busy1 - busy0) / hz - cpu) / wall)
    r = {
        "step": name,
        "wall_s": wall,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "cpu_s": cpu,
        "foreign_cpu": foreign,
    }
    flag = "" if foreign <= QUIET else f"  NOT QUIET: other processes used {foreign:.2f} cores"
    print(f"  {name:<20} {wall:8.1f} s  peak RSS {r['peak_rss_mib']:7.0f} MiB  CPU {cpu:7.1f} s{flag}")
    return r


def total(steps: list[dict]) -> dict:
    wall = sum(s["wall_s"] for s in steps)
    return {"step": "total", "wall_s": wall, "peak_rss_mib": max(s["peak_rss_mib"] for s in steps),
            "cpu_s": sum(s["cpu_s"] for s in steps),
            "foreign_cpu": sum(s["foreign_cpu"] * s["wall_s"] for s in steps) / wall}  # fmt: skip


def peer_tools() -> tuple[dict | None, str | None]:
    mergekit = os.environ.get("MERGEKIT_YAML", "/work/venv-oracle/bin/mergekit-yaml")
    llama_cpp = Path(os.environ.get("LLAMA_CPP_DIR", LLAMA_CPP))
    quantize = os.environ.get("LLAMA_QUANTIZE", "/work/peer/server-build/bin/llama-quantize")
    missing = []
    if not (shutil.which(mergekit) or Path(mergekit).is_file()):
        missing.append(f"mergekit-yaml ({mergekit}; set $MERGEKIT_YAML, or pip install mergekit in a venv)")
    if not (llama_cpp / "convert_hf_to_gguf.py").is_file():
        missing.append(f"convert_hf_to_gguf.py (not in {llama_cpp}; set $LLAMA_CPP_DIR)")
    if not (shutil.which(quantize) or Path(quantize).is_file()):
        missing.append(
            f"llama-quantize ({quantize}; set $LLAMA_QUANTIZE, or build llama.cpp's llama-quantize target)"
        )
    if missing:
        return None, "missing: " + "; ".join(missing)
    # convert_hf_to_gguf.py needs torch, safetensors and sentencepiece: mergekit's environment has them.
    python = str(Path(shutil.which(mergekit) or mergekit).parent / "python")
    return {"mergekit": mergekit, "python": python, "llama_cpp": llama_cpp, "quantize": quantize}, None


def run_ours(cfg: Path, scratch: Path) -> tuple[list[dict], Path]:
    out = scratch / "ferrollm-Q4_K_M.gguf"
    cmd = [sys.executable, "-m", "ferrollm", "merge", str(cfg), str(out), "--outtype", "Q4_K_M", "-q"]
    return [run_step("ferrollm merge", cmd, scratch / "ferrollm.log")], out


def run_pipeline(cfg: Path, scratch: Path, tools: dict) -> tuple[list[dict], Path, Path]:
    merged, bf16, q4 = (
        scratch / "mergekit-out",
        scratch / "mergekit-bf16.gguf",
        scratch / "mergekit-Q4_K_M.gguf",
    )
    shutil.rmtree(merged, ignore_errors=True)
    steps = [
        run_step(
            "mergekit-yaml",
            [
                tools["mergekit"],
                str(cfg),
                str(merged),
                "--no-write-model-card",
                "--lazy-unpickle",
                "--low-cpu-memory",
            ],
            scratch / "mergekit.log",
        ),
        run_step(
            "convert_hf_to_gguf",
            [
                tools["python"],
                str(tools["llama_cpp"] / "convert_hf_to_gguf.py"),
                str(merged),
                "--outtype",
                "bf16",
                "--outfile",
                str(bf16),
            ],
            scratch / "convert.log",
            env={"PYTHONPATH": str(tools["llama_cpp"] / "gguf-py")},
        ),
        run_step(
            "llama-quantize", [tools["quantize"], str(bf16), str(q4), "Q4_K_M"], scratch / "quantize.log"
        ),
    ]
    return steps, merged, q4


# -- the sanity check -----------------------------------------------------------------------------


def check_outputs(cfg: Path, ours: Path, theirs: Path | None, merged: Path | None) -> dict:
    """Names and types of both Q4_K_M files; a few merged tensors against mergekit's."""
    from ferrollm import gguf
    from ferrollm.checkpoints.checkpoint import HFCheckpoint
    from ferrollm.merge import MergePlan
    from ferrollm.merge import config as merge_config

    out: dict = {}
    f = gguf.open(ours)
    types = {t.name: t.type for t in f.tensors}
    mix = ", ".join(f"{n} {t}" for t, n in sorted(count(types.values()).items()))
    print(f"  ferrollm Q4_K_M: {len(types)} tensors ({mix}), {ours.stat().st_size / 2**20:.0f} MiB")
    if theirs is None:
        return out
    g = gguf.open(theirs)
    peer_types = {t.name: t.type for t in g.tensors}
    differ = sorted(n for n in types.keys() & peer_types.keys() if types[n] != peer_types[n])
    same_names = types.keys() == peer_types.keys()
    shown = ", ".join(f"{n} {types[n]}/{peer_types[n]}" for n in differ[:6])
    print(f"  llama.cpp Q4_K_M: {len(peer_types)} tensors, {theirs.stat().st_size / 2**20:.0f} MiB; "
          f"names {'the same' if same_names else 'DIFFER'}, "
          f"types {f'DIFFER ({len(differ)}: {shown})' if differ else 'the same'}")  # fmt: skip
    out.update(same_names=same_names, same_types=not differ, type_differences=differ)

    mk = HFCheckpoint(merged)
    plan = MergePlan(merge_config.load(cfg))
    rows = []
    # (GGUF name, HF name): norms stay F32 in Q4_K_M; v_proj and down_proj are not permuted.
    n = SHAPE["layers"]
    for gname, hname in [("output_norm.weight", "model.norm.weight"),
                         (f"blk.{n // 2}.attn_norm.weight", f"model.layers.{n // 2}.input_layernorm.weight"),
                         ("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight"),
                         (f"blk.{n // 2}.ffn_down.weight", f"model.layers.{n // 2}.mlp.down_proj.weight"),
                         (f"blk.{n // 3}.attn_v.weight", f"model.layers.{n // 3}.self_attn.v_proj.weight"),
                         ("token_embd.weight", "model.embed_tokens.weight")]:  # fmt: skip
        ref = mk.get(hname)
        ours32 = plan.get(hname)  # ferrollm's merge in float32, before rounding or quantizing
        # Both round a float32 result to bfloat16 (mergekit) or quantize it: one bf16 step apart.
        bf16_ok = bool(np.all(np.abs(ours32 - ref) <= np.abs(ref) * 2.0**-7 + 1e-6))
        q_ours, q_theirs = f.dequantize(gname), g.dequantize(gname)
        rel = [float(np.linalg.norm(q - ref) / np.linalg.norm(ref)) for q in (q_ours, q_theirs)]
        rows.append({"tensor": gname, "type": types[gname], "merge_within_bf16": bf16_ok,
                     "rel_err_ours": rel[0], "rel_err_llama_cpp": rel[1]})  # fmt: skip
    plan.close()
    mk.close()
    print(f"  {'tensor':<24} {'type':>6} {'f32 merge vs mergekit':>22} "
          f"{'Q4_K_M rel. error: ours':>24} {'llama.cpp':>10}")  # fmt: skip
    for r in rows:
        print(f"  {r['tensor']:<24} {r['type']:>6} {'within bf16' if r['merge_within_bf16'] else 'DIFFERS':>22} "
              f"{r['rel_err_ours']:24.5f} {r['rel_err_llama_cpp']:10.5f}")  # fmt: skip
    out["tensors"] = rows
    return out


def count(values) -> dict:
    c: dict = {}
    for v in values:
        c[v] = c.get(v, 0) + 1
    return c


# -- the driver -----------------------------------------------------------------------------------


def print_table(ours: list[dict], pipe: list[dict] | None) -> None:
    print(
        f"\n{'engine':<20} {'step':<20} {'wall s':>8} {'peak RSS MiB':>13} {'CPU s':>8} {'other cores':>12}"
    )
    for engine, steps in (("ferrollm", ours), (PIPELINE, pipe or [])):
        for s in steps:
            flag = "" if s["foreign_cpu"] <= QUIET else "  NOT QUIET"
            print(f"{engine:<20} {s['step']:<20} {s['wall_s']:8.1f} {s['peak_rss_mib']:13.0f} {s['cpu_s']:8.1f} "
                  f"{s['foreign_cpu']:12.3f}{flag}")  # fmt: skip
    f = ours[-1]
    if pipe:
        p = pipe[-1]
        ratio = f["wall_s"] / p["wall_s"]
        print(f"\nwall time ferrollm / pipeline: {ratio:.3f} (target <= 0.5: {'met' if ratio <= 0.5 else 'NOT met'}); "
              f"speed-up {p['wall_s'] / f['wall_s']:.2f}x; peak RSS {f['peak_rss_mib']:.0f} vs "
              f"{p['peak_rss_mib']:.0f} MiB")  # fmt: skip
    ok = f["peak_rss_mib"] < 1000 * 1e6 / 2**20  # 1 GB
    print(
        f"ferrollm peak RSS {f['peak_rss_mib']:.0f} MiB (target < 1 GB = 954 MiB: {'met' if ok else 'NOT met'})"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="/work/bench-models", help="where the two source checkpoints live")
    p.add_argument("--scratch", default="/work/scratch/merge-bench", help="intermediate and output files")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "merge.json"))
    p.add_argument("--ours-only", action="store_true", help="ferrollm alone (no mergekit / llama-quantize)")
    p.add_argument("--keep", action="store_true", help="keep the outputs and intermediates in --scratch")
    args = p.parse_args()

    tools = None
    if not args.ours_only:
        tools, problem = peer_tools()
        if problem:
            print(f"cannot run the pipeline, {problem}\n(run the ferrollm side alone with --ours-only)")
            return 2
    models = Path(args.models)
    a, b = models / "merge-src-a", models / "merge-src-b"
    print(f"{MODEL} ({sum(int(np.prod(s)) for _, s in checkpoint_plan()) / 1e9:.2f}B parameters, BF16), "
          f"SLERP (seed 004's gradient) to Q4_K_M, {os.cpu_count()} cores")  # fmt: skip
    ensure_checkpoint(a, seed=1)
    ensure_checkpoint(b, seed=2)
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    cfg = scratch / "slerp.yml"
    cfg.write_text(YAML.format(a=a, b=b, n=SHAPE["layers"]))
    warm([a, b])
    busy0 = busy_jiffies()
    time.sleep(1.0)
    before = (busy_jiffies() - busy0) / os.sysconf("SC_CLK_TCK")
    if before > QUIET:
        print(f"WARNING: other processes used {before:.2f} cores in the second before the run")

    print("ferrollm:")
    ours_steps, ours_out = run_ours(cfg, scratch)
    pipe_steps, merged, theirs = None, None, None
    if tools:
        print(f"{PIPELINE}:")
        pipe_steps, merged, theirs = run_pipeline(cfg, scratch, tools)
        pipe_steps.append(total(pipe_steps))
    ours_steps = [*ours_steps, {**ours_steps[0], "step": "total"}]

    print("sanity check:")
    check = check_outputs(cfg, ours_out, theirs, merged)
    print_table(ours_steps, pipe_steps)

    n_params = sum(int(np.prod(s)) for _, s in checkpoint_plan())
    records = []
    for engine, steps in (("ferrollm", ours_steps), (PIPELINE, pipe_steps or [])):
        for s in steps:
            records.append({"bench": "merge", "model": MODEL, "n_params": n_params, "method": "slerp",
                            "in_dtype": "BF16", "outtype": "Q4_K_M", "engine": engine, "step": s["step"],
                            "wall_s": round(s["wall_s"], 2), "peak_rss_mib": round(s["peak_rss_mib"]),
                            "cpu_s": round(s["cpu_s"], 1), "threads": os.cpu_count(),
                            "foreign_cpu": round(s["foreign_cpu"], 3), "quiet": s["foreign_cpu"] <= QUIET})  # fmt: skip
    if pipe_steps:
        records.append({"bench": "merge", "model": MODEL, "engine": "ferrollm", "step": "ratio",
                        "wall_ratio": round(ours_steps[-1]["wall_s"] / pipe_steps[-1]["wall_s"], 4),
                        "same_names": check.get("same_names"), "same_types": check.get("same_types"),
                        "tensors": check.get("tensors")})  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps(existing + records, indent=1))
    print(f"wrote {out}")
    if not args.keep:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
