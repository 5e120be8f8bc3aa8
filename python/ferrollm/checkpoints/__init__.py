"""Checkpoints: tensor sources (GGUF, safetensors, EXL2), Hugging Face names, conversion to
GGUF, export, and ``Llama.from_pretrained``'s hub lookup.
"""
