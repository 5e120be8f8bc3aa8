"""Quantize to any size by measurement: each tensor gets the type that buys the most quality
for its bytes (``ferrollm quantize IN OUT --target-bpw B``).

    from ferrollm.quant.allocate import Target, quantize_to_target
    result = quantize_to_target("model-f16.gguf", "out.gguf", Target(bpw=3.3), imatrix="imatrix.dat",
                                calibration=text, measurement="measurement.json")
    result.allocation.types      # {tensor: type}
    result.allocation.loss       # predicted mean KLD (sum of the measured per-tensor losses)

The steps are usable alone: ``layout`` (what is allocated, exact sizes), ``budget`` (a target
as bytes), ``measure`` (loss of each tensor at each type, saved and reused as JSON), ``solve``
(the least-loss choice within the budget).
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from ferrollm.atomic import check_output
from ferrollm.gguf import GGUFFile
from ferrollm.quant.allocate.budget import Budget, Target, budget, parse_size
from ferrollm.quant.allocate.layout import DEFAULT_CANDIDATES, Layout, layout
from ferrollm.quant.allocate.measure import (
    DEFAULT_ANCHORS,
    DEFAULT_TOKENS,
    Measurement,
    key_mismatch,
    measure,
    measurement_key,
)
from ferrollm.quant.allocate.solve import Allocation, solve
from ferrollm.quant.imatrix import Imatrix
from ferrollm.quant.mixes import MIXES
from ferrollm.quant.writer import output_metadata, quantize_file

__all__ = ["DEFAULT_CANDIDATES", "Allocation", "Budget", "Layout", "Measurement", "Result", "Target", "budget",
           "describe", "layout", "measure", "parse_size", "plan_allocation", "quantize_to_target", "solve"]  # fmt: skip


@dataclass
class Result:
    allocation: Allocation
    measurement: Measurement
    layout: Layout
    measured: bool  # False: the measurement came from the JSON file
    written: dict[str, str] | None = None  # every tensor's type in the output file


def file_type_of(types: dict[str, str], layout: Layout) -> tuple[str, int]:
    """(mix name, general.file_type) named after the type holding most of the bytes."""
    by_bytes = Counter()
    for s in layout.slots:
        by_bytes[types[s.name]] += s.nbytes(types[s.name])
    main = by_bytes.most_common(1)[0][0]
    names = [m for m, (_, t) in MIXES.items() if t == main]
    name = (
        main if main in names else next((m for m in names if m.endswith("_M")), names[0] if names else "F32")
    )
    return name, MIXES[name][0]


def _read_calibration(calibration) -> str | None:
    if calibration is None or isinstance(calibration, str):
        return calibration
    with open(calibration, encoding="utf-8", errors="replace") as f:
        return f.read()


def plan_allocation(
    src: str | os.PathLike,
    target: Target,
    imatrix: Imatrix | str | os.PathLike | None = None,
    calibration: str | os.PathLike | None = None,
    measurement: str | os.PathLike | None = None,
    types: tuple[str, ...] | None = None,
    anchors: int | None = DEFAULT_ANCHORS,
    n_ctx: int = 512,
    n_tokens: int = DEFAULT_TOKENS,
    threads: int | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    log: Callable[[str], None] | None = None,
    error_rows: int | None = None,
    ray_address: str | None = None,
) -> Result:
    """Measure (or reuse ``measurement``) and solve, writing nothing but the measurement file.
    ``calibration``: the text (str) or a path to it; ``types``: candidate types (default
    ``DEFAULT_CANDIDATES``); ``anchors``: measured types per tensor (None: every type);
    ``error_rows``: rows per matrix the proxy error is summed over (None: all; see ``measure``);
    ``ray_address``: measure the tensors as tasks on this Ray cluster (``auto``: the local one,
    started if none runs), each node reading the model from the same path."""
    src = os.fspath(src)
    imatrix_path = os.fspath(imatrix) if isinstance(imatrix, (str, os.PathLike)) else None
    im = Imatrix.load(imatrix_path) if imatrix_path else imatrix
    text = _read_calibration(calibration)
    say = log or (lambda _msg: None)
    with GGUFFile(src) as f:
        lay = layout(f, output_metadata(f, 0, im), types, im is not None)
        need = budget(target, lay, src)
        if need.note:
            say(need.note)
        key = measurement_key(src, imatrix_path, text, types, anchors, n_ctx, n_tokens, error_rows)
        if im is not None and imatrix_path is None:
            key["imatrix_sha256"] = "in-memory"
        stored, partial = None, {}
        if measurement is not None and os.path.exists(measurement):
            stored = Measurement.load(measurement)
            why = key_mismatch(stored.key, key)
            if why is None and not stored.covers(lay):
                # An interrupted run's file (written as tensors were measured): resume it.
                partial, stored = stored.tensors, None
                say(f"resuming the measurement in {os.fspath(measurement)} ({len(partial)} tensors done)")
            elif why is None:
                say(f"reusing the measurement in {os.fspath(measurement)}")
            else:
                say(f"{os.fspath(measurement)} was measured with another {why}: measuring again")
                stored = None
        if stored is None:
            if text is None:
                raise ValueError("measuring needs calibration text (--calibration FILE), or a measurement "
                                 "file of this model from an earlier run (--measurement FILE)")  # fmt: skip
            saved = None if measurement is None else (lambda m: m.save(measurement))
            runner, scratch = None, None
            if ray_address is not None:
                from ferrollm.cluster import connect
                from ferrollm.quant.allocate import ray_tasks

                connect(ray_address)
                runner, scratch = ray_tasks.run_on_ray, ray_tasks.shared_scratch(measurement)
            stored = measure(f, lay, im, text, key, anchors, n_ctx, n_tokens, threads, progress, error_rows,
                             done=partial, saved=saved, runner=runner, scratch=scratch)  # fmt: skip
            if measurement is not None:
                stored.save(measurement)
            return Result(solve(lay, stored.losses(), need), stored, lay, True)
    return Result(solve(lay, stored.losses(), need), stored, lay, False)


def quantize_to_target(src: str | os.PathLike, dst: str | os.PathLike, target: Target, *,
                       imatrix: Imatrix | str | os.PathLike | None = None, threads: int | None = None,
                       progress: Callable[[int, int, str], None] | None = None,
                       write_progress: Callable[[int, int, str], None] | None = None, **kwargs) -> Result:  # fmt: skip
    """``plan_allocation``, then write ``dst`` with the chosen types; the file is exactly the
    size the allocation predicts (checked)."""
    check_output(dst, [src, imatrix, kwargs.get("calibration")])
    result = plan_allocation(src, target, imatrix, threads=threads, progress=progress, **kwargs)
    im = Imatrix.load(imatrix) if isinstance(imatrix, (str, os.PathLike)) else imatrix
    mix, _ = file_type_of(result.allocation.types, result.layout)
    written = quantize_file(src, dst, mix, imatrix=im, threads=threads, progress=write_progress,
                            tensor_types=result.allocation.types)  # fmt: skip
    size = os.path.getsize(dst)
    if size != result.allocation.file_bytes:
        os.unlink(dst)
        raise RuntimeError(
            f"internal error: wrote {size} bytes, the allocation predicted {result.allocation.file_bytes}"
        )
    result.written = written
    return result


def describe(result: Result, stream=None) -> None:
    """The chosen plan, one line per tensor, and the totals."""
    out = stream or sys.stdout
    a, m = result.allocation, result.measurement
    print(f"{'tensor':<34} {'type':<8} {'bpw':>6} {'MiB':>8} {'loss':>10}", file=out)
    for s in result.layout.slots:
        t = a.types[s.name]
        e = m.tensors[s.name]["types"][t]
        print(f"{s.name:<34} {t:<8} {e['bpw']:6.3f} {e['bytes'] / 2**20:8.3f} {e['loss']:10.3e}", file=out)
    print(f"allocated {a.bpw:.4f} bpw, file {a.file_bytes} bytes ({a.file_bytes / 2**20:.2f} MiB), "
          f"predicted mean KLD {a.loss:.5f}", file=out)  # fmt: skip
