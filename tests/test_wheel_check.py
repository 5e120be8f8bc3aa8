"""tools/wheel.py's checks of a finished wheel (the real one is built and checked by .ci/run):
each rule refuses a file that breaks it, and the clean environment finds no Rust."""

from __future__ import annotations

import importlib.util
import shutil
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("wheel_tool", ROOT / "tools" / "wheel.py")
wheel_tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(wheel_tool)

GOOD = "ferrollm-0.1.0-cp39-abi3-manylinux_2_34_x86_64.whl"
FILES = ["ferrollm/__init__.py", "ferrollm/_core.abi3.so", "ferrollm/data/demo-moe-q8_0.gguf"]


def _wheel(tmp_path: Path, name: str = GOOD, files: list[str] = FILES, tag: str | None = None) -> Path:
    path = tmp_path / name
    python, abi, platforms = name[: -len(".whl")].split("-")[2:]
    tags = [tag] if tag else [f"{python}-{abi}-{p}" for p in platforms.split(".")]
    with zipfile.ZipFile(path, "w") as z:
        for f in files:
            z.writestr(f, b"x")
        z.writestr("ferrollm-0.1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: false\n"
                   + "".join(f"Tag: {t}\n" for t in tags))  # fmt: skip
    return path


def test_a_good_wheel_passes_and_is_reported(tmp_path, capsys):
    wheel_tool.check(_wheel(tmp_path))
    out = capsys.readouterr().out
    assert GOOD in out and "tag  cp39-abi3-manylinux_2_34_x86_64" in out and "MiB" in out


def test_a_compressed_tag_set_passes(tmp_path):
    wheel_tool.check(
        _wheel(tmp_path, "ferrollm-0.1.0-cp39-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64.whl")
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"name": "ferrollm-0.1.0-cp39-abi3-linux_x86_64.whl"},
            "platform linux_x86_64 is not a manylinux tag",
        ),
        ({"name": "ferrollm-0.1.0-cp311-cp311-manylinux_2_34_x86_64.whl"}, "not the abi3 wheel"),
        (
            {"name": "ferrollm-0.1.0-cp39-abi3-manylinux_2_17_x86_64.linux_x86_64.whl"},
            "linux_x86_64 is not a",
        ),
        ({"tag": "py3-none-any"}, "the WHEEL file does not say Tag: cp39-abi3-manylinux_2_34_x86_64"),
        ({"files": [*FILES, "ferrollm/_core.cpython-311-x86_64-linux-gnu.so"]}, "want exactly one"),
        ({"files": [*FILES, "ferrollm.libs/libgomp-a34b3233.so.1"]}, "shared libraries bundled"),
        ({"files": FILES[:2]}, "demo model ferrollm/data/demo-moe-q8_0.gguf is missing"),
        ({"files": [*FILES, "ferrollm/__pycache__/cli.cpython-311.pyc"]}, "compiled bytecode"),
    ],
)
def test_each_rule_refuses_a_bad_wheel(tmp_path, kwargs, message):
    with pytest.raises(SystemExit, match=message):
        wheel_tool.check(_wheel(tmp_path, **kwargs))


def test_the_size_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(wheel_tool, "MAX_BYTES", 100)
    with pytest.raises(SystemExit, match="MiB is not under"):
        wheel_tool.check(_wheel(tmp_path))


def test_the_clean_environment_has_no_rust_and_no_python_path(tmp_path, monkeypatch):
    rust_bin = tmp_path / "cargo-home" / "bin"
    rust_bin.mkdir(parents=True)
    (rust_bin / "cargo").write_text("#!/bin/sh\n")
    (rust_bin / "cargo").chmod(0o755)
    monkeypatch.setenv("PATH", f"{rust_bin}:{Path(shutil.which('sh')).parent}")
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "python"))
    monkeypatch.setenv("CARGO_HOME", str(tmp_path / "cargo-home"))
    monkeypatch.setenv("PIP_FIND_LINKS", "/somewhere")
    env = wheel_tool.clean_env()
    assert str(rust_bin) not in env["PATH"].split(":") and env["PATH"].startswith(
        str(wheel_tool.VENV / "bin")
    )
    assert "PYTHONPATH" not in env and "CARGO_HOME" not in env and env["PIP_FIND_LINKS"] == "/somewhere"
