"""ferrollm's embedded demo model: a small Mixtral trained by the project (tools/train_demo_model.py)
on the Python standard library's source, shipped in the package so that ``ferrollm run`` writes
text with no download. See tools/demo_model/ for its training card and logs."""

from __future__ import annotations

from pathlib import Path

DEMO_MODEL_FILE = "demo-moe-q8_0.gguf"


def demo_model_path() -> str:
    """Path of the embedded model (4 layers, 4 experts top-2, Mistral tokenizer, Q8_0, 19 MiB)."""
    path = Path(__file__).parent / "data" / DEMO_MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"the embedded demo model is missing from this installation: {path}")
    return str(path)
