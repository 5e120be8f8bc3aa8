"""llama.cpp's sources from the llama-cpp-python sdist (FERROLLM_LLAMA_CPP_DIR): its real chat
templates, for the suites that render them."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import pytest

LLAMA_CPP_DIR = Path(
    os.environ.get("FERROLLM_LLAMA_CPP_DIR", "/work/peer/llama_cpp_python-0.3.36/vendor/llama.cpp")
)
TEMPLATES = sorted(p.name for p in (LLAMA_CPP_DIR / "models" / "templates").glob("*.jinja"))
needs_sdist = pytest.mark.skipif(not TEMPLATES, reason=f"no chat templates under {LLAMA_CPP_DIR}/models")


@cache
def source(name: str) -> str:
    return (LLAMA_CPP_DIR / "models" / "templates" / name).read_text(encoding="utf-8")
