"""ferrollm: quantized large language models on the CPU, with a Rust core.

``ferrollm.Llama`` runs llama-family GGUF models (llama-cpp-python's API, with its prompt caches,
saved states and draft models) through a :class:`ferrollm.session.Session` on the Rust engine;
``ferrollm.demo_model_path()`` is the small trained Mixtral shipped in the package.
``quantize`` writes a model in another type or mix (or to a size, by measurement), optionally
with an importance matrix from ``collect_imatrix``, or quantizes one tensor; ``perplexity`` and
``kl_divergence`` measure the result (all in :mod:`ferrollm.quant`). ``convert`` (Hugging Face
checkpoints to GGUF, :mod:`ferrollm.checkpoints`), ``merge`` (mergekit's YAML) and ``moe``
(mergekit-moe's YAML: a Mixtral from dense models) stream models tensor by tensor into any GGUF
type. The GGUF layer lives in :mod:`ferrollm.gguf`; text in :mod:`ferrollm.text`; sampling,
grammars and tools in :mod:`ferrollm.generate`; the server in :mod:`ferrollm.serve`.
"""

from ferrollm import gguf
from ferrollm._core import GGUFError, UnsupportedTypeError, __version__
from ferrollm.checkpoints.convert import convert
from ferrollm.demo import demo_model_path
from ferrollm.generate.decoding import LogitsProcessorList, StoppingCriteriaList
from ferrollm.generate.grammar import GrammarError, LlamaGrammar
from ferrollm.generate.saved_state import LlamaState
from ferrollm.llama import Llama
from ferrollm.llama_cache import LlamaCache, LlamaDiskCache, LlamaRAMCache
from ferrollm.llama_speculative import LlamaDraftModel, LlamaPromptLookupDecoding
from ferrollm.merge import merge
from ferrollm.moe import moe
from ferrollm.quant.api import quantize
from ferrollm.quant.block_types import dequantize
from ferrollm.quant.imatrix import Imatrix
from ferrollm.quant.imatrix import collect as collect_imatrix
from ferrollm.quant.quality import kl_divergence, perplexity
from ferrollm.quant.writer import quantize_file
from ferrollm.text.tokenizer import Tokenizer

__all__ = [
    "GGUFError",
    "GrammarError",
    "Imatrix",
    "Llama",
    "LlamaCache",
    "LlamaDiskCache",
    "LlamaDraftModel",
    "LlamaGrammar",
    "LlamaPromptLookupDecoding",
    "LlamaRAMCache",
    "LlamaState",
    "LogitsProcessorList",
    "StoppingCriteriaList",
    "Tokenizer",
    "UnsupportedTypeError",
    "__version__",
    "collect_imatrix",
    "convert",
    "demo_model_path",
    "dequantize",
    "gguf",
    "kl_divergence",
    "merge",
    "moe",
    "perplexity",
    "quantize",
    "quantize_file",
]
