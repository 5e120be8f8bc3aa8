"""Mistakes a new user makes, each answered by an exception that says what is wrong and what
is allowed (not a bare OverflowError or ``No such device`` from the layers below)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from ferrollm import Llama, demo_model_path, gguf


@pytest.fixture(scope="module")
def llm():
    return Llama(demo_model_path(), n_ctx=64, verbose=False)


@pytest.mark.parametrize("bad", [-1, -(2**40), 32000, 2**40])
@pytest.mark.parametrize(
    "call",
    [
        lambda llm, bad: llm.eval([1, bad]),
        lambda llm, bad: llm.detokenize([1, bad]),
        lambda llm, bad: llm.create_completion(prompt=[1, bad], max_tokens=2),
        lambda llm, bad: next(llm.generate([1, bad])),
    ],
    ids=["eval", "detokenize", "create_completion", "generate"],
)
def test_token_id_outside_the_vocabulary(llm, call, bad):
    with pytest.raises(ValueError, match=rf"token id {bad} is outside .*\(valid ids: 0\.\.31999\)"):
        call(llm, bad)
    # Nothing of the refused call stays in the cache: the model continues as before.
    llm.reset()
    llm.eval([1, 1318])
    assert llm.n_tokens == 2


def test_a_directory_is_not_a_model(tmp_path):
    with pytest.raises(IsADirectoryError, match=rf"^{tmp_path} is a directory, not a GGUF file$"):
        Llama(model_path=str(tmp_path))


def test_a_checkpoint_directory_points_to_convert(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(
        IsADirectoryError, match=rf"Hugging Face checkpoint: .*`ferrollm convert {tmp_path} OUT.gguf`"
    ):
        Llama(model_path=tmp_path)


def test_a_directory_of_gguf_files_names_them(tmp_path):
    for name in ("b.gguf", "a.gguf", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(IsADirectoryError, match="pass one of its GGUF files: a.gguf, b.gguf$"):
        gguf.open(tmp_path)


def test_the_cli_reports_a_directory_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "ferrollm", "run", "-m", str(tmp_path), "-p", "x", "-n", "1"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip() == f"ferrollm: error: {tmp_path} is a directory, not a GGUF file"


@pytest.mark.parametrize("kw, name", [({"n_ctx": -1}, "n_ctx"), ({"n_batch": -1}, "n_batch"),
                                      ({"n_threads": -5}, "n_threads"), ({"n_threads": 0}, "n_threads")])  # fmt: skip
def test_negative_sizes_name_their_parameter(kw, name):
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        Llama(demo_model_path(), verbose=False, **kw)


def test_minus_one_threads_is_the_default():
    assert Llama(demo_model_path(), n_ctx=64, n_threads=-1, verbose=False).n_threads >= 1


@pytest.mark.parametrize("kw, name", [({"temperature": "hot"}, "temperature"), ({"top_p": None}, "top_p"),
                                      ({"top_k": 2.5}, "top_k")])  # fmt: skip
def test_sampling_parameters_of_the_wrong_type_name_themselves(llm, kw, name):
    with pytest.raises(TypeError, match=rf"^{name} must be a"):
        llm("hi", max_tokens=2, **kw)


@pytest.mark.parametrize("args", [["run", "-c", "-1", "-p", "x"], ["run", "-t", "-3", "-p", "x"],
                                  ["quantize", "a.gguf", "b.gguf", "Q4_0", "-t", "-3"]])  # fmt: skip
def test_the_cli_names_a_negative_option(args):
    r = subprocess.run([sys.executable, "-m", "ferrollm", *args], capture_output=True, text=True, check=False)
    assert r.returncode == 2 and "must be" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_cli_inputs_that_are_not_what_they_should_be(tmp_path):
    binary = tmp_path / "data.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    r = subprocess.run([sys.executable, "-m", "ferrollm", "perplexity", "-f", str(binary)], capture_output=True,
                       text=True, check=False)  # fmt: skip
    assert r.returncode == 1 and f"{binary}: not UTF-8 text" in r.stderr and "Traceback" not in r.stderr, (
        r.stderr
    )
    r = subprocess.run([sys.executable, "-m", "ferrollm", "quantize", demo_model_path(), str(tmp_path / "o.gguf"),
                        "--target-bpw", "nan"], capture_output=True, text=True, check=False)  # fmt: skip
    assert r.returncode == 1 and "--target-bpw nan: give bits per weight above 0" in r.stderr, r.stderr


def test_debug_shows_the_traceback_that_is_otherwise_one_line(tmp_path):
    missing = str(tmp_path / "missing.gguf")
    plain = subprocess.run(
        [sys.executable, "-m", "ferrollm", "info", missing], capture_output=True, text=True, check=False
    )
    assert (
        plain.returncode == 1
        and "Traceback" not in plain.stderr
        and len(plain.stderr.strip().splitlines()) == 1
    )
    debug = subprocess.run([sys.executable, "-m", "ferrollm", "--debug", "info", missing], capture_output=True,
                           text=True, check=False)  # fmt: skip
    assert debug.returncode != 0 and "Traceback" in debug.stderr, debug.stderr
