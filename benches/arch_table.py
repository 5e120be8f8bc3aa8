"""The architecture table of issue 21, from the cases of tests/test_oracle_archs.py: per case the
minimum cosine over all positions of ferrollm's F32 logits against transformers' and against
llama.cpp's, llama.cpp's own against transformers' (how far the peer is from the reference),
top-1 agreement with llama.cpp where its margin is clear, the ablations (transformers with the
case's feature switched off: how far the oracle sees an engine that ignores it), and the quantized
files and KV caches as their median position, against ferrollm's F32 logits and against llama.cpp
on the same file. Writes benches/results/arch_table.json.

    python -m benches.arch_table [--cases llama,qwen2] [--no-quant] [--facts FILE.md]

--facts writes, per case, the metadata keys and the tensor names, shapes and types of the
converted F32 file (what convert_hf_to_gguf.py produces for that architecture)."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
from ferrollm.atomic import AtomicFile

from tests.support.arch_oracle import (
    BY_NAME,
    CASES,
    KV_CODES,
    KV_VS_F32,
    QUANT_VS_F32,
    artifacts,
    cosines,
    ferrollm_logits,
    llama_cpp_logits,
    top1_agreement,
)

SKIPPED_ARRAYS = ("tokens", "scores", "token_type", "merges")


def measure(name: str, quant: bool) -> dict:
    art = artifacts(BY_NAME[name])
    tokens, hf = art.tokens(), art.hf_logits()
    row: dict = {"case": name, "arch": art.case.arch, "n_tokens": len(tokens)}
    try:
        peer = llama_cpp_logits(art.f32, tokens)
        row["llama_cpp_vs_transformers"] = float(cosines(peer, hf).min())
    except Exception as e:  # noqa: BLE001 - the peer's failure is a figure of the table
        peer, row["llama_cpp_error"] = None, str(e)[:200]
    row["ablations"] = {a: float(cosines(art.ablation_logits(a), hf).min()) for a in art.case.ablations}
    ours, error = ferrollm_logits(art.f32, tokens)
    if error is not None:
        row["ferrollm_error"] = error
        return row
    row["vs_transformers"] = float(cosines(ours, hf).min())
    if peer is not None and not art.case.llama_cpp_differs:
        n = art.case.llama_cpp_positions or len(tokens)
        row["llama_cpp_positions"] = n
        row["vs_llama_cpp"] = float(cosines(ours[:n], peer[:n]).min())
        row["top1_agree"], row["top1_clear"] = top1_agreement(ours[:n], peer[:n])
    if quant:
        same = peer is not None and not art.case.llama_cpp_differs
        n = art.case.llama_cpp_positions or len(tokens)
        for type_name in QUANT_VS_F32:
            path = art.quantized(type_name)
            q, _ = ferrollm_logits(path, tokens)
            row[f"{type_name}_vs_f32"] = float(np.median(cosines(q, ours)))
            if same:
                row[f"{type_name}_vs_llama_cpp"] = float(
                    np.median(cosines(q, llama_cpp_logits(path, tokens))[:n])
                )
        for kv in KV_VS_F32:
            q, _ = ferrollm_logits(art.f32, tokens, type_k=kv, type_v=kv)
            row[f"kv_{kv}_vs_f32"] = float(np.median(cosines(q, ours)))
            if same and kv == "q8_0":
                theirs = llama_cpp_logits(
                    art.f32, tokens, type_k=KV_CODES[kv], type_v=KV_CODES[kv], flash_attn=True
                )
                row[f"kv_{kv}_vs_llama_cpp"] = float(np.median(cosines(q, theirs)[:n]))
    return row


def write_text(path: str, text: str) -> None:
    with AtomicFile(path) as f:
        f.write(text.encode())


def _fmt(v) -> str:
    return f"{v:.6f}" if isinstance(v, float) else ("-" if v is None else str(v))


def print_table(rows: list[dict], quant: bool) -> None:
    cols = ["case", "arch", "vs_transformers", "vs_llama_cpp", "top1", "llama_cpp_vs_transformers"]
    if quant:
        cols += [f"{t}_vs_{ref}" for t in QUANT_VS_F32 for ref in ("f32", "llama_cpp")]
        cols += [f"kv_{kv}_vs_f32" for kv in KV_VS_F32] + ["kv_q8_0_vs_llama_cpp"]
    print(" | ".join(cols))
    for r in rows:
        r = {**r, "top1": f"{r['top1_agree']}/{r['top1_clear']}" if "top1_clear" in r else None}
        cells = [_fmt(r.get(c)) for c in cols]
        if "ferrollm_error" in r:
            cells[2] = "unsupported"
        print(" | ".join(cells))


def facts(names: list[str]) -> str:
    """Markdown: each case's metadata (tokenizer arrays by length) and tensor kinds."""
    import ferrollm

    out = []
    for name in names:
        art = artifacts(BY_NAME[name])
        f = ferrollm.gguf.open(art.f32)
        out.append(f"### {name} (`general.architecture = {f.metadata['general.architecture']}`)\n")
        if art.case.extra_keys:
            out.append(f"Added by the harness, not by the converter: {sorted(art.case.extra_keys)}\n")
        out.append("```")
        for key, value in sorted(f.metadata.items()):
            if key.startswith("general.") and key not in ("general.architecture", "general.file_type"):
                continue
            if key.split(".")[-1] in SKIPPED_ARRAYS or (isinstance(value, list) and len(value) > 8):
                value = f"<{len(value)} items>"
            out.append(f"{key} = {value!r}  ({f.metadata_types[key]})")
        kinds: dict[str, tuple] = {}
        for t in f.tensors:
            kinds.setdefault(re.sub(r"blk\.\d+\.", "blk.N.", t.name), (list(t.shape), t.type))
        out += [f"T {k}  ggml shape {s}  {ty}" for k, (s, ty) in kinds.items()]
        out.append("```\n")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", help="comma-separated case names (default: all)")
    ap.add_argument("--no-quant", action="store_true", help="skip the quantized files and KV caches")
    ap.add_argument("--facts", help="write the metadata and tensors of each converted file here (markdown)")
    ap.add_argument("--json", default=str(ROOT / "benches" / "results" / "arch_table.json"))
    args = ap.parse_args()
    names = args.cases.split(",") if args.cases else [c.name for c in CASES]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        sys.exit(f"unknown case(s) {unknown}; known: {', '.join(BY_NAME)}")
    if args.facts:
        write_text(args.facts, facts(names))
        print(f"wrote {args.facts}")
        return
    rows = []
    for name in names:
        rows.append(measure(name, not args.no_quant))
        print(json.dumps(rows[-1]), flush=True)
    print_table(rows, not args.no_quant)
    write_text(args.json, json.dumps(rows, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
