"""Soak checks (benches/soak.py): RSS stays within the planned KV cache while a quantized cache
fills, logits stay finite, and create/destroy cycles leak neither memory nor file handles.
The default run uses a 2K context and 100 cycles; the full 32K / 1000-cycle soak is marked slow."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from ferrollm.gguf.synthetic_model import write_model

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benches"))
from soak import cycles, long_generation, soak_spec


@pytest.mark.parametrize("n_ctx, n_cycles", [(2048, 100), pytest.param(32768, 1000, marks=pytest.mark.slow)])
def test_soak(tmp_path, n_ctx, n_cycles):
    path = str(tmp_path / "soak.gguf")
    write_model(path, soak_spec(n_ctx))
    long = long_generation(path, n_ctx, "q8_0", "q4_0")
    assert long["tokens"] == n_ctx and long["ok"], long
    cyc = cycles(path, n_cycles)
    assert cyc["ok"], cyc
