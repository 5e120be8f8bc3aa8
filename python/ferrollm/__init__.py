"""ferrollm: quantized large language models on the CPU, with a Rust core.

``ferrollm.Llama`` runs llama-family GGUF models (llama-cpp-python's API, with its prompt caches,
saved states and draft models);
``ferrollm.demo_model_path()`` is the small trained Mixtral shipped in the package.
``perplexity`` / ``kl_divergence`` (:mod:`ferrollm.quality`) measure quantization quality and
``quantize`` (:mod:`ferrollm.quantize`) writes a model in another type or mix, optionally with an
importance matrix from ``collect_imatrix`` (:mod:`ferrollm.imatrix`), or quantizes one tensor. The GGUF layer lives
in :mod:`ferrollm.gguf`; block types and dequantization in :mod:`ferrollm.quants`.
``convert`` (Hugging Face checkpoints to GGUF), ``merge`` (mergekit's YAML) and ``moe``
(mergekit-moe's YAML: a Mixtral from dense models) stream models tensor by tensor into any GGUF type.
"""

from ferrollm import gguf, quants
from ferrollm._core import GGUFError, UnsupportedTypeError, __version__
from ferrollm.convert import convert
from ferrollm.decoding import LogitsProcessorList, StoppingCriteriaList
from ferrollm.demo import demo_model_path
from ferrollm.grammar import GrammarError, LlamaGrammar
from ferrollm.imatrix import Imatrix
from ferrollm.imatrix import collect as collect_imatrix
from ferrollm.llama import Llama
from ferrollm.llama_cache import LlamaCache, LlamaDiskCache, LlamaRAMCache
from ferrollm.llama_speculative import LlamaDraftModel, LlamaPromptLookupDecoding
from ferrollm.llama_state import LlamaState
from ferrollm.merge import merge
from ferrollm.moe import moe
from ferrollm.quality import kl_divergence, perplexity
from ferrollm.quantize import quantize, quantize_file
from ferrollm.quants import dequantize
from ferrollm.tokenizer import Tokenizer

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
    "quants",
]
