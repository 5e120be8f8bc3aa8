"""`ferrollm quantize --target-bpw --ray-address`: the measurement's tensors as Ray tasks on a
local Ray cluster the test starts (a head and a second node on this machine, one CPU each) give
the same measurement and the same file, byte for byte, as the local run on the demo model; so
does a run whose task worker is SIGKILLed; a run resumed from a partial measurement file
measures only the tensors it lacks.

Run with:  pip install '.[ray,test]' && python -m pytest -m ray
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest
from ferrollm import demo_model_path
from ferrollm.quant.allocate import Target, quantize_to_target
from support import ray_cluster
from support.peer import HELDOUT

pytestmark = pytest.mark.ray
pytest.importorskip("ray")


@pytest.fixture(scope="module")
def address():
    with ray_cluster.cluster() as started:
        yield started.address


MEASURE = {"types": ("Q2_K", "Q4_K", "Q6_K", "Q8_0"), "anchors": 2, "n_tokens": 256}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """The demo model to ~4.5 bpw, measured here."""
    d = tmp_path_factory.mktemp("measure")
    text = HELDOUT[:20000]
    result = quantize_to_target(demo_model_path(), d / "local.gguf", Target(bpw=4.5), calibration=text,
                                measurement=d / "local.json", **MEASURE)  # fmt: skip
    return {"dir": d, "text": text, "result": result}


def _same_measurement(a, b) -> None:
    assert a.key == b.key
    assert json.dumps(a.tensors, sort_keys=False) == json.dumps(b.tensors, sort_keys=False)


def test_the_measurement_on_ray_is_the_local_one(address, local_run, tmp_path):
    d = local_run["dir"]
    result = quantize_to_target(demo_model_path(), tmp_path / "ray.gguf", Target(bpw=4.5),
                                calibration=local_run["text"], measurement=tmp_path / "ray.json",
                                ray_address=address, **MEASURE)  # fmt: skip
    _same_measurement(result.measurement, local_run["result"].measurement)
    assert (tmp_path / "ray.gguf").read_bytes() == (d / "local.gguf").read_bytes()


def test_a_killed_task_worker_still_gives_the_same_file(address, local_run, tmp_path):
    killed = []

    def kill_one_task_worker(done: int, total: int, label: str) -> None:
        if killed or done < 3:
            return
        out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
        pids = [int(line.split()[0]) for line in out.splitlines() if "ray::_task" in line]
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    result = quantize_to_target(demo_model_path(), tmp_path / "k.gguf", Target(bpw=4.5),
                                calibration=local_run["text"], measurement=tmp_path / "k.json",
                                ray_address=address, progress=kill_one_task_worker, **MEASURE)  # fmt: skip
    assert killed, "no task worker was running to kill"
    _same_measurement(result.measurement, local_run["result"].measurement)
    assert (tmp_path / "k.gguf").read_bytes() == (local_run["dir"] / "local.gguf").read_bytes()


def test_a_partial_measurement_resumes_with_only_the_missing_tensors(address, local_run, tmp_path):
    full = json.loads((local_run["dir"] / "local.json").read_text())
    names = list(full["tensors"])
    partial = {**full, "tensors": {n: full["tensors"][n] for n in names[: len(names) // 2]}}
    (tmp_path / "p.json").write_text(json.dumps(partial))
    measured = set()
    logs: list[str] = []
    result = quantize_to_target(demo_model_path(), tmp_path / "p.gguf", Target(bpw=4.5),
                                calibration=local_run["text"], measurement=tmp_path / "p.json",
                                ray_address=address, log=logs.append,
                                progress=lambda d, t, label: measured.add(label.split()[0]), **MEASURE)  # fmt: skip
    assert any("resuming" in line for line in logs), logs
    assert measured - {"base"} == set(names[len(names) // 2 :])
    _same_measurement(result.measurement, local_run["result"].measurement)
    assert (tmp_path / "p.gguf").read_bytes() == (local_run["dir"] / "local.gguf").read_bytes()
