"""Quantization: block types and dequantization, the model writer behind ``ferrollm.quantize``,
llama.cpp's named mixes, importance matrices, quality measures and ``allocate`` (types chosen
by measurement for ``--target-bpw``).
"""
