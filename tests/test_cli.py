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
    command = ci.strip().splitlines()[-1]
    assert "tools/wheel.py install" in command and f"    {command}\n" in readme


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ferrollm", *args], capture_output=True, text=True, input=stdin, check=False
    )


def test_synth_model_run_and_chat(tmp_path):
    model = tmp_path / "moe.gguf"
    assert _cli("synth-model", str(model), "--experts", "4", "--type", "q4_k").returncode == 0
    run = _cli("run", "-m", str(model), "-p", "Once upon", "-n", "8", "--seed", "1", "--temp", "0",
               "--override-kv", "llama.expert_used_count=int:3", "-ctk", "q8_0", "-ngl", "33", "--no-progress")  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("Once upon")
    assert "3 of 4 experts" in run.stderr and "KV cache Q8_0/F16" in run.stderr
    assert "generated 8 tokens" in run.stderr and "tok/s" in run.stderr
    chat = _cli(
        "chat", "-m", str(model), "-n", "4", "--chat-format", "cerebrum", "--no-progress", stdin="hi\n/exit\n"
    )
    assert chat.returncode == 0, chat.stderr
    info = _cli("info", str(model))
    assert "physical cores" in info.stdout and "llama.expert_count" in info.stdout


def test_run_errors_are_clean(tmp_path):
    model = tmp_path / "dense.gguf"
    assert _cli("synth-model", str(model), "--ctx", "64").returncode == 0
    for args, message in [
        (["-p", "hi", "--override-kv", "llama.bogus=int:1"], "unknown override key 'llama.bogus'"),
        (["-p", "hi", "--override-kv", "llama.expert_used_count=3"], "KEY=TYPE:VALUE"),
        (["-p", "hi", "-c", "128"], "exceeds the model's trained context of 64"),
        (["-p", "a long prompt " * 10, "-c", "8"], "exceed context window of 8"),
    ]:
        result = _cli("run", "-m", str(model), "-n", "2", "--no-progress", *args)
        assert result.returncode == 1, (args, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr
