"""The oracles (mergekit, mergekit-moe, llama.cpp's convert_hf_to_gguf.py) live in a separate
virtualenv, since they pull in torch and transformers: ``python -m venv /work/venv-oracle &&
/work/venv-oracle/bin/pip install mergekit``. ``FERROLLM_ORACLE_PY`` names its python;
tests marked ``oracle`` skip when it is absent."""

from __future__ import annotations

import os
import subprocess

import pytest

ORACLE_PY = os.environ.get("FERROLLM_ORACLE_PY", "/work/venv-oracle/bin/python")
LLAMA_CPP = os.environ.get("FERROLLM_LLAMA_CPP", "/work/peer/llama_cpp_python-0.3.36/vendor/llama.cpp")


def oracle_tool(name: str) -> str:
    """The path of a console script of the oracle virtualenv (mergekit-yaml, mergekit-moe)."""
    path = os.path.join(os.path.dirname(ORACLE_PY), name)
    if not (os.path.isfile(ORACLE_PY) and os.path.isfile(path)):
        pytest.skip(f"oracle {name} not installed (FERROLLM_ORACLE_PY={ORACLE_PY})")
    return path


def run_oracle(args: list[str], cwd: str | None = None, env: dict | None = None, timeout: int = 600) -> str:
    r = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})}, check=False)  # fmt: skip
    if r.returncode != 0:
        raise AssertionError(f"oracle failed ({' '.join(args[:2])}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r.stdout
