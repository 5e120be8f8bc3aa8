"""Speculative decoding on the embedded demo model: greedy decode tokens/s with and without a
draft, ferrollm and llama.cpp (llama-cpp-python) side by side on the same file.

    flock /tmp/ferrollm-heavy.lock python -m benches.bench_speculative [--n-gen 256] [--reps 3] [--no-peer]

Prompts: the README's "def fibonacci(n):" (the model writes new code: few guesses land), and a
copy task (a held-out stdlib function, then its first lines again: the model copies, as in
code edits, where prompt lookup pays).
Drafts: none; prompt lookup (llama-cpp-python's LlamaPromptLookupDecoding defaults: n-grams of
2, 10 guesses), verified as many rows per engine call as the engine evaluates exactly (its
`exact_batch_rows`: 2 for the shipped Q8_0 file, 8 for the IQ types: `--qtype IQ4_XS`
re-quantizes the demo model) and, for information, 16 rows per call (the engine's
3+-row Q8_0 products round differently, so the text may differ at near-ties); the demo model quantized to Q4_0 as a GGUF draft (4 guesses).
Each configuration: one warm-up, then --reps rounds of [reset; stream --n-gen tokens at
temperature 0]; decode tokens/s counts from the first streamed piece (after the prefill and
one token) to the last, median over the rounds. Records
tokens per engine call (ferrollm), whether the text equals the same engine's without a draft,
and the 1-minute load average (a loaded machine makes every figure noisy: look at the ratios).
Writes benches/results/speculative.json (../shared/BENCHMARKS.md records).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import ferrollm
from ferrollm import Llama
from ferrollm.atomic import AtomicFile
from ferrollm.generate import speculative
from ferrollm.llama_speculative import GGUFDraftModel, LlamaPromptLookupDecoding

from tests.support.model_helpers import CountingEngine

HELDOUT = Path(__file__).parent.parent / "tests" / "data" / "heldout.txt"


def prompts() -> dict[str, str]:
    text = HELDOUT.read_text()
    start = text.index("def _getlang():")
    source = text[start : text.index("class LocaleTime", start)].rstrip() + "\n"
    source += text[text.index("def _strptime_time(", start) :].split("\n\n", 1)[0] + "\n"
    head = "\n".join(source.splitlines()[:2]) + "\n"
    return {
        "fibonacci": "def fibonacci(n):",
        "copy": f"# ---- Lib/_strptime.py ----\n{source}\n\n# ---- Lib/_strptime_copy.py ----\n{head}",
    }


def streamed(llm, prompt: str, n: int) -> tuple[float, float, str]:
    """(seconds to the first piece: prefill and one token; seconds after it; text)."""
    llm.reset()
    t0 = time.perf_counter()
    t_first, text = None, ""
    for chunk in llm.create_completion(prompt, max_tokens=n, temperature=0, stream=True):
        t_first = t_first or time.perf_counter()
        text += chunk["choices"][0]["text"]
    return t_first - t0, time.perf_counter() - t_first, text


def measure(llm, prompt: str, n_gen: int, reps: int) -> dict:
    llm.reset()
    n_out = llm.create_completion(prompt, max_tokens=n_gen, temperature=0)["usage"]["completion_tokens"]
    streamed(llm, prompt, n_gen)  # warm-up
    decode, calls = [], None
    for _ in range(reps):
        spy = None
        if isinstance(llm, Llama):
            spy = llm.session.engine = CountingEngine(llm.session.engine)
        _, seconds, text = streamed(llm, prompt, n_gen)
        if spy is not None:
            llm.session.engine = spy.inner
            calls = spy.calls - 1  # less the prefill's
        decode.append(seconds)
    return {
        "tok_s": (n_out - 1) / statistics.median(decode),
        "n_gen": n_out,
        "text": text,
        "tokens_per_call": (n_out - 1) / calls if calls else None,
        "loadavg": os.getloadavg()[0],
    }


def configs(path: str, q4_path: str, peer: bool, threads: int):
    """(engine, draft name, rows per eval (None: the engine's exact rows), factory)."""
    kw = {"n_ctx": 512, "n_threads": threads, "n_batch": 512, "verbose": False}
    yield "ferrollm", "none", None, lambda: Llama(path, **kw)
    yield "ferrollm", "lookup", None, lambda: Llama(path, draft_model=LlamaPromptLookupDecoding(), **kw)
    yield "ferrollm", "lookup", 16, lambda: Llama(path, draft_model=LlamaPromptLookupDecoding(), **kw)
    yield "ferrollm", "gguf-q4_0", 2, lambda: Llama(path, draft_model=GGUFDraftModel(q4_path, 4), **kw)
    if peer:
        import llama_cpp
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding as PeerLookup

        yield "llama.cpp", "none", None, lambda: llama_cpp.Llama(path, **kw)
        yield "llama.cpp", "lookup", None, lambda: llama_cpp.Llama(path, draft_model=PeerLookup(), **kw)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-gen", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--qtype", default="Q8_0",
                    help="the demo model as shipped (Q8_0) or re-quantized to this type (--pure), e.g. IQ4_XS")  # fmt: skip
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "speculative.json"))
    args = ap.parse_args()
    peer = not args.no_peer
    if peer:
        try:
            import llama_cpp

            print(llama_cpp.llama_print_system_info().decode().strip(), file=sys.stderr)
        except ImportError:
            print("llama-cpp-python is not installed: ferrollm only", file=sys.stderr)
            peer = False
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        q4 = os.path.join(tmp, "demo-q4_0.gguf")
        ferrollm.quantize_file(ferrollm.demo_model_path(), q4, "Q4_0")
        path = ferrollm.demo_model_path()
        if args.qtype.upper() != "Q8_0":
            path = os.path.join(tmp, f"demo-{args.qtype}.gguf")
            ferrollm.quantize_file(ferrollm.demo_model_path(), path, args.qtype.upper(), pure=True)
        baseline: dict[tuple[str, str], dict] = {}
        for engine, draft, rows, make in configs(path, q4, peer, args.threads):
            llm = make()
            if rows is not None:
                speculative.ROWS_PER_EVAL = rows
            elif draft != "none" and isinstance(llm, Llama):
                rows = llm.session.engine.exact_batch_rows
            for name, prompt in prompts().items():
                r = measure(llm, prompt, args.n_gen, args.reps)
                base = baseline.setdefault((engine, name), r)
                records.append({
                    "bench": "speculative", "model": "embedded-demo", "qtype": args.qtype.upper(), "threads": args.threads,
                    "engine": engine, "draft": draft, "rows_per_eval": rows, "prompt": name,
                    "n_prompt": len(llm.tokenize(prompt.encode())), "n_gen": r["n_gen"],
                    "tok_s": round(r["tok_s"], 1), "speedup": round(r["tok_s"] / base["tok_s"], 3),
                    "same_text": r["text"] == base["text"], "tokens_per_call": r["tokens_per_call"],
                    "loadavg": r["loadavg"],
                })  # fmt: skip
                rec = records[-1]
                print(
                    f"{engine:9} {draft:9} rows={rows!s:4} {name:9} {rec['tok_s']:7.1f} tok/s  x{rec['speedup']:.2f}"
                    f"  same={rec['same_text']!s:5} tok/call={rec['tokens_per_call'] or 0:.2f}"
                    f"  load={rec['loadavg']:.1f}",
                    flush=True,
                )
            speculative.ROWS_PER_EVAL = None
            if hasattr(llm, "close"):
                llm.close()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with AtomicFile(args.out) as f:
        f.write(json.dumps(records, indent=1).encode())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
