"""Build the training corpus of ferrollm's embedded demo model (a development tool).

The corpus is the Python standard library's own source (``Lib/**/*.py`` of the running
interpreter, tests included, site-packages excluded): text that is on every machine with Python
and may be redistributed under the PSF licence. Files are split by a hash of their path: about
one in fifty is held out and never trained on; part of the held-out text ships with the tests
(``tests/data/heldout.txt``) for perplexity and KL-divergence measurements.

Tokens are the real Mistral/Mixtral SentencePiece vocabulary shipped in the ``mistral-common``
wheel. Output (in ``--out``): ``train.u16`` / ``heldout.u16`` (uint16 token streams, each file as
BOS + text + EOS, files in a seeded shuffled order), ``manifest.json`` (files, counts, sha256).

    python tools/build_demo_corpus.py --out /work/demo/corpus
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import sysconfig
from pathlib import Path

import numpy as np

HELDOUT_EVERY = 50  # a file is held out when sha1(path) % 50 == 0
SEED = 1234


def mistral_tokenizer_model() -> str:
    import mistral_common

    return str(Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1")


def stdlib_files() -> list[tuple[str, Path]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("site-packages/") or "/__pycache__/" in rel:
            continue
        files.append((rel, path))
    return files


def is_heldout(rel: str) -> bool:
    return int(hashlib.sha1(rel.encode()).hexdigest(), 16) % HELDOUT_EVERY == 0


def read_text(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None  # a few test files are deliberately not UTF-8
    return text if text.strip() else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--heldout-text", help="also write this much held-out text (see --heldout-chars)")
    ap.add_argument("--heldout-chars", type=int, default=120_000)
    args = ap.parse_args()

    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=mistral_tokenizer_model())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[tuple[str, str]]] = {"train": [], "heldout": []}
    for rel, path in stdlib_files():
        text = read_text(path)
        if text is not None:
            splits["heldout" if is_heldout(rel) else "train"].append((rel, text))

    manifest: dict = {"python": sys.version.split()[0], "tokenizer": "mistral-common tokenizer.model.v1"}
    for name, docs in splits.items():
        random.Random(SEED).shuffle(docs)
        ids: list[int] = []
        for _, text in docs:
            ids += [sp.bos_id(), *sp.encode(text), sp.eos_id()]
        arr = np.asarray(ids, dtype=np.uint16)
        arr.tofile(out / f"{name}.u16")
        manifest[name] = {
            "files": len(docs),
            "chars": sum(len(t) for _, t in docs),
            "tokens": int(arr.size),
            "sha256": hashlib.sha256(arr.tobytes()).hexdigest(),
            "paths": sorted(rel for rel, _ in docs) if name == "heldout" else None,
        }
        print(f"{name}: {len(docs)} files, {arr.size:,} tokens", file=sys.stderr)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))

    if args.heldout_text:
        # Whole held-out files in path order, up to the size asked for.
        parts, size = [], 0
        for rel, text in sorted(splits["heldout"]):
            if rel.startswith("encodings/"):
                continue  # generated codec tables, not prose or code
            if size >= args.heldout_chars:
                break
            parts.append(f"# ---- Lib/{rel} ----\n{text}")
            size += len(parts[-1])
        Path(args.heldout_text).write_text("".join(parts), encoding="utf-8")
        print(f"held-out text: {size:,} chars -> {args.heldout_text}", file=sys.stderr)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
