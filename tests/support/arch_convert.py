"""Run by the oracle virtualenv's python: ``python arch_convert.py LLAMA_CPP_DIR <convert args>``
runs llama.cpp's convert_hf_to_gguf.py with one change. The converter names a BPE tokenizer's
pre-tokenizer by hashing how it splits a test text, and refuses a tokenizer it does not know; the
tiny tokenizers of the architecture oracle are unknown, so an unrecognised one is named ``qwen2``
(what the real Qwen files carry). Only tokenizer.ggml.pre is affected; tensors and the other
metadata are the converter's own."""

from __future__ import annotations

import runpy
import sys

FALLBACK_PRE = "qwen2"


def main() -> None:
    llama_cpp = sys.argv[1]
    sys.path.insert(0, llama_cpp)
    sys.path.insert(1, f"{llama_cpp}/gguf-py")
    from conversion.base import TextModel

    known = TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer) -> str:
        try:
            return known(self, tokenizer)
        except NotImplementedError:
            return FALLBACK_PRE

    TextModel.get_vocab_base_pre = get_vocab_base_pre
    script = f"{llama_cpp}/convert_hf_to_gguf.py"
    sys.argv = [script, *sys.argv[2:]]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
