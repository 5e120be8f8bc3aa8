"""The ``ferrollm`` command line.

ferrollm info FILE           metadata, tensors and the kernels this CPU will use
ferrollm synth OUT.gguf      write a small GGUF of random valid blocks of every type
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from ferrollm import GGUFError, __version__, gguf, quants
from ferrollm.synthetic import DEMO_TYPES, write_synthetic_gguf


def _short(value, limit: int = 60) -> str:
    if isinstance(value, list):
        head = ", ".join(_short(v, 16) for v in value[:4])
        return f"[{head}{', ...' if len(value) > 4 else ''}] ({len(value)} items)"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError


def cmd_info(args: argparse.Namespace) -> int:
    f = gguf.open(args.file)
    print(f"file      {f.path}  ({_size(f.file_size)}, GGUF v{f.version}, alignment {f.alignment})")
    print(
        f"cpu       {quants.isa_detected()} detected, {quants.isa_active()} allowed; kernel per tensor type below"
    )
    print(f"\nmetadata  {len(f.metadata)} keys")
    types = f.metadata_types
    for key, value in f.metadata.items():
        print(f"  {key:<40} {types[key]:<12} {_short(value)}")
    n_params = sum(t.n_elements for t in f.tensors)
    n_bytes = sum(t.nbytes for t in f.tensors)
    bpw = 8 * n_bytes / n_params if n_params else 0.0
    print(f"\ntensors   {len(f.tensors)}, {n_params:,} weights, {_size(n_bytes)} ({bpw:.2f} bits/weight)")
    by_type = Counter(t.type for t in f.tensors)
    print("  types: " + ", ".join(f"{t} x{n}" for t, n in sorted(by_type.items())))
    shown = f.tensors if args.all or len(f.tensors) <= 40 else f.tensors[:40]
    for t in shown:
        kernel = quants.kernel_isa(t.type) or "-"
        print(f"  {t.name:<40} {t.type:<8} {list(t.shape)!s:<24} {_size(t.nbytes):>11}  {kernel}")
    if len(shown) < len(f.tensors):
        print(f"  ... {len(f.tensors) - len(shown)} more (--all shows them)")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    types = [t.strip().upper() for t in args.types.split(",")] if args.types else DEMO_TYPES
    write_synthetic_gguf(args.out, types=types, rows=args.rows, row_len=args.row_len, seed=args.seed)
    print(f"wrote {args.out}: {len(types)} tensors of random valid blocks ({', '.join(types)})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ferrollm", description="Quantized LLMs on the CPU.")
    p.add_argument("--version", action="version", version=f"ferrollm {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="show a GGUF file's metadata and tensors")
    info.add_argument("file")
    info.add_argument("--all", action="store_true", help="list every tensor")
    info.set_defaults(run=cmd_info)

    synth = sub.add_parser("synth", help="write a small GGUF of random valid blocks")
    synth.add_argument("out")
    synth.add_argument("--types", help=f"comma-separated types (default: {','.join(DEMO_TYPES)})")
    synth.add_argument("--rows", type=int, default=16)
    synth.add_argument("--row-len", type=int, default=256)
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(run=cmd_synth)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (GGUFError, ValueError, OSError) as e:
        print(f"ferrollm: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
