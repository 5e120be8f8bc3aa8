"""The measurement's tensors as Ray tasks (``--ray-address``): each task quantizes one tensor
at its candidate types and scores its anchors' KLD passes on some node, reading the source and
the measurement base from paths every node can read; the base logits travel once, through
Ray's object store. A task whose worker dies is retried by Ray; the measurement file is
written as tasks end, so a killed run resumes where it stopped. The results are the same
numbers as a local run's: each tensor is measured the same way, by one task, and the engine's
and the quantizers' results do not depend on their thread count."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator

from ferrollm.quant.allocate.measure import KLDProbe, SlotJob, measure_slot, scratch_dir

_remote = None


def _task(job: SlotJob, probe: KLDProbe) -> tuple[dict, dict[str, float]]:
    # Probe models go to the node's own tmpfs; the base is read from the shared path.
    return measure_slot(job, probe, scratch_dir())


def shared_scratch(measurement: str | os.PathLike | None) -> str:
    """Where the measurement base goes so that every node reads it: beside the measurement
    file (which a cluster run must keep on shared storage), else the working directory."""
    return os.path.dirname(os.path.abspath(measurement)) if measurement else os.getcwd()


def run_on_ray(jobs: list[SlotJob], probe: KLDProbe, scratch: str,
               step_done: Callable[[str], None] | None) -> Iterator[tuple[SlotJob, dict, dict[str, float]]]:  # fmt: skip
    """One task per tensor, each reserving the jobs' threads (``--threads``; default 1) of CPUs
    on its node and running that many engine threads; yields them as they end."""
    import ray

    global _remote
    if _remote is None:
        _remote = ray.remote(max_retries=3, retry_exceptions=False)(_task)
    probe_ref = ray.put(probe)
    pending = {}
    for job in jobs:
        job = dataclasses.replace(job, threads=job.threads or 1)
        pending[_remote.options(num_cpus=job.threads).remote(job, probe_ref)] = job
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        job = pending.pop(ready[0])
        entry, seconds = ray.get(ready[0])
        if step_done:
            for t in job.slot.options:
                step_done(f"{job.slot.name} {t}")
            for t in job.anchor:
                step_done(f"{job.slot.name} KLD {t}")
        yield job, entry, seconds
