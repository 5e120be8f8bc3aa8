"""The EXL2 layout against ExLlamaV2 itself (marker ``oracle``; the oracle virtualenv with
``pip install exllamav2``, whose extension needs CUDA and is not built): its own packing
(``AdaptiveGPTQ.configure`` and ``pack`` with the ``pack_rows_4``/``pack_columns`` kernels) and
its reconstruction kernel, compiled for the CPU by ``exl2_oracle/exllamav2_cpu.py``. Our test
packer must write what ``pack`` writes, and our reader must return what the kernel returns.
Setup: ``EXLLAMA_NOCOMPILE=1 /work/venv-oracle/bin/pip install exllamav2`` (tested with 0.3.2)."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest
from ferrollm.checkpoints.exl2 import dequantize
from support.exl2_models import dequantized, pack, plan_groups, quantize_layer
from support.oracle import ORACLE_PY, run_oracle

pytestmark = pytest.mark.oracle

# (out, in, bits, proportions, group size): ExLlamaV2 presets, every width, padded columns
CASES = [
    (96, 512, [8, 6, 5, 4, 3, 2], [0.125, 0.125, 0.25, 0.25, 0.125, 0.125], 32),
    (128, 1024, [8, 4, 3], [0.05, 0.1, 0.85], {8: 32, 4: 128, 3: 128}),
    (256, 384, [6, 5], [0.1, 0.9], 128),
    (100, 256, [5, 3], [0.5, 0.5], 64),
    (72, 320, [4, 2], [0.3, 0.7], 32),
    (64, 256, [8], [1.0], 32),
]


def test_packing_and_reconstruction_match_exllamav2(tmp_path):
    if not os.path.isfile(ORACLE_PY) or shutil.which("g++") is None:
        pytest.skip(f"needs the oracle virtualenv ({ORACLE_PY}) and g++")
    found = "import importlib.util, sys; sys.exit(importlib.util.find_spec('exllamav2') is None)"
    if subprocess.run([ORACLE_PY, "-c", found], check=False).returncode:
        pytest.skip(
            "exllamav2 is not installed in the oracle virtualenv (EXLLAMA_NOCOMPILE=1 pip install exllamav2)"
        )
    rng = np.random.default_rng(22)
    inputs, layers = {}, {}
    for i, (out_f, in_f, bits, props, gs) in enumerate(CASES):
        w = (rng.standard_normal((out_f, in_f)) * 0.05).astype(np.float32)
        ql = quantize_layer(w, rng, bits, props, gs)
        layers[f"c{i}"] = ql
        inputs.update({f"c{i}.q": ql.q, f"c{i}.qscale": ql.qscale, f"c{i}.qscale_max": ql.qscale_max,
                       f"c{i}.invperm": ql.invperm, f"c{i}.bits": np.array([b for b, _ in ql.groups]),
                       f"c{i}.props": np.array(props), f"c{i}.group_size": np.array(list(ql.group_size.items()))})  # fmt: skip
    np.savez(tmp_path / "in.npz", **inputs)
    script = os.path.join(os.path.dirname(__file__), "exl2_oracle", "exllamav2_cpu.py")
    run_oracle([ORACLE_PY, script, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")])
    got = dict(np.load(tmp_path / "out.npz"))
    for case, ql in layers.items():
        out_f, in_f, bits, props, gs = CASES[int(case[1:])]
        # configure: the same number of groups per width as plan_groups
        counts = [sum(1 for b, _ in plan_groups(in_f, bits, props, gs) if b == w) for w in bits]
        assert got[f"{case}.bits_groups"].tolist() == counts
        # pack: our test packer writes ExLlamaV2's tensors bit for bit
        ours = pack(ql)
        for name, v in ours.items():
            theirs = got[f"{case}.{name}"]
            assert theirs.dtype == v.dtype and theirs.shape == v.shape, (
                case,
                name,
                theirs.dtype,
                theirs.shape,
            )
            np.testing.assert_array_equal(theirs, v, err_msg=f"{case}.{name}")
        # reconstruct: ExLlamaV2's kernel gives our reader's weights, float16 bit for bit
        recon = got[f"{case}.reconstructed"][:, :out_f].T.astype(np.float32)
        np.testing.assert_array_equal(dequantize(case, ours, out_f), recon, err_msg=case)
        np.testing.assert_array_equal(dequantized(ql), recon, err_msg=case)
