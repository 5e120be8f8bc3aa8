"""ferrollm: quantized large language models on the CPU, with a Rust core.

The GGUF layer lives in :mod:`ferrollm.gguf`; block types and dequantization in
:mod:`ferrollm.quants`.
"""

from ferrollm import gguf, quants
from ferrollm._core import GGUFError, UnsupportedTypeError, __version__
from ferrollm.quants import dequantize

__all__ = ["GGUFError", "UnsupportedTypeError", "__version__", "dequantize", "gguf", "quants"]
