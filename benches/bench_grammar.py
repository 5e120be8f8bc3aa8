"""Decoding under a JSON schema against unconstrained decoding, on the embedded model.

Both runs generate with ``Llama.create_completion`` (greedy, same prompt, same token budget;
the unconstrained one may not stop at EOS, so it always generates the budget). The figure is
the decoding rate (completion tokens / time after the first token); the schema's compilation
(grammar, matcher) is timed apart. A third mode decodes under the schema one token per forward
pass (the forced tokens not batched), which shows the grammar's own cost per token. Rounds
alternate the modes: one warm-up, then the median of ``--reps``. Target: under the schema no
more than 10% slower.

    python benches/bench_grammar.py [--reps 3] [--tokens 96] [--threads 2]

Results: benches/results/grammar.json (format in ../shared/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from ferrollm import Llama, LlamaGrammar, StoppingCriteriaList, demo_model_path
from ferrollm.atomic import AtomicFile

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
        "active": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
    },
    "required": ["name", "age", "role", "active", "tags"],
}
SCHEMA = {
    "type": "object",
    "properties": {"people": {"type": "array", "items": PERSON, "minItems": 6, "maxItems": 6}},
    "required": ["people"],
}
PROMPT = "# The users, as JSON\nusers = "


def run(llm: Llama, tokens: int, grammar: LlamaGrammar | None, fast_forward: bool = True) -> dict:
    bias = None if grammar is not None else {llm.token_eos(): -float("inf")}
    # A stopping criterion (that never stops) makes the loop take one token per forward pass:
    # the grammar's own cost, without batching the tokens it forces.
    stop = None if fast_forward else StoppingCriteriaList([lambda ids, logits: False])
    out = llm.create_completion(PROMPT, max_tokens=tokens, temperature=0, grammar=grammar, logit_bias=bias,
                                stopping_criteria=stop)  # fmt: skip
    t = llm.last_timings
    n = t["completion_tokens"]
    # The first token comes with the prompt's evaluation: the rate counts the tokens after it.
    return {"tok_s": (n - 1) / t["completion_seconds"], "n_gen": n, "text": out["choices"][0]["text"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "grammar.json"))
    args = ap.parse_args()

    llm = Llama(demo_model_path(), n_ctx=512, n_threads=args.threads, verbose=False)
    t0 = time.perf_counter()
    grammar = LlamaGrammar.from_json_schema(json.dumps(SCHEMA))
    t_grammar = time.perf_counter() - t0
    t0 = time.perf_counter()
    grammar.constraint(llm.tokenizer_)  # the first builds the vocabulary's view (cached after)
    t_first_matcher = time.perf_counter() - t0
    t0 = time.perf_counter()
    grammar.constraint(llm.tokenizer_)
    t_matcher = time.perf_counter() - t0

    load0 = os.getloadavg()[0]
    modes = {
        "unconstrained": (None, True),
        "json_schema": (grammar, True),
        "json_schema_1by1": (grammar, False),
    }
    rounds: dict[str, list[dict]] = {m: [] for m in modes}
    for rep in range(args.reps + 1):  # round 0 is the warm-up
        for mode, (g, fast_forward) in modes.items():
            r = run(llm, args.tokens, g, fast_forward)
            if rep:
                rounds[mode].append(r)
    load1 = os.getloadavg()[0]

    constrained_text = rounds["json_schema"][-1]["text"]
    try:
        json.loads(constrained_text)
        valid = True
    except json.JSONDecodeError:
        valid = False  # cut by the token budget: a speed run, not a validity one
    med = {m: statistics.median(r["tok_s"] for r in rs) for m, rs in rounds.items()}
    n_gen = {m: rs[-1]["n_gen"] for m, rs in rounds.items()}
    slowdown = 1 - med["json_schema"] / med["unconstrained"]
    quiet = max(load0, load1) < 1.5  # 2 cores: more than ~1.5 runnable besides us is a busy machine

    print(f"embedded demo model, {args.threads} threads, greedy, {args.reps} rounds after a warm-up "
          f"(load average {load0:.2f} -> {load1:.2f}{'' if quiet else ', NOT QUIET'})")  # fmt: skip
    print(f"  {'mode':<16} {'tok/s':>8} {'tokens':>7}")
    for m, rs in rounds.items():
        each = ", ".join(f"{r['tok_s']:.2f}" for r in rs)
        print(f"  {m:<16} {med[m]:8.2f} {n_gen[m]:7d}   rounds: {each}")
    per_token_us = 1e6 * (1 / med["json_schema"] - 1 / med["unconstrained"])
    one_by_one_us = 1e6 * (1 / med["json_schema_1by1"] - 1 / med["unconstrained"])
    print(f"  ratio json_schema / unconstrained: {med['json_schema'] / med['unconstrained']:.3f} "
          f"({abs(100 * slowdown):.1f}% {'slower' if slowdown > 0 else 'faster'}; target: at most 10% slower); "
          f"per token: {per_token_us:+.0f} us")  # fmt: skip
    print(f"  token by token (forced tokens not batched): ratio {med['json_schema_1by1'] / med['unconstrained']:.3f}, "
          f"the grammar's cost {one_by_one_us:+.0f} us per token")  # fmt: skip
    print(f"  schema compiled in {1000 * t_grammar:.1f} ms; matcher {1000 * t_matcher:.1f} ms "
          f"(first, with the vocabulary: {1000 * t_first_matcher:.0f} ms); output parses as JSON: {valid}")  # fmt: skip

    common = {"bench": "grammar", "model": "embedded-demo", "qtype": "Q8_0", "threads": args.threads,
              "engine": "ferrollm", "n_prompt": len(llm.tokenize(PROMPT.encode())), "quiet": quiet}  # fmt: skip
    records = [{**common, "mode": m, "tok_s": med[m], "n_gen": n_gen[m], "rounds": [r["tok_s"] for r in rounds[m]]}
               for m in rounds]  # fmt: skip
    records.append({**common, "mode": "ratio", "ratio": med["json_schema"] / med["unconstrained"],
                    "grammar_us_per_token": per_token_us,
                    "ratio_1by1": med["json_schema_1by1"] / med["unconstrained"],
                    "grammar_us_per_token_1by1": one_by_one_us,
                    "schema_compile_ms": 1000 * t_grammar, "matcher_ms": 1000 * t_matcher,
                    "vocabulary_ms": 1000 * t_first_matcher, "json_valid": valid})  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(out.read_text()) if out.exists() else []
    with AtomicFile(out) as f:
        f.write(json.dumps(existing + records, indent=1).encode())
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
