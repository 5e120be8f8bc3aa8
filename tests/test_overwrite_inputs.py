"""No tool writes over its own input: the output path equal to an input, or reaching one
through a symlink, a hard link, a folder that holds it or a file inside an input checkpoint, is
refused before anything is read or written, with exit code 1 and a line naming both; the input
stays byte for byte. One shared check (``ferrollm.atomic.check_output``) behind every tool."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import ferrollm
import pytest
from support.hf_models import write_model


def digest(path) -> str:
    if os.path.isdir(path):
        return "".join(digest(os.path.join(path, n)) for n in sorted(os.listdir(path)))
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "ferrollm", *map(str, args)], capture_output=True, text=True, check=False
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("overwrite")
    for i, name in enumerate("ab"):
        write_model(str(root / name), seed=30 + i, tokenizer="bpe")
    ferrollm.convert(str(root / "a"), str(root / "a.gguf"), "f32")
    return root


def refused(result, *inputs) -> None:
    assert result.returncode == 1, result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, line
    assert "refusing to write over it" in line, line


def test_quantize_over_its_input_through_any_path(models, tmp_path):
    src = models / "a.gguf"
    before = digest(src)
    link = tmp_path / "link.gguf"
    link.symlink_to(src)
    hard = tmp_path / "hard.gguf"
    os.link(src, hard)
    for out in (src, link, hard):
        refused(cli("quantize", src, out, "Q8_0"))
        refused(cli("quantize", link, out, "Q8_0"))
    assert digest(src) == before


def test_convert_into_its_own_checkpoint(models, tmp_path):
    ck = models / "b"
    before = digest(ck)
    refused(cli("convert", ck, ck / "model.safetensors"))
    refused(cli("convert", ck, ck / "config.json"))
    assert digest(ck) == before
    # A new file inside the folder replaces nothing: allowed.
    out = tmp_path / "b.gguf"
    assert cli("convert", ck, out).returncode == 0
    assert digest(ck) == before


def test_merge_and_moe_over_one_of_their_models(models, tmp_path):
    cfg = tmp_path / "merge.yml"
    cfg.write_text(
        f"merge_method: linear\ndtype: float32\nmodels:\n  - model: {models / 'a'}\n"
        f"    parameters: {{weight: 0.5}}\n  - model: {models / 'b'}\n    parameters: {{weight: 0.5}}\n"
    )
    before = {n: digest(models / n) for n in ("a", "b", "a.gguf")}
    refused(cli("merge", cfg, models / "a"))  # a folder output would replace the model
    refused(cli("merge", cfg, models))  # a folder that holds both models
    refused(cli("merge", cfg, cfg))
    moe_cfg = tmp_path / "moe.yml"
    moe_cfg.write_text(
        f"base_model: {models / 'a.gguf'}\ngate_mode: random\ndtype: float32\nexperts:\n"
        f"  - source_model: {models / 'a'}\n  - source_model: {models / 'b'}\n"
    )
    refused(cli("moe", moe_cfg, models / "a.gguf"))
    assert {n: digest(models / n) for n in before} == before


def test_imatrix_over_the_model_or_the_text(models, tmp_path):
    text = tmp_path / "calib.txt"
    text.write_text("the cat sat on the mat. " * 50)
    before = digest(models / "a.gguf")
    refused(cli("imatrix", "-m", models / "a.gguf", "-f", text, "-o", models / "a.gguf"))
    refused(cli("imatrix", "-m", models / "a.gguf", "-f", text, "-o", text))
    assert digest(models / "a.gguf") == before


def test_a_missing_output_folder_is_named_not_a_temporary(models, tmp_path):
    out = tmp_path / "no" / "such" / "q.gguf"
    r = cli("quantize", models / "a.gguf", out, "Q8_0")
    assert r.returncode == 1
    assert f"the folder {out.parent} does not exist" in r.stderr, r.stderr
    assert ".partial" not in r.stderr and "tmp" not in r.stderr.replace(str(tmp_path), "")


def test_the_python_api_refuses_too(models):
    from ferrollm.atomic import OverwritesInput

    with pytest.raises(OverwritesInput, match="refusing to write over it"):
        ferrollm.convert(str(models / "b"), str(models / "b" / "model.safetensors"), "f32")
