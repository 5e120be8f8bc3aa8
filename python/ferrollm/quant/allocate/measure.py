"""Measure how much each tensor suffers at each candidate type (EXL2's ``measurement.json``).

The loss of a tensor at a type is the mean KL-divergence of the next-token distributions on
calibration text when that tensor alone is quantized to that type and every other tensor is
as in the source. Measuring every (tensor, type) pair that way costs one pass of the model
over the calibration text each, so it is done for a few *anchor* types per tensor, spread
over its candidates, and the other types are placed between them by a proxy:

    error(tensor, type) = sum over experts e, rows r, columns j of
                          P(e) x imatrix[e, j] x (w[e, r, j] - quantized w[e, r, j])^2

the expected squared error of the tensor's output per token (P(e): the share of tokens routed
to expert e; 1 for dense tensors; a plain squared error where the importance matrix has no
entry, such as a tied embedding). Per tensor, the anchors give (error, KLD) points and the
loss of any other type is read off the piecewise power law through them in log-log space
(slope 1 past the ends: KLD is second order in a small output error). ``anchors=None``
measures every pair directly (the check of the proxy).

When the source holds floats (F32/F16/BF16), the measurement's base is the source with every
allocated tensor in Q8_0: the engine runs it 2.7x faster than F32 on the embedded model, and
Q8_0 moves the logits far less than any candidate it is compared with.

The result is saved as JSON and reused when the source file, importance matrix, calibration
text, candidate types and settings are the same.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from ferrollm.atomic import AtomicFile
from ferrollm.gguf import GGUFFile
from ferrollm.gguf.stream import PlannedTensor, write_gguf_stream
from ferrollm.quant import block_types
from ferrollm.quant.allocate.layout import Layout, Slot
from ferrollm.quant.allocate.probe import KLDProbe
from ferrollm.quant.imatrix import Imatrix
from ferrollm.quant.quality import chunk_tokens
from ferrollm.quant.writer import quantize_tensor
from ferrollm.text.tokenizer import Tokenizer

FORMAT = "ferrollm-measurement/1"
DEFAULT_ANCHORS = 4
DEFAULT_TOKENS = 2048
_FLOAT_TYPES = ("F32", "F16", "BF16")
_FLOOR = 1e-12  # a KLD below float rounding


@dataclass
class Measurement:
    key: dict
    tensors: dict[str, dict]  # name -> {"elements", "types": {type: {"bytes", "error", "kld"?, "loss"}}}
    seconds: dict = field(default_factory=dict)

    def losses(self) -> dict[str, dict[str, float]]:
        return {n: {t: v["loss"] for t, v in e["types"].items()} for n, e in self.tensors.items()}

    def covers(self, layout: Layout) -> bool:
        return all(s.name in self.tensors and set(s.options) <= set(self.tensors[s.name]["types"])
                   for s in layout.slots)  # fmt: skip

    def save(self, path: str | os.PathLike) -> None:
        blob = json.dumps({"format": FORMAT, "key": self.key, "seconds": self.seconds, "tensors": self.tensors},
                          indent=1).encode()  # fmt: skip
        with AtomicFile(path) as f:
            f.write(blob)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Measurement:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{os.fspath(path)}: not a measurement file ({e})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{os.fspath(path)}: not a {FORMAT} file")
        return cls(data["key"], data["tensors"], data.get("seconds", {}))


def file_fingerprint(path: str | os.PathLike) -> str:
    """sha256 of the file; past 2 GiB, of its size and 64 slices of 1 MiB spread over it (a
    full hash of a 90 GB model would take longer than the measurement)."""
    size = os.path.getsize(path)
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= 2 << 30:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        else:
            for i in range(64):
                f.seek(i * (size - (1 << 20)) // 63)
                h.update(f.read(1 << 20))
    return h.hexdigest()


def measurement_key(src, imatrix_path, calibration: str | None, types, anchors, n_ctx: int, n_tokens: int,
                    error_rows: int | None = None) -> dict:  # fmt: skip
    return {
        "source": os.path.basename(os.fspath(src)),
        "source_sha256": file_fingerprint(src),
        "imatrix_sha256": file_fingerprint(imatrix_path) if imatrix_path else None,
        "calibration_sha256": hashlib.sha256(calibration.encode()).hexdigest()
        if calibration is not None
        else None,
        "types": list(types) if types else None,
        "anchors": anchors,
        "n_ctx": n_ctx,
        "n_tokens": n_tokens,
        "error_rows": error_rows,
    }


def key_mismatch(stored: dict, wanted: dict) -> str | None:
    """The first setting in which a stored measurement differs from the one wanted (None: it
    can be reused). A calibration text that was not given matches any."""
    for k, v in wanted.items():
        if k == "calibration_sha256" and v is None:
            continue
        if k == "source":
            continue  # the same file under another name is the same measurement
        if stored.get(k) != v:
            return k
    return None


def anchor_types(options: tuple[str, ...], anchors: int | None) -> tuple[str, ...]:
    """``anchors`` of a tensor's candidates spread evenly from the smallest to the second largest
    (the largest, Q8_0, is too close to the base to measure well); all of them for None."""
    if anchors is None or anchors >= len(options):
        return options
    top = max(len(options) - 2, 0)
    idx = sorted({round(i * top / max(anchors - 1, 1)) for i in range(anchors)})
    return tuple(options[i] for i in idx)


def weighted_error(values: np.ndarray, restored: np.ndarray, im: np.ndarray | None, counts) -> float:
    """Expected squared output error per token (see the module's docstring)."""
    diff2 = np.square(values - restored, dtype=np.float32)
    if im is None:
        return float(diff2.sum(dtype=np.float64))
    n_mat = im.shape[0]
    per_col = diff2.reshape(n_mat, -1, diff2.shape[-1]).sum(axis=1, dtype=np.float64)  # (n_mat, cols)
    per_mat = (per_col * im).sum(axis=1)
    share = (
        np.ones(n_mat)
        if counts is None or n_mat == 1
        else np.asarray(counts, np.float64) / max(sum(counts), 1)
    )
    return float((per_mat * share).sum())


def calibrate(errors: dict[str, float], klds: dict[str, float]) -> dict[str, float]:
    """Losses of every type from the measured KLDs at the anchors and the proxy errors."""
    points = sorted((errors[t], max(k, _FLOOR)) for t, k in klds.items() if errors[t] > 0)
    if not points:  # nothing measurable: the anchors were as good as the base
        return {t: klds.get(t, 0.0) for t in errors}
    e = np.log([p[0] for p in points])
    k = np.maximum.accumulate(np.log([p[1] for p in points]))  # a larger error never costs less
    out = {}
    for t, err in errors.items():
        if t in klds:
            out[t] = max(klds[t], 0.0)
        elif err <= 0:
            out[t] = 0.0
        elif np.log(err) <= e[0]:
            out[t] = float(np.exp(k[0] + np.log(err) - e[0]))
        elif np.log(err) >= e[-1]:
            out[t] = float(np.exp(k[-1] + np.log(err) - e[-1]))
        else:
            out[t] = float(np.exp(np.interp(np.log(err), e, k)))
    return out


def scratch_dir() -> str:
    """tmpfs where there is one: each anchor writes a whole model."""
    return (
        "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    )


class ModelWriter:
    """Writes copies of a base model with one tensor replaced."""

    def __init__(self, base: GGUFFile):
        self.base = base
        md_types = base.metadata_types
        self.metadata = [(k, md_types[k], v) for k, v in base.metadata.items()]
        self.plan = [PlannedTensor(t.name, t.numpy_shape, t.type) for t in base.tensors]

    def write(self, path: str, name: str | None = None, type_name: str | None = None, data=None) -> None:
        plan = [PlannedTensor(p.name, p.shape, type_name) if p.name == name else p for p in self.plan]
        blobs = (data if p.name == name else self.base.tensor_bytes(p.name) for p in plan)
        write_gguf_stream(path, self.metadata, plan, blobs)


def measurement_base(src: GGUFFile, slots: tuple[Slot, ...], path: str) -> None:
    """The source with its float allocated tensors in Q8_0 (see the module's docstring)."""
    wide = {s.name for s in slots if src.tensor(s.name).type in _FLOAT_TYPES and s.shape[-1] % 32 == 0}
    md_types = src.metadata_types
    metadata = [(k, md_types[k], v) for k, v in src.metadata.items()]
    plan = [PlannedTensor(t.name, t.numpy_shape, "Q8_0" if t.name in wide else t.type) for t in src.tensors]

    def blobs():
        for t in src.tensors:
            if t.name in wide:
                yield quantize_tensor(src.dequantize(t.name).reshape(t.numpy_shape), "Q8_0")[0]
            else:
                yield src.tensor_bytes(t.name)

    write_gguf_stream(path, metadata, plan, blobs())


def calibration_chunks(src: GGUFFile, text: str, n_ctx: int, n_tokens: int) -> list[list[int]]:
    tok = Tokenizer(src.metadata)
    n_chunks = max(1, n_tokens // n_ctx)
    try:
        return chunk_tokens(tok.encode(text), n_ctx, tok.bos_id if tok.add_bos else None, n_chunks)
    except ValueError as e:
        raise ValueError(f"calibration text: {e}") from None


@dataclass
class SlotJob:
    """One tensor's measurement: its quantization at every candidate and a KLD pass per anchor.
    Everything in it pickles, so a job runs in this process or as a Ray task elsewhere."""

    src: str
    base: str  # the measurement base (see ``measurement_base``), a path the runner can read
    slot: Slot
    anchor: tuple[str, ...]
    im: np.ndarray | None
    counts: np.ndarray | None
    error_rows: int | None
    threads: int | None


def measure_slot(job: SlotJob, probe: KLDProbe, scratch: str,
                 step_done: Callable[[str], None] | None = None) -> tuple[dict, dict[str, float]]:  # fmt: skip
    """The tensor's entry of the measurement and the seconds spent quantizing and scoring;
    ``step_done(label)`` after each quantization and each KLD pass."""
    slot, anchor, im = job.slot, job.anchor, job.im
    seconds = {"quantize": 0.0, "kld": 0.0}
    with GGUFFile(job.src) as src, GGUFFile(job.base) as base:
        writer = ModelWriter(base)
        info = src.tensor(slot.name)
        values = src.dequantize(slot.name).reshape(slot.shape)
        errors, klds = {}, {}
        step = -(-slot.shape[-2] // job.error_rows) if job.error_rows else 1
        sample = np.ascontiguousarray(values[..., ::step, :])
        for t in slot.options:
            t0 = time.perf_counter()
            data = quantize_tensor(values if t in anchor else sample, t, im, job.threads)[0]
            restored = block_types.dequantize(data, t).reshape(values.shape if t in anchor else sample.shape)
            if t in anchor and step > 1:
                restored = np.ascontiguousarray(restored[..., ::step, :])
            errors[t] = weighted_error(sample, restored, im, job.counts) * slot.shape[-2] / sample.shape[-2]
            seconds["quantize"] += time.perf_counter() - t0
            if step_done:
                step_done(f"{slot.name} {t}")
            if t in anchor:
                t0 = time.perf_counter()
                fd, path = tempfile.mkstemp(prefix="probe-", suffix=".gguf", dir=scratch)
                os.close(fd)
                try:
                    writer.write(path, slot.name, t, data)
                    klds[t] = probe.kld(path)
                finally:
                    os.unlink(path)
                seconds["kld"] += time.perf_counter() - t0
                if step_done:
                    step_done(f"{slot.name} KLD {t}")
    losses = calibrate(errors, klds)
    per_type = {}
    for t in slot.options:
        per_type[t] = {"bytes": slot.nbytes(t), "bpw": block_types.quant_type(t).bits_per_weight,
                       "error": errors[t], "loss": losses[t]}  # fmt: skip
        if t in klds:
            per_type[t]["kld"] = klds[t]
    entry = {"source_type": info.type, "elements": slot.n_elements, "types": per_type}
    return entry, seconds


# Runs jobs, yielding (job, entry, seconds) as each ends: here, or on a cluster (``cluster.py``).
Runner = Callable[[list[SlotJob], KLDProbe, str, Callable[[str], None] | None],
                  Iterator[tuple[SlotJob, dict, dict[str, float]]]]  # fmt: skip


def run_here(jobs: list[SlotJob], probe: KLDProbe, scratch: str,
             step_done: Callable[[str], None] | None) -> Iterator[tuple[SlotJob, dict, dict[str, float]]]:  # fmt: skip
    for job in jobs:
        entry, seconds = measure_slot(job, probe, scratch, step_done)
        yield job, entry, seconds


def measure(
    src: GGUFFile,
    layout: Layout,
    imatrix: Imatrix | None,
    calibration: str,
    key: dict,
    anchors: int | None = DEFAULT_ANCHORS,
    n_ctx: int = 512,
    n_tokens: int = DEFAULT_TOKENS,
    threads: int | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    error_rows: int | None = None,
    done: dict[str, dict] | None = None,
    saved: Callable[[Measurement], None] | None = None,
    runner: Runner | None = None,
    scratch: str | None = None,
) -> Measurement:
    """Measure every allocated tensor of ``src`` at each of its candidate types. With
    ``error_rows``, the proxy error of a matrix of more rows is summed over that many rows
    spread evenly over it (and scaled up): rows quantize independently, so the types that are
    not anchors need only those rows quantized, which is most of the time on a large model.

    ``done``: tensors an earlier, interrupted run measured (kept, not measured again);
    ``saved(m)`` is called with the measurement so far after each tensor (to write it as it
    grows); ``runner`` runs the tensors' jobs (``run_here``, or ``cluster.run_on_ray``), which
    read ``scratch`` (default: tmpfs here) for the base model."""
    start = time.perf_counter()
    arch = src.metadata.get("general.architecture", "llama")
    n_ctx = min(n_ctx, int(src.metadata.get(f"{arch}.context_length", n_ctx)))
    chunks = calibration_chunks(src, calibration, n_ctx, n_tokens)
    plan = [(s, anchor_types(s.options, anchors)) for s in layout.slots]
    done = {n: e for n, e in (done or {}).items() if n in {s.name for s, _ in plan}}
    todo = [(s, a) for s, a in plan if s.name not in done]
    total = sum(len(s.options) + 2 * len(a) for s, a in todo) + 2
    steps = 0
    seconds = {"quantize": 0.0, "kld": 0.0}
    found: dict[str, dict] = dict(done)

    def ordered() -> dict[str, dict]:  # the layout's order, whatever order the jobs ended in
        return {s.name: found[s.name] for s, _ in plan if s.name in found}

    def step_done(label: str) -> None:
        nonlocal steps
        steps += 2 if " KLD " in label else 1
        if progress:
            progress(steps, total, label)

    with tempfile.TemporaryDirectory(prefix="ferrollm-measure-", dir=scratch or scratch_dir()) as tmp:
        base_path = os.path.join(tmp, "base.gguf")
        measurement_base(src, layout.slots, base_path)
        probe = KLDProbe(base_path, chunks, n_ctx, threads)
        seconds["base"] = time.perf_counter() - start
        step_done("base logits KLD ")
        jobs = []
        for slot, anchor in todo:
            n_mat = int(np.prod(slot.shape[:-2])) if len(slot.shape) > 2 else 1
            im = imatrix.for_tensor(slot.name, n_mat, slot.shape[-1]) if imatrix else None
            entry = imatrix.entries.get(slot.name) if imatrix else None
            counts = None if entry is None else entry.counts
            jobs.append(SlotJob(src.path, base_path, slot, anchor, im, counts, error_rows, threads))
        for job, entry, secs in (runner or run_here)(jobs, probe, tmp, step_done):
            found[job.slot.name] = entry
            for k, v in secs.items():
                seconds[k] += v
            if saved:
                saved(Measurement(key, ordered(), dict(seconds)))
    seconds["total"] = time.perf_counter() - start
    seconds["n_tokens"] = probe.n_tokens
    return Measurement(key, ordered(), seconds)
