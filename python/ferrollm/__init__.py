"""ferrollm: quantized large language models on the CPU, with a Rust core.

``ferrollm.Llama`` runs llama-family GGUF models (llama-cpp-python's API). The GGUF layer lives in :mod:`ferrollm.gguf`; block types and dequantization in
:mod:`ferrollm.quants`.
"""

from ferrollm import gguf, quants
from ferrollm._core import GGUFError, UnsupportedTypeError, __version__
from ferrollm.llama import Llama
from ferrollm.quants import dequantize
from ferrollm.tokenizer import Tokenizer

__all__ = [
    "GGUFError",
    "Llama",
    "Tokenizer",
    "UnsupportedTypeError",
    "__version__",
    "dequantize",
    "gguf",
    "quants",
]
