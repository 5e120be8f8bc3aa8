"""Whole-file quantization with --pure: every matrix in one type, norms and routers F32."""

from __future__ import annotations

import numpy as np
import pytest
from ferrollm import demo_model_path, gguf
from ferrollm.cli import main
from ferrollm.quant.writer import WRITABLE_TYPES, quantize_file, quantize_tensor


@pytest.mark.parametrize("type_name", ["Q4_0", "Q5_K", "IQ4_NL"])
def test_every_matrix_gets_the_type_and_values_survive(tmp_path, type_name):
    out = tmp_path / "q.gguf"
    written = quantize_file(demo_model_path(), out, type_name, pure=True)
    with gguf.open(demo_model_path()) as src, gguf.open(out) as dst:
        assert dst.metadata["tokenizer.ggml.tokens"] == src.metadata["tokenizer.ggml.tokens"]
        for info in dst.tensors:
            expect = "F32" if len(info.shape) < 2 or "gate_inp" in info.name else type_name
            assert info.type == expect == written[info.name]
            assert info.shape == src.tensor(info.name).shape
        a, b = src.dequantize("blk.1.ffn_up_exps.weight"), dst.dequantize("blk.1.ffn_up_exps.weight")
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99


def test_unwritable_types_and_bad_rows_are_errors(tmp_path):
    with pytest.raises(ValueError, match="cannot quantize to TQ1_0"):
        quantize_file(demo_model_path(), tmp_path / "x.gguf", "TQ1_0", pure=True)
    with pytest.raises(ValueError, match="unknown tensor type"):
        quantize_file(demo_model_path(), tmp_path / "x.gguf", "Q9_9", pure=True)
    with pytest.raises(ValueError, match="unknown quantization type or mix"):
        quantize_file(demo_model_path(), tmp_path / "x.gguf", "Q9_9")
    with pytest.raises(ValueError, match="not a whole number of Q4_K blocks"):
        quantize_tensor(np.zeros((2, 100), np.float32), "Q4_K")
    assert "IQ4_XS" in WRITABLE_TYPES


def test_cli_quantize(tmp_path, capsys):
    assert main(["quantize", demo_model_path(), str(tmp_path / "q.gguf"), "q8_0", "--pure", "-q"]) == 0
    assert "x Q8_0" in capsys.readouterr().out
