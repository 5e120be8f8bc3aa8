"""Importance matrices: the mean squared input activation of every column of every weight
matrix (per expert for MoE), collected by running a model over calibration text. The
quantizers weigh each column's rounding error by it.

Files are llama.cpp's, both ways: the legacy ``imatrix.dat`` (what ``-o imatrix.dat`` writes)
and the GGUF ``imatrix.gguf`` (sums and counts per tensor); either loads.

Legacy layout (little-endian): int32 entry count; per entry int32 name length, the name, int32
ncall, int32 value count, float32 values = mean square * ncall (readers divide by ncall); then
int32 chunk count and the dataset name (int32 length + bytes).
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ferrollm import gguf
from ferrollm.quant.quality import Scorer, score_perplexity


@dataclass
class ImatrixEntry:
    sums: np.ndarray  # float64 (n_mat, cols): sums of squared activations
    counts: np.ndarray  # float64 (n_mat,): rows (tokens) seen by each matrix

    def mean_squares(self) -> np.ndarray:
        """float32 (n_mat, cols); 1 for a matrix that saw no token (as llama.cpp stores it)."""
        out = np.ones(self.sums.shape, np.float64)
        seen = self.counts > 0
        out[seen] = self.sums[seen] / self.counts[seen, None]
        return out.astype(np.float32)


@dataclass
class Imatrix:
    entries: dict[str, ImatrixEntry]
    chunk_count: int = 0
    chunk_size: int = 512
    datasets: list[str] = field(default_factory=list)

    def for_tensor(self, name: str, n_mat: int, cols: int) -> np.ndarray | None:
        """The (n_mat, cols) mean squares for tensor ``name``, or None if it has no entry."""
        e = self.entries.get(name)
        if e is None:
            return None
        if e.sums.size != n_mat * cols:
            raise ValueError(
                f"imatrix entry for {name} has {e.sums.size} values, the tensor needs {n_mat} x {cols}"
                " (an importance matrix of another model?)"
            )
        return e.mean_squares().reshape(n_mat, cols)

    def save(self, path: str | os.PathLike) -> None:
        """GGUF when ``path`` ends in .gguf, else llama.cpp's legacy format."""
        if os.fspath(path).endswith(".gguf"):
            self._save_gguf(path)
        else:
            self._save_legacy(path)

    def _save_legacy(self, path) -> None:
        names = sorted(n for n, e in self.entries.items() if e.counts.max() > 0)
        out = [struct.pack("<i", len(names))]
        for name in names:
            e = self.entries[name]
            raw = name.encode()
            ncall = max(1, math.ceil(e.counts.max() / self.chunk_size))
            values = e.mean_squares().astype(np.float64) * ncall
            out += [struct.pack("<i", len(raw)), raw, struct.pack("<ii", ncall, values.size)]
            out.append(values.astype("<f4").tobytes())
        dataset = (self.datasets[-1] if self.datasets else "").encode()
        out += [struct.pack("<ii", self.chunk_count, len(dataset)), dataset]
        with open(path, "wb") as f:
            f.write(b"".join(out))

    def _save_gguf(self, path) -> None:
        w = gguf.GGUFWriter(path)
        w.add("general.type", "imatrix", "str")
        w.add("imatrix.datasets", list(self.datasets), "array[str]")
        w.add("imatrix.chunk_count", self.chunk_count, "u32")
        w.add("imatrix.chunk_size", self.chunk_size, "u32")
        for name in sorted(self.entries):
            e = self.entries[name]
            w.add_tensor(f"{name}.in_sum2", e.sums.astype(np.float32))
            w.add_tensor(f"{name}.counts", e.counts.astype(np.float32).reshape(-1, 1))
        w.write()

    @classmethod
    def load(cls, path: str | os.PathLike) -> Imatrix:
        with open(path, "rb") as f:
            magic = f.read(4)
        return cls._load_gguf(path) if magic == b"GGUF" else cls._load_legacy(path)

    @classmethod
    def _load_gguf(cls, path) -> Imatrix:
        with gguf.open(path) as f:
            md = f.metadata
            by_name = {t.name: t for t in f.tensors}
            entries = {}
            for tname in by_name:
                if not tname.endswith(".in_sum2"):
                    continue
                name = tname.removesuffix(".in_sum2")
                if f"{name}.counts" not in by_name:
                    raise ValueError(f"{path}: {name} has sums but no counts")
                counts = f.dequantize(f"{name}.counts").astype(np.float64).reshape(-1)
                sums = f.dequantize(tname).astype(np.float64).reshape(counts.size, -1)
                entries[name] = ImatrixEntry(sums, counts)
        if "imatrix.chunk_size" not in md and not entries:
            raise ValueError(f"{path}: a GGUF file, but not an importance matrix")
        return cls(entries, int(md.get("imatrix.chunk_count", 0)), int(md.get("imatrix.chunk_size", 512)),
                   list(md.get("imatrix.datasets", [])))  # fmt: skip

    @classmethod
    def _load_legacy(cls, path) -> Imatrix:
        with open(path, "rb") as f:
            data = f.read()
        pos = 0

        def take(n: int, what: str) -> bytes:
            nonlocal pos
            if n < 0 or pos + n > len(data):
                raise ValueError(f"{path}: truncated importance matrix (reading {what} at byte {pos})")
            pos += n
            return data[pos - n : pos]

        (n_entries,) = struct.unpack("<i", take(4, "the entry count"))
        if n_entries < 0:
            raise ValueError(f"{path}: not an importance matrix (entry count {n_entries})")
        entries = {}
        for _ in range(n_entries):
            (length,) = struct.unpack("<i", take(4, "a name length"))
            name = take(length, "a name").decode("utf-8", "replace")
            ncall, nval = struct.unpack("<ii", take(8, f"the counts of {name}"))
            values = np.frombuffer(take(4 * nval, f"the values of {name}"), "<f4").astype(np.float64)
            if not np.isfinite(values).all():
                raise ValueError(f"{path}: non-finite values for {name}")
            # Stored: mean * ncall. Keep sums/counts so that mean_squares() gives the mean back.
            count = float(max(ncall, 1))
            entries[name] = ImatrixEntry(values.reshape(1, -1), np.array([count]))
        chunks, datasets = 0, []
        if pos + 8 <= len(data):
            chunks, length = struct.unpack("<ii", take(8, "the chunk count"))
            datasets = [take(length, "the dataset name").decode("utf-8", "replace")]
        return cls(entries, chunks, 512, datasets)


def collect(
    model_path: str | os.PathLike,
    text: str,
    n_ctx: int = 512,
    n_chunks: int | None = None,
    n_threads: int | None = None,
    n_batch: int = 512,
    dataset: str = "",
    progress: Callable[[int, int, float], None] | None = None,
) -> tuple[Imatrix, float]:
    """Runs the model over ``text`` in chunks of ``n_ctx`` tokens and returns the importance
    matrix of its inputs with the perplexity of the text (as llama.cpp's imatrix prints it)."""
    scorer = Scorer(model_path, n_ctx, n_threads, n_batch)
    chunks = scorer.chunks(text, n_chunks)
    scorer.model.start_activation_stats()
    result = score_perplexity(scorer, chunks, progress=progress)
    entries = {}
    for names, cols, sums, counts in scorer.model.take_activation_stats():
        n_mat = counts.size
        entry = ImatrixEntry(np.asarray(sums).reshape(n_mat, cols), np.asarray(counts, np.float64))
        for name in names:
            entries[name] = entry
    return Imatrix(entries, len(chunks), n_ctx, [dataset] if dataset else []), result.ppl
