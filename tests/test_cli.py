"""The command line, run as a user would (subprocess) and in-process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import ferrollm
from ferrollm.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_synth_then_info(tmp_path, capsys):
    out = tmp_path / "demo.gguf"
    assert main(["synth", str(out), "--types", "q4_k,iq2_xs,f16"]) == 0
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "GGUF v3" in text and "synthetic.iq2_xs.weight" in text and "IQ2_XS" in text
    assert [t.type for t in ferrollm.gguf.open(out).tensors] == ["Q4_K", "IQ2_XS", "F16"]


def test_info_on_a_bad_file_is_a_clean_error(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\0\0\0" + b"\xff" * 16)
    result = subprocess.run(
        [sys.executable, "-m", "ferrollm", "info", str(bad)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert "ferrollm: error: GGUF error at byte 8: tensor count" in result.stderr
    assert "Traceback" not in result.stderr


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = next(line for line in ci.splitlines() if line.startswith("pip install"))
    assert command in readme
