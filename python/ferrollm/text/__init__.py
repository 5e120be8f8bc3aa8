"""Text in and out: tokenizers (GGUF vocabularies, pre-tokenizers, Hugging Face vocabularies
as GGUF metadata), chat templates, and the stream of generated text.
"""
