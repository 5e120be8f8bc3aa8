"""EXL2 (ExLlamaV2) models on the CPU: the layer format and its exact dequantization
(:mod:`ferrollm.checkpoints.exl2.linear`), and model directories as a tensor source for ``ferrollm
convert`` (:mod:`ferrollm.checkpoints.exl2.checkpoint`)."""

from ferrollm.checkpoints.exl2.checkpoint import EXL2Checkpoint, is_exl2, quant_method
from ferrollm.checkpoints.exl2.linear import EXL2Error, dequantize

__all__ = ["EXL2Checkpoint", "EXL2Error", "dequantize", "is_exl2", "quant_method"]
