"""llama-cpp-python's ``llama_grammar`` module name: ``from ferrollm.llama_grammar import
LlamaGrammar`` as from ``llama_cpp.llama_grammar`` (the grammars live in
:mod:`ferrollm.generate.grammar`)."""

from ferrollm.generate.grammar import GrammarError, LlamaGrammar

__all__ = ["GrammarError", "LlamaGrammar"]
